"""Claiming a pairing: the app presents the QR code or the typed code.

A QR claim runs one Lua script on the case's hash slot: it checks the code,
moves the case from ``qr`` to ``fetching`` and opens the app session. Of two
simultaneous claims exactly one succeeds. A typed claim first resolves the
code's selector to a case (one more round trip, which also counts the address
and checks the global limit of wrong typed codes), then runs the same script.

The address counter and the event stream live in other hash slots than the
case. On one Redis server the script also counts the address before it checks
the code, and it appends ``pairing_claimed`` to the stream after the claim. A
QR claim is then one round trip, and the event is written together with the
claim or not at all. Redis Cluster rejects a script whose keys span slots
(CROSSSLOT), so there the counter and the event get calls of their own, before
and after the script.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from string import Template

from journey import keys
from journey.events import EventType, encode_event
from journey.steps import Event, Step, next_step
from journey.tokens import MalformedToken, Token, case_reference, new_token, parse_token
from pairing_service.errors import ApiError
from pairing_service.ratelimit import subject_hash
from pairing_service.services import Services
from pairing_service.typed_codes import (
    ALPHABET,
    MAX_TYPED_ATTEMPTS,
    TypedCode,
    code_digest,
    parse_typed_code,
    selector_digest,
)

logger = logging.getLogger(__name__)

CLAIM_WINDOW_SECONDS = 60
"""Length of the fixed windows of the claim rate limits."""

MAX_CLAIM_FAILURES_PER_CASE = 10
"""Claims with a wrong QR secret for one case before further claims are
rejected. A real app never sends a wrong secret; ten allows for a garbled scan
or two."""

CLAIM_FAILURE_WINDOW_SECONDS = keys.PAIRING_TTL_SECONDS
"""The failure counter lasts as long as a code, so a locked case unlocks when
the client would need a new code anyway."""

# A counter lives two windows, so it outlasts its own window under any skew
# between the service's clock and Redis's.
_COUNTER_TTL_SECONDS = 2 * CLAIM_WINDOW_SECONDS

# Compares two strings in time that depends only on their length. Both are
# hex digests of equal length, so the time reveals nothing about either.
_CONSTANT_TIME_EQUAL = """
local function same(a, b)
  if type(a) ~= 'string' or type(b) ~= 'string' or #a ~= #b then return false end
  local diff = 0
  for index = 1, #a do
    diff = bit.bor(diff, bit.bxor(string.byte(a, index), string.byte(b, index)))
  end
  return diff == 0
end
local function count(key, ttl)
  local value = redis.call('INCR', key)
  if value == 1 then redis.call('EXPIRE', key, ttl) end
  return value
end
"""

# KEYS[1] address counter of this window.
# ARGV[1] limit, ARGV[2] counter TTL. Counts a claim that never reaches a case
# (a malformed code) so that garbage counts against the address too.
_COUNT_ADDRESS = (
    _CONSTANT_TIME_EQUAL
    + """
if count(KEYS[1], tonumber(ARGV[2])) > tonumber(ARGV[1]) then return 0 end
return 1
"""
)

# KEYS[1] address counter, KEYS[2] global counter of wrong typed codes,
# KEYS[3] the typed code's index key.
# ARGV[1] address limit, ARGV[2] counter TTL, ARGV[3] global failure limit.
# Returns {'found', case_id} or {outcome}.
_RESOLVE_TYPED = (
    _CONSTANT_TIME_EQUAL
    + """
if count(KEYS[1], tonumber(ARGV[2])) > tonumber(ARGV[1]) then
  return {'rate_limited'}
end
if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[3]) then
  return {'typed_paused'}
end
local case_id = redis.call('GET', KEYS[3])
if not case_id then
  count(KEYS[2], tonumber(ARGV[2]))
  return {'unknown_code'}
end
return {'found', case_id}
"""
)

# KEYS[1] counter. ARGV[1] counter TTL. Returns the count after this one.
_COUNT = (
    _CONSTANT_TIME_EQUAL
    + """
return count(KEYS[1], tonumber(ARGV[1]))
"""
)

# KEYS[1] to KEYS[4] are in the case's hash slot: the pairing hash, the case
# hash, the app session hash and the QR failure counter of the case. On one
# Redis server the caller adds KEYS[5], the event stream, and for a QR claim
# KEYS[6], the address counter of this window. On Redis Cluster it leaves both
# out and makes those calls itself.
# ARGV[1] 'qr' or 'typed', ARGV[2] digest of the presented secret, ARGV[3] now,
# ARGV[4] hash of the new session token, ARGV[5] selector digest of a typed
# code, ARGV[6] address limit, ARGV[7] case id. The limits, steps and TTLs are
# constants of the source (``$name`` below), so a claim sends only what
# differs between claims.
# Returns {'ok', version, has_partner, municipality_code, confirmation_code}
# or {outcome}.
#
# Wrong QR secrets count per case, wrong typed verifiers per code. A wrong
# typed verifier returns 'typed_wrong', which the caller counts in the global
# counter and answers with the same 'unknown_code' as an unused selector, so a
# guesser cannot tell which selectors are in use.
_CLAIM_TEMPLATE = (
    _CONSTANT_TIME_EQUAL
    + """
if KEYS[6] and count(KEYS[6], $counter_ttl) > tonumber(ARGV[6]) then
  return {'rate_limited'}
end
local typed = ARGV[1] == 'typed'
local pairing = redis.call('HMGET', KEYS[1], 'code_hash', 'status', 'expires_at',
  'confirmation_code', 'typed_hash', 'typed_index', 'typed_failures')
if typed then
  if not same(pairing[6], ARGV[5]) then return {'unknown_code'} end
  if tonumber(pairing[7] or '0') >= $typed_limit then
    return {'code_locked'}
  end
  if not same(pairing[5], ARGV[2]) then
    redis.call('HINCRBY', KEYS[1], 'typed_failures', 1)
    return {'typed_wrong'}
  end
else
  local failures = tonumber(redis.call('GET', KEYS[4]) or '0')
  if failures >= $failure_limit then return {'case_limited'} end
  if not same(pairing[1], ARGV[2]) then
    if pairing[1] then count(KEYS[4], $failure_window) end
    return {'unknown_code'}
  end
end
if pairing[2] == 'claimed' then return {'code_already_used'} end
if tonumber(pairing[3]) <= tonumber(ARGV[3]) then return {'code_expired'} end
local case = redis.call('HMGET', KEYS[2], 'step', 'tombstone', 'has_partner',
  'municipality_code')
if not case[1] or case[2] == '1' then return {'unknown_code'} end
if case[1] ~= $from_step then return {'case_not_pairable'} end
redis.call('HSET', KEYS[1], 'status', 'claimed', 'claimed_at', ARGV[3])
redis.call('HSET', KEYS[2], 'step', $to_step)
local version = redis.call('HINCRBY', KEYS[2], 'version', 1)
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'token_hash', ARGV[4], 'created_at', ARGV[3])
redis.call('EXPIRE', KEYS[3], $session_ttl)
if KEYS[5] then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', $stream_length, '*', $event_fields)
  redis.call('EXPIRE', KEYS[5], $stream_ttl)
end
return {'ok', tostring(version), case[3] or '', case[4] or '', pairing[4] or ''}
"""
)

_CLAIM_TARGET = next_step(Step.QR, Event.PAIRING_CLAIMED)


def _lua_string(value: str) -> str:
    """Quote ``value`` as a Lua string literal."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _event_fields() -> str:
    """Return the XADD fields of ``pairing_claimed`` as Lua arguments.

    The case id comes from the script's ARGV[7]; the other fields are the same
    for every claim.
    """
    fields = encode_event(EventType.PAIRING_CLAIMED, "", step=_CLAIM_TARGET.value)
    pairs = [
        (_lua_string(name), "ARGV[7]" if name == "case_id" else _lua_string(value))
        for name, value in fields.items()
    ]
    return ", ".join(item for pair in pairs for item in pair)


_CLAIM = Template(_CLAIM_TEMPLATE).substitute(
    counter_ttl=_COUNTER_TTL_SECONDS,
    typed_limit=MAX_TYPED_ATTEMPTS,
    failure_limit=MAX_CLAIM_FAILURES_PER_CASE,
    failure_window=CLAIM_FAILURE_WINDOW_SECONDS,
    from_step=_lua_string(Step.QR.value),
    to_step=_lua_string(_CLAIM_TARGET.value),
    session_ttl=keys.APP_SESSION_TTL_SECONDS,
    stream_length=keys.EVENT_STREAM_MAX_LENGTH,
    stream_ttl=keys.EVENT_STREAM_TTL_SECONDS,
    event_fields=_event_fields(),
)

_CLAIM_ERRORS: dict[str, tuple[int, str]] = {
    "unknown_code": (404, "the code is unknown or was replaced by a newer one"),
    "code_already_used": (409, "the code was already used to pair an app"),
    "code_expired": (410, "the code has expired; ask for a new one in the chat"),
    "case_not_pairable": (409, "the case is not waiting for an app to pair"),
    "code_locked": (
        403,
        f"the typed code is locked after {MAX_TYPED_ATTEMPTS} wrong attempts; "
        "scan the QR code or ask for a new code in the chat",
    ),
}

_MALFORMED_MESSAGE = (
    "a pairing code is 44 URL-safe base64 characters (QR code) or 8 letters "
    f"from {ALPHABET} shown as XXXX-XXXX (typed code)"
)


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


class _Window:
    """The current fixed window of the claim limits, from the service's clock."""

    def __init__(self, now: float) -> None:
        self.index = int(now // CLAIM_WINDOW_SECONDS)
        self.retry_after = max(1, int((self.index + 1) * CLAIM_WINDOW_SECONDS - now))

    def address_key(self, address: str) -> str:
        return keys.rate_limit("claim", f"{subject_hash(address)}-{self.index}")

    def typed_failures_key(self) -> str:
        return keys.rate_limit("typed-failures", f"all-{self.index}")


async def claim_code(
    services: Services, code_text: str, address: str
) -> ClaimedPairing:
    """Claim a QR or typed pairing code for the app and open its session.

    Args:
        services: the service's shared objects.
        code_text: the code as the app sent it: a 44-character QR code, or a
            typed code in any case, with or without the dash.
        address: the client's network address, counted per minute.

    Raises:
        ApiError: ``malformed_code`` (400), ``code_locked`` (403),
            ``unknown_code`` (404), ``code_already_used`` (409),
            ``case_not_pairable`` (409), ``code_expired`` (410) or
            ``rate_limited`` (429 with ``Retry-After``).
    """
    window = _Window(services.clock())
    try:
        token = parse_token(code_text)
    except MalformedToken:
        token = None
    if token is not None:
        return await _claim_qr(services, token, address, window)

    typed = parse_typed_code(code_text)
    if typed is None:
        allowed = await services.run_script(
            _COUNT_ADDRESS,
            [window.address_key(address)],
            [services.settings.claims_per_address, _COUNTER_TTL_SECONDS],
        )
        if not allowed:
            raise _rate_limited(window, "too many claims from this address")
        raise ApiError(400, "malformed_code", _MALFORMED_MESSAGE)
    return await _claim_typed(services, typed, address, window)


async def _claim_qr(
    services: Services, token: Token, address: str, window: _Window
) -> ClaimedPairing:
    return await _run_claim(
        services,
        case_id=token.case_id,
        kind="qr",
        digest=token.secret_hash,
        selector="",
        address_key=window.address_key(address),
        address_limit=services.settings.claims_per_address,
        window=window,
    )


async def _claim_typed(
    services: Services, typed: TypedCode, address: str, window: _Window
) -> ClaimedPairing:
    key = services.typed_code_key
    selector = selector_digest(key, typed)
    resolved = await services.run_script(
        _RESOLVE_TYPED,
        [
            window.address_key(address),
            window.typed_failures_key(),
            keys.typed_code(selector),
        ],
        [
            services.settings.claims_per_address,
            _COUNTER_TTL_SECONDS,
            services.settings.typed_failures_global,
        ],
    )
    outcome = str(resolved[0])
    if outcome == "rate_limited":
        raise _rate_limited(window, "too many claims from this address")
    if outcome == "typed_paused":
        logger.warning("typed claims paused by the global failure limit")
        raise _rate_limited(
            window, "too many wrong typed codes from all clients; scan the QR code"
        )
    if outcome != "found":
        logger.info("claim rejected kind=typed reason=%s", outcome)
        status, message = _CLAIM_ERRORS[outcome]
        raise ApiError(status, outcome, message)

    return await _run_claim(
        services,
        case_id=str(resolved[1]),
        kind="typed",
        digest=code_digest(key, typed),
        selector=selector,
        address_key=window.address_key(address),
        address_limit=0,
        window=window,
    )


async def _run_claim(
    services: Services,
    *,
    case_id: str,
    kind: str,
    digest: str,
    selector: str,
    address_key: str,
    address_limit: int,
    window: _Window,
) -> ClaimedPairing:
    session = new_token(case_id)
    script_keys = [
        keys.pairing(case_id),
        keys.case(case_id),
        keys.app_session(case_id),
        keys.claim_failures(case_id),
    ]
    if services.single_server:
        script_keys.append(services.events.stream_key)
        if address_limit > 0:
            script_keys.append(address_key)
    elif address_limit > 0:
        counted = await services.run_script(
            _COUNT, [address_key], [_COUNTER_TTL_SECONDS]
        )
        if int(counted) > address_limit:
            logger.info(
                "claim rejected case=%s kind=%s reason=rate_limited",
                case_reference(case_id),
                kind,
            )
            raise _rate_limited(window, "too many claims from this address")

    result = await services.run_script(
        _CLAIM,
        script_keys,
        [
            kind,
            digest,
            services.clock(),
            session.secret_hash,
            selector,
            address_limit,
            case_id,
        ],
    )

    outcome = str(result[0])
    if outcome == "typed_wrong":
        await services.run_script(
            _COUNT, [window.typed_failures_key()], [_COUNTER_TTL_SECONDS]
        )
        outcome = "unknown_code"
    reference = case_reference(case_id)
    if outcome != "ok":
        logger.info(
            "claim rejected case=%s kind=%s reason=%s", reference, kind, outcome
        )
    if outcome == "rate_limited":
        raise _rate_limited(window, "too many claims from this address")
    if outcome == "case_limited":
        raise ApiError(
            429,
            "rate_limited",
            "too many wrong codes for this case; ask for a new code in the chat",
            headers={"Retry-After": str(CLAIM_FAILURE_WINDOW_SECONDS)},
        )
    if outcome != "ok":
        status, message = _CLAIM_ERRORS[outcome]
        raise ApiError(status, outcome, message)

    _version, has_partner, municipality_code, confirmation = result[1:5]
    if not services.single_server:
        # NOTE: on Redis Cluster a service that dies between the script and
        # this publish leaves the case in fetching without the "paired"
        # message. The app's first progress event still reaches the chat.
        await services.events.publish(
            EventType.PAIRING_CLAIMED, case_id, step=_CLAIM_TARGET.value
        )
    logger.info("pairing claimed case=%s kind=%s", reference, kind)
    return ClaimedPairing(
        case_id=case_id,
        session_token=str(session),
        confirmation_code=str(confirmation),
        session_ttl_seconds=keys.APP_SESSION_TTL_SECONDS,
        has_partner=has_partner == "1",
        municipality_code=str(municipality_code),
    )


def _rate_limited(window: _Window, message: str) -> ApiError:
    return ApiError(
        429,
        "rate_limited",
        message,
        headers={"Retry-After": str(window.retry_after)},
    )
