"""The QR web page a client can keep open on a computer, and the app-link page.

``GET /koppel/{page_id}`` shows the QR code of the app link (inline SVG made
with segno), the typed code, the confirmation code and a status line. A few
lines of script follow the status pushed by ``GET /koppel/{page_id}/events``
(``pairing_service.page_stream``) and poll ``GET /koppel/{page_id}/status``
when the stream is not available. The page shows nothing
personal: the status is a word like ``waiting`` or ``paired``. An unknown or
closed page returns 404 with an HTML page, because a person reads it.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from functools import cache
from importlib import resources
from string import Template
from typing import Any

import segno
from aiohttp import web

from journey import keys
from journey.model import Case, hash_from_flat
from journey.steps import Step
from pairing_service.page_secrets import is_page_id, open_code, page_lookup_id
from pairing_service.pairing import app_link
from pairing_service.security import new_nonce, page_content_security_policy
from pairing_service.services import Services, services_of

logger = logging.getLogger(__name__)

STATUS_POLL_SECONDS = 3
"""Interval of the page's status requests: the client sees the pairing within
a few seconds, and a page left open costs one small request per interval."""

NO_SCRIPT_REFRESH_SECONDS = 15
"""Without JavaScript the page reloads itself this often to show the status."""

QR_SCALE = 6
"""Pixels per QR module at the SVG's natural size; the page scales it anyway."""

QR_ERROR_LEVEL = "m"
"""Level M corrects 15 % of damage, enough for a screen that reflects a lamp."""

FINAL_STATUSES = frozenset(
    ("delivered", "delivery_failed", "expired", "replaced", "closed")
)
"""Statuses after which a page never changes again."""

# KEYS[1] the case hash, KEYS[2] the case's pairing hash. Both carry the case
# id as hash tag, so the script runs on Redis Cluster too.
_READ_CASE_AND_PAIRING = """
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
"""

_STATUS_BY_STEP: dict[Step, str] = {
    Step.FETCHING: "paired",
    Step.REVIEW: "review",
    Step.CONSENT: "consent",
    Step.CONSENT_PARTNER: "consent",
    Step.DELIVERING: "delivering",
    Step.DELIVERED: "delivered",
    Step.DELIVERY_FAILED: "delivery_failed",
}


@dataclass(frozen=True, slots=True)
class PageState:
    """The content of a QR page: a status word and, while waiting, the code."""

    status: str
    expires_in: int = 0
    code: str | None = None
    confirmation_code: str = ""
    typed_code: str = ""


async def page_state(services: Services, page_id: str) -> PageState | None:
    """Return the state of a QR page, or None when the page is unknown."""
    resolved = await resolve_page(services, page_id)
    return resolved[1] if resolved is not None else None


async def resolve_page(
    services: Services, page_id: str
) -> tuple[str, PageState] | None:
    """Return the case id and the state of a QR page, or None when it is unknown."""
    case_id = await page_case_id(services, page_id)
    if case_id is None:
        return None
    return case_id, await read_page_state(services, page_id, case_id)


async def page_case_id(services: Services, page_id: str) -> str | None:
    """Return the id of the case behind a QR page, or None when it is unknown."""
    if not is_page_id(page_id):
        return None
    case_id: str | None = await services.redis.get(
        keys.pairing_page(page_lookup_id(page_id))
    )
    return case_id


async def read_page_state(services: Services, page_id: str, case_id: str) -> PageState:
    """Read the state of the QR page ``page_id`` of the case ``case_id``.

    The case and its pairing are read in one script, because the claim
    changes both at once. Two separate reads could see the case still in
    ``qr`` next to a pairing that is already claimed.
    """
    case_fields, pairing_fields = await services.run_script(
        _READ_CASE_AND_PAIRING, [keys.case(case_id), keys.pairing(case_id)], []
    )
    lookup = page_lookup_id(page_id)
    if not case_fields:
        return PageState("closed")
    case = Case.from_hash(case_id, hash_from_flat(case_fields))
    if case.tombstone:
        return PageState("closed")
    if case.pairing_page_id != lookup:
        return PageState("replaced")
    if case.step is not Step.QR:
        return PageState(_STATUS_BY_STEP.get(case.step, "closed"))

    pairing = hash_from_flat(pairing_fields)
    if pairing.get("page") != lookup or pairing.get("status") != "waiting":
        return PageState("expired")
    remaining = float(pairing.get("expires_at", "0")) - services.clock()
    if remaining <= 0:
        return PageState("expired")
    return PageState(
        "waiting",
        expires_in=int(remaining),
        code=open_code(page_id, pairing.get("sealed_code", "")),
        confirmation_code=pairing.get("confirmation_code", ""),
        typed_code=open_code(page_id, pairing.get("sealed_typed_code", "")) or "",
    )


async def show_page(request: web.Request) -> web.Response:
    """``GET /koppel/{page_id}``: the QR page."""
    services = services_of(request)
    page_id = request.match_info["page_id"]
    state = await page_state(services, page_id) or PageState("closed")
    texts = _page_texts()
    status_texts: dict[str, str] = texts["status"]

    qr_svg = ""
    if state.status == "waiting" and state.code is not None:
        link = app_link(services.settings.public_base_url, state.code)
        qr = segno.make(link, error=QR_ERROR_LEVEL)
        qr_svg = qr.svg_inline(
            scale=QR_SCALE,
            dark="#000",
            light="#fff",
            title=texts["qr_title"],
            svgclass=None,
            lineclass=None,
            omitsize=True,
        )

    nonce = new_nonce()
    page = _template("pairing_page.html").substitute(
        nonce=nonce,
        qr_hidden="" if qr_svg else " hidden",
        qr_svg=qr_svg,
        confirmation_code=html.escape(state.confirmation_code),
        typed_hidden="" if state.typed_code else " hidden",
        typed_code=html.escape(state.typed_code),
        status_url=html.escape(f"/koppel/{page_id}/status"),
        events_url=html.escape(f"/koppel/{page_id}/events"),
        refresh_seconds=NO_SCRIPT_REFRESH_SECONDS,
        poll_seconds=STATUS_POLL_SECONDS,
        status_text=html.escape(status_texts.get(state.status, status_texts["closed"])),
        # "</" cannot end the script element once escaped like this.
        status_texts=json.dumps(status_texts, ensure_ascii=False).replace("</", "<\\/"),
    )
    status = 200 if state.status != "closed" else 404
    return _html(page, nonce, status)


async def show_status(request: web.Request) -> web.Response:
    """``GET /koppel/{page_id}/status``: the page's status as JSON."""
    state = await page_state(services_of(request), request.match_info["page_id"])
    if state is None:
        return web.json_response(
            {"code": "page_not_found", "message": "no QR page with this id exists"},
            status=404,
        )
    return web.json_response({"status": state.status, "expires_in": state.expires_in})


async def show_app_open(_request: web.Request) -> web.Response:
    """``GET /app/open``: show a person who opened the app link in a browser
    how to use the Ockto app. The code in the fragment never reaches the server."""
    nonce = new_nonce()
    return _html(_template("app_open.html").substitute(nonce=nonce), nonce, 200)


def _html(page: str, nonce: str, status: int) -> web.Response:
    response = web.Response(text=page, content_type="text/html", status=status)
    response.headers["Content-Security-Policy"] = page_content_security_policy(nonce)
    return response


@cache
def _template(name: str) -> Template:
    source = resources.files("pairing_service.templates").joinpath(name)
    return Template(source.read_text(encoding="utf-8"))


@cache
def _page_texts() -> dict[str, Any]:
    source = resources.files("pairing_service.templates").joinpath("page_texts.nl.json")
    texts: dict[str, Any] = json.loads(source.read_text(encoding="utf-8"))
    return texts


def add_routes(app: web.Application) -> None:
    """Register the page routes on ``app``."""
    app.router.add_get("/koppel/{page_id}", show_page)
    app.router.add_get("/koppel/{page_id}/status", show_status)
    app.router.add_get("/app/open", show_app_open)
