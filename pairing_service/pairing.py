"""Pairing the Ockto app with a case: issuing a code and claiming it.

The pairing code is a ``journey.tokens`` token for the case; Redis keeps only
the SHA-256 of its secret in ``keys.pairing(case_id)``. The claim runs as one
Lua script on the case's slot, so of two apps that scan the same code exactly
one gets the session and the case moves from ``qr`` to ``fetching`` once.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from journey import keys
from journey.events import EventType
from journey.model import encode_fields
from journey.steps import Event, Step, TransitionRejected, next_step
from journey.tokens import MalformedToken, case_reference, new_token, parse_token
from pairing_service.errors import ApiError
from pairing_service.page_secrets import new_page_id, page_lookup_id, seal_code
from pairing_service.services import Services

logger = logging.getLogger(__name__)

CONFIRMATION_DIGITS = 6
"""The confirmation code is shown on the page and in the app, so the client can
check that both belong together. Six digits are easy to compare at a glance."""

PAIRING_EXPIRED_GRACE_SECONDS = 30 * 60
"""An expired pairing stays in Redis this much longer, so a late scan gets
"code expired" (with a renewal in the chat) instead of "unknown code"."""

MAX_CLAIM_FAILURES_PER_CASE = 10
"""Claims with a wrong secret for one case before further claims are refused.
A real app never sends a wrong secret; ten allows for a garbled scan or two."""

CLAIM_FAILURE_WINDOW_SECONDS = keys.PAIRING_TTL_SECONDS
"""The failure counter lasts as long as a code, so a locked case unlocks when
the client would need a new code anyway."""

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

# KEYS[1] pairing hash, KEYS[2] case hash, KEYS[3] app session hash,
# KEYS[4] claim failure counter.
# ARGV[1] hash of the presented secret, ARGV[2] now, ARGV[3] the step the case
# must be in, ARGV[4] the step it moves to, ARGV[5] hash of the new session
# token, ARGV[6] session TTL, ARGV[7] failure limit, ARGV[8] failure window.
# Returns {outcome, ...}; on "ok" also the new version, has_partner,
# municipality_code, the confirmation code and the page lookup id.
#
# The secrets are compared as SHA-256 hashes. The time a comparison takes
# reveals at most a matching prefix of a hash, which does not help to find
# the secret behind it.
_CLAIM = """
local failures = tonumber(redis.call('GET', KEYS[4]) or '0')
if failures >= tonumber(ARGV[7]) then return {'rate_limited'} end
local pairing = redis.call('HMGET', KEYS[1], 'code_hash', 'status', 'expires_at',
  'confirmation_code', 'page')
if not pairing[1] or pairing[1] ~= ARGV[1] then
  redis.call('INCR', KEYS[4])
  if redis.call('TTL', KEYS[4]) < 0 then
    redis.call('EXPIRE', KEYS[4], tonumber(ARGV[8]))
  end
  return {'unknown_code'}
end
if pairing[2] == 'claimed' then return {'code_already_used'} end
if tonumber(pairing[3]) <= tonumber(ARGV[2]) then return {'code_expired'} end
local case = redis.call('HMGET', KEYS[2], 'step', 'tombstone', 'has_partner',
  'municipality_code')
if not case[1] or case[2] == '1' then return {'unknown_code'} end
if case[1] ~= ARGV[3] then return {'case_not_pairable', case[1]} end
redis.call('HSET', KEYS[1], 'status', 'claimed', 'claimed_at', ARGV[2])
redis.call('HSET', KEYS[2], 'step', ARGV[4])
local version = redis.call('HINCRBY', KEYS[2], 'version', 1)
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'token_hash', ARGV[5], 'created_at', ARGV[2])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]))
return {'ok', tostring(version), case[3] or '', case[4] or '', pairing[4] or '',
  pairing[5] or ''}
"""

_CLAIM_ERRORS: dict[str, tuple[int, str]] = {
    "unknown_code": (404, "the code is unknown or was replaced by a newer one"),
    "code_already_used": (409, "the code was already used to pair an app"),
    "code_expired": (410, "the code has expired; ask for a new one in the chat"),
    "rate_limited": (429, "too many wrong codes for this case; try again later"),
    "case_not_pairable": (409, "the case is not waiting for an app to pair"),
}


@dataclass(frozen=True, slots=True)
class IssuedPairing:
    """A new pairing as the bot receives it. ``expires_at`` is a Unix time."""

    page_id: str
    page_url: str
    app_link: str
    confirmation_code: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class ClaimedPairing:
    """The outcome of a successful claim, for the response to the app."""

    case_id: str
    session_token: str
    confirmation_code: str
    session_ttl_seconds: int
    has_partner: bool
    municipality_code: str

    @property
    def case_ref(self) -> str:
        """Short reference of the case for logs."""
        return case_reference(self.case_id)


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

    # Point the case at the new page first: the step check and the switch
    # happen in one atomic write, and the pairing below is only written while
    # the case still points at this page.
    await store.apply(
        case_id, event, expected_step=case.step, updates={"pairing_page_id": lookup}
    )
    fields: dict[str, Any] = {
        "code_hash": code.secret_hash,
        "page": lookup,
        "status": "waiting",
        "created_at": now,
        "expires_at": now + lifetime,
        "confirmation_code": confirmation,
        "sealed_code": seal_code(page_id, str(code)),
    }
    pairs = [item for pair in encode_fields(fields).items() for item in pair]
    write = services.redis.register_script(_WRITE_PAIRING)
    written = await write(
        keys=[keys.case(case_id), keys.pairing(case_id)],
        args=[lookup, kept_for, *pairs],
    )
    if not written:
        raise ApiError(
            409,
            "pairing_superseded",
            "another pairing for this case was created at the same time; "
            "use the newest one",
        )

    async with services.redis.pipeline(transaction=False) as pipe:
        pipe.set(keys.pairing_page(lookup), case_id, ex=kept_for)
        if case.pairing_page_id and case.pairing_page_id != lookup:
            pipe.delete(keys.pairing_page(case.pairing_page_id))
        await pipe.execute()

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
    )


async def claim_pairing(services: Services, code_text: str) -> ClaimedPairing:
    """Claim a pairing code for the app and open its session.

    Raises:
        ApiError: ``malformed_code`` (400), ``unknown_code`` (404),
            ``code_already_used`` (409), ``case_not_pairable`` (409),
            ``code_expired`` (410) or ``rate_limited`` (429).
    """
    try:
        code = parse_token(code_text)
    except MalformedToken:
        raise ApiError(
            400, "malformed_code", "a pairing code is 44 URL-safe base64 characters"
        ) from None

    session = new_token(code.case_id)
    target = next_step(Step.QR, Event.PAIRING_CLAIMED)
    claim = services.redis.register_script(_CLAIM)
    result = await claim(
        keys=[
            keys.pairing(code.case_id),
            keys.case(code.case_id),
            keys.app_session(code.case_id),
            keys.claim_failures(code.case_id),
        ],
        args=[
            code.secret_hash,
            services.clock(),
            Step.QR.value,
            target.value,
            session.secret_hash,
            keys.APP_SESSION_TTL_SECONDS,
            MAX_CLAIM_FAILURES_PER_CASE,
            CLAIM_FAILURE_WINDOW_SECONDS,
        ],
    )

    outcome = str(result[0])
    reference = case_reference(code.case_id)
    if outcome != "ok":
        logger.info("claim rejected case=%s reason=%s", reference, outcome)
        status, message = _CLAIM_ERRORS[outcome]
        raise ApiError(status, outcome, message)

    _version, has_partner, municipality_code, confirmation, lookup = result[1:6]
    if lookup:
        # The page on the computer keeps showing progress while the app works.
        await services.redis.expire(
            keys.pairing_page(lookup), keys.APP_SESSION_TTL_SECONDS
        )
    await services.events.publish(
        EventType.PAIRING_CLAIMED, code.case_id, step=target.value
    )
    logger.info("pairing claimed case=%s", reference)
    return ClaimedPairing(
        case_id=code.case_id,
        session_token=str(session),
        confirmation_code=str(confirmation),
        session_ttl_seconds=keys.APP_SESSION_TTL_SECONDS,
        has_partner=has_partner == "1",
        municipality_code=str(municipality_code),
    )
