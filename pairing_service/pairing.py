"""Issuing a pairing: the QR code, the typed code and the QR page of a case.

The QR code is a ``journey.tokens`` token for the case; Redis keeps only the
SHA-256 of its secret in ``keys.pairing(case_id)``. The typed code is the
fallback for a client without a camera (``pairing_service.typed_codes``); Redis
keeps only HMAC digests of it. Claiming either is in ``pairing_service.claims``.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from journey import keys
from journey.model import encode_fields
from journey.steps import Event, Step, TransitionRejected
from journey.tokens import new_token
from pairing_service.errors import ApiError
from pairing_service.page_secrets import new_page_id, page_lookup_id, seal_code
from pairing_service.services import Services
from pairing_service.typed_codes import (
    MAX_SELECTOR_TRIES,
    TypedCode,
    code_digest,
    new_typed_code,
    selector_digest,
)

logger = logging.getLogger(__name__)

CONFIRMATION_DIGITS = 6
"""The confirmation code is shown on the page and in the app, so the client can
check that both belong together. Six digits are easy to compare at a glance."""

PAIRING_EXPIRED_GRACE_SECONDS = 30 * 60
"""An expired pairing stays in Redis this much longer, so a late scan gets
"code expired" (with a renewal in the chat) instead of "unknown code"."""

# KEYS[1] case hash, KEYS[2] pairing hash. ARGV[1] the page lookup id the case
# must still point at, ARGV[2] TTL of the pairing, then field/value pairs.
# Writes the pairing only if no newer pairing replaced it meanwhile.
_WRITE_PAIRING = """
if redis.call('HGET', KEYS[1], 'pairing_page_id') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
for index = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[index], ARGV[index + 1])
end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
return 1
"""

# KEYS[1] a typed code's index key. ARGV[1] the case id it must hold.
_DELETE_INDEX_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class IssuedPairing:
    """A new pairing as the bot receives it. ``expires_at`` is a Unix time."""

    page_id: str
    page_url: str
    app_link: str
    confirmation_code: str
    expires_at: float
    typed_code: str | None = None
    """``XXXX-XXXX``, or None when no free selector was found."""


def app_link(public_base_url: str, code: str) -> str:
    """Return the URL in the QR code; the code sits in the fragment.

    A browser never sends the fragment to a server, so opening the link in a
    browser does not leak the code into access logs.
    """
    return f"{public_base_url}/app/open#{code}"


def page_url(public_base_url: str, page_id: str) -> str:
    """Return the URL of the QR web page of a pairing."""
    return f"{public_base_url}/koppel/{page_id}"


async def create_pairing(services: Services, case_id: str) -> IssuedPairing:
    """Issue a pairing code for a case in ``app``, or a fresh one in ``qr``.

    A new code replaces the previous one, and the previous QR page is deleted.

    Raises:
        CaseNotFound: no such case.
        TransitionRejected: the case is in neither step.
        ApiError: 409 ``pairing_superseded`` when another pairing for the case
            was issued at the same moment.
    """
    store = services.store
    case = await store.get(case_id)
    if case.tombstone:
        raise TransitionRejected(case.step, Event.APP_READY)
    event = Event.RENEW_PAIRING if case.step is Step.QR else Event.APP_READY

    code = new_token(case_id)
    page_id = new_page_id()
    lookup = page_lookup_id(page_id)
    now = services.clock()
    lifetime = services.settings.pairing_ttl_seconds
    kept_for = lifetime + PAIRING_EXPIRED_GRACE_SECONDS
    confirmation = (
        f"{secrets.randbelow(10**CONFIRMATION_DIGITS):0{CONFIRMATION_DIGITS}d}"
    )

    # The page stays readable while the app works after a late claim.
    page_kept_for = max(kept_for, lifetime + keys.APP_SESSION_TTL_SECONDS)
    previous_index = await services.redis.hget(keys.pairing(case_id), "typed_index")  # type: ignore[misc]
    typed, typed_index = await _reserve_typed_code(services, case_id, kept_for)

    # Point the case at the new page first: the step check and the switch
    # happen in one atomic write, and the pairing below is only written while
    # the case still points at this page.
    try:
        await store.apply(
            case_id,
            event,
            expected_step=case.step,
            updates={"pairing_page_id": lookup},
        )
    except Exception:
        await _release_typed_index(services, typed_index, case_id)
        raise
    fields: dict[str, Any] = {
        "code_hash": code.secret_hash,
        "page": lookup,
        "status": "waiting",
        "created_at": now,
        "expires_at": now + lifetime,
        "confirmation_code": confirmation,
        "sealed_code": seal_code(page_id, str(code)),
    }
    if typed is not None:
        fields["typed_hash"] = code_digest(services.typed_code_key, typed)
        fields["typed_index"] = typed_index
        fields["typed_failures"] = 0
        fields["sealed_typed_code"] = seal_code(page_id, typed.display())
    pairs = [item for pair in encode_fields(fields).items() for item in pair]
    written = await services.run_script(
        _WRITE_PAIRING,
        [keys.case(case_id), keys.pairing(case_id)],
        [lookup, kept_for, *pairs],
    )
    if not written:
        await _release_typed_index(services, typed_index, case_id)
        raise ApiError(
            409,
            "pairing_superseded",
            "another pairing for this case was created at the same time; "
            "use the newest one",
        )

    async with services.redis.pipeline(transaction=False) as pipe:
        pipe.set(keys.pairing_page(lookup), case_id, ex=page_kept_for)
        if case.pairing_page_id and case.pairing_page_id != lookup:
            pipe.delete(keys.pairing_page(case.pairing_page_id))
        await pipe.execute()
    if previous_index and previous_index != typed_index:
        await _release_typed_index(services, previous_index, case_id)

    logger.info(
        "pairing issued case=%s renewal=%s", case.ref, event is Event.RENEW_PAIRING
    )
    base = services.settings.public_base_url
    return IssuedPairing(
        page_id=page_id,
        page_url=page_url(base, page_id),
        app_link=app_link(base, str(code)),
        confirmation_code=confirmation,
        expires_at=now + lifetime,
        typed_code=typed.display() if typed is not None else None,
    )


async def _reserve_typed_code(
    services: Services, case_id: str, kept_for: int
) -> tuple[TypedCode | None, str]:
    """Draw a typed code whose selector no other case uses, and index it.

    Returns ``(None, "")`` when every try collided; the pairing then has a QR
    code only, which is logged because it means the selector space is crowded.
    """
    for _try in range(MAX_SELECTOR_TRIES):
        typed = new_typed_code()
        digest = selector_digest(services.typed_code_key, typed)
        taken = await services.redis.set(
            keys.typed_code(digest), case_id, ex=kept_for, nx=True
        )
        if taken:
            return typed, digest
    logger.warning("no free typed code selector tries=%s", MAX_SELECTOR_TRIES)
    return None, ""


async def _release_typed_index(services: Services, digest: str, case_id: str) -> None:
    if not digest:
        return
    await services.run_script(
        _DELETE_INDEX_IF_OURS, [keys.typed_code(digest)], [case_id]
    )
