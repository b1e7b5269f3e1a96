"""The internal API under ``/v1``, for the bot and the website.

Every request carries ``Authorization: Bearer <SERVICE_TOKEN>``; the token is
compared in constant time.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

from aiohttp import web

from journey.model import ROLES, Case
from journey.municipalities import CBS_CODE
from journey.reminders import ReminderScheduler
from journey.steps import Event
from journey.tokens import is_case_id
from pairing_service.bodies import bool_field, read_json_object, string_field
from pairing_service.consent import record_consent
from pairing_service.errors import ApiError, Handler
from pairing_service.mail import Mailer, MailError, build_message
from pairing_service.pairing import create_pairing
from pairing_service.services import Services, services_of
from pairing_service.sessions import require_service_token
from pairing_service.timefmt import iso_utc

logger = logging.getLogger(__name__)

LANGUAGES: tuple[str, ...] = ("nl", "en")
"""The languages the bot has catalogs for."""

MAX_EMAIL_LENGTH = 254
"""Maximum length of an address within SMTP's path limit (RFC 5321 §4.5.3.1.3)."""

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
"""A loose shape check; the mail server is the real judge of an address."""


def _service_token_required(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        require_service_token(request, services_of(request).settings.service_token)
        return await handler(request)

    return checked


def _case_id(request: web.Request) -> str:
    case_id = request.match_info["case_id"]
    if not is_case_id(case_id):
        raise ApiError(404, "case_not_found", "no case with this id exists")
    return case_id


def _deep_link(bot_username: str, token: str) -> str:
    return f"https://t.me/{bot_username}?start={token}"


@_service_token_required
async def create_case(request: web.Request) -> web.Response:
    """``POST /v1/cases``: create a case and its invitation."""
    services = services_of(request)
    document = await read_json_object(request)

    code = str(string_field(document, "municipality_code"))
    if not CBS_CODE.fullmatch(code):
        raise ApiError(
            422,
            "invalid_municipality_code",
            f"municipality_code must be a CBS code like GM0363, got {code!r}",
        )
    municipality = services.registry.get(code)
    if municipality is None:
        raise ApiError(
            422, "unknown_municipality", f"municipality {code} is not in the registry"
        )
    if not municipality.participates:
        raise ApiError(
            422,
            "municipality_not_participating",
            f"municipality {code} does not take part",
        )

    email = document.get("email")
    if email is not None and (
        not isinstance(email, str)
        or len(email) > MAX_EMAIL_LENGTH
        or not _EMAIL.fullmatch(email)
    ):
        raise ApiError(
            422, "invalid_field", "field 'email' must be null or an e-mail address"
        )
    language = string_field(
        document, "language", choices=LANGUAGES, required=False, default="nl"
    )

    case, token = await services.store.create(code, email=email, language=str(language))
    deep_link = _deep_link(services.settings.bot_username, str(token))
    scheduler = ReminderScheduler(
        services.redis, window=services.settings.reminder_window
    )
    await scheduler.schedule_case(case.case_id, case.created_at)
    body = {
        "case_id": case.case_id,
        "case_ref": case.ref,
        "invitation_token": str(token),
        "deep_link": deep_link,
        "expires_at": iso_utc(case.expires_at),
        "invitation_email": await _send_invitation(
            services, case, deep_link, municipality.name
        ),
    }
    return web.json_response(body, status=201)


async def _send_invitation(
    services: Services, case: Case, deep_link: str, municipality_name: str
) -> str:
    """Send the invitation e-mail; return ``sent``, ``failed`` or ``none``.

    A failed e-mail does not fail the request: the case exists and the
    website can show the deep link instead.
    """
    mail = services.settings.mail
    if case.email is None or mail is None:
        return "none"
    message = build_message(
        mail,
        case.email,
        "invitation",
        case.language,
        link=deep_link,
        municipality=municipality_name,
    )
    try:
        await Mailer(mail).send(message, case_ref=case.ref)
    except MailError:
        return "failed"
    return "sent"


@_service_token_required
async def get_case(request: web.Request) -> web.Response:
    """``GET /v1/cases/{case_id}``: the case's step and progress."""
    case = await services_of(request).store.get(_case_id(request))
    return web.json_response(_case_summary(case))


@_service_token_required
async def cancel_case(request: web.Request) -> web.Response:
    """``DELETE /v1/cases/{case_id}``: cancel and erase; repeating it is harmless."""
    services = services_of(request)
    case = await services.store.get(_case_id(request))
    if case.tombstone:
        return web.json_response({"step": case.step.value})
    finished = await services.store.finish(case.case_id, Event.CANCEL)
    logger.info("case cancelled case=%s", case.ref)
    return web.json_response({"step": finished.step.value})


@_service_token_required
async def create_case_pairing(request: web.Request) -> web.Response:
    """``POST /v1/cases/{case_id}/pairings``: issue or renew the pairing code."""
    services = services_of(request)
    case_id = _case_id(request)
    await read_json_object(request, allow_empty=True)
    pairing = await create_pairing(services, case_id)
    body = {
        "page_id": pairing.page_id,
        "page_url": pairing.page_url,
        "app_link": pairing.app_link,
        "confirmation_code": pairing.confirmation_code,
        "typed_code": pairing.typed_code,
        "expires_at": iso_utc(pairing.expires_at),
    }
    return web.json_response(body, status=201)


@_service_token_required
async def post_consent(request: web.Request) -> web.Response:
    """``POST /v1/cases/{case_id}/consent``: a yes or a no of client or partner."""
    services = services_of(request)
    case_id = _case_id(request)
    document = await read_json_object(request)
    role = str(string_field(document, "role", choices=ROLES))
    consent = bool_field(document, "consent")
    case = await record_consent(services, case_id, role, consent)
    return web.json_response({"step": case.step.value})


def _case_summary(case: Case) -> dict[str, Any]:
    return {
        "case_ref": case.ref,
        "step": case.step.value,
        "has_partner": case.has_partner,
        "progress": case.progress,
        "municipality_code": case.municipality_code,
    }


def add_routes(app: web.Application) -> None:
    """Register the ``/v1`` routes on ``app``."""
    app.router.add_post("/v1/cases", create_case)
    app.router.add_get("/v1/cases/{case_id}", get_case, allow_head=False)
    app.router.add_delete("/v1/cases/{case_id}", cancel_case)
    app.router.add_post("/v1/cases/{case_id}/pairings", create_case_pairing)
    app.router.add_post("/v1/cases/{case_id}/consent", post_consent)
