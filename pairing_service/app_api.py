"""The app-facing API under ``/app/v1``, for the Ockto app.

The claim is authorised by the pairing code in its body: the QR code or the
typed code. Every later request carries the session token that the claim
returned.
"""

from __future__ import annotations

from aiohttp import web

from journey.sources import SOURCES
from pairing_service.bodies import read_json_object, string_field
from pairing_service.claims import claim_code
from pairing_service.packages import receive_package
from pairing_service.progress import record_app_event
from pairing_service.services import services_of
from pairing_service.sessions import require_app_session


async def claim(request: web.Request) -> web.Response:
    """``POST /app/v1/claim``: pair the app with a case by its code."""
    services = services_of(request)
    # NOTE: behind a reverse proxy, request.remote is the proxy's address, so
    # this limit then counts all clients together. Counting per client needs
    # a trusted X-Forwarded-For.
    address = request.remote or "unknown"
    document = await read_json_object(request)
    code = str(string_field(document, "code"))
    claimed = await claim_code(services, code, address)

    municipality = services.registry.get(claimed.municipality_code)
    body = {
        "session_token": claimed.session_token,
        "confirmation_code": claimed.confirmation_code,
        "expires_in": claimed.session_ttl_seconds,
        "has_partner": claimed.has_partner,
        "municipality": {
            "code": claimed.municipality_code,
            "name": municipality.name if municipality is not None else "",
        },
        "sources": list(SOURCES),
    }
    return web.json_response(body)


async def post_event(request: web.Request) -> web.Response:
    """``POST /app/v1/events``: progress of login, sources, partner and review."""
    services = services_of(request)
    case = await require_app_session(services, request)
    document = await read_json_object(request)
    step = await record_app_event(services, case, document)
    return web.json_response({"step": step.value}, status=202)


async def put_package(request: web.Request) -> web.Response:
    """``PUT /app/v1/package``: the data package, sealed at once."""
    services = services_of(request)
    case = await require_app_session(services, request)
    sealed = await receive_package(services, case, request)
    return web.json_response({"sha256": sealed.sha256, "size": sealed.size}, status=202)


def add_routes(app: web.Application) -> None:
    """Register the ``/app/v1`` routes on ``app``."""
    app.router.add_post("/app/v1/claim", claim)
    app.router.add_post("/app/v1/events", post_event)
    app.router.add_put("/app/v1/package", put_package)
