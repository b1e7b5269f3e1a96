"""Bearer tokens: the service token of the internal API and the app's session."""

from __future__ import annotations

import hmac

from aiohttp import web

from journey import keys
from journey.model import Case
from journey.tokens import MalformedToken, parse_token, secret_matches
from pairing_service.errors import ApiError
from pairing_service.services import Services

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def bearer_token(request: web.Request) -> str | None:
    """Return the token of an ``Authorization: Bearer`` header, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_service_token(request: web.Request, expected: str) -> None:
    """Check the service token in constant time.

    Raises:
        ApiError: 401 ``unauthorized`` when the token is missing or wrong.
    """
    presented = bearer_token(request) or ""
    # aiohttp decodes header bytes that are not UTF-8 as surrogates, so a
    # plain encode() would raise. surrogateescape restores the bytes as sent.
    presented_bytes = presented.encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(presented_bytes, expected.encode()):
        raise ApiError(
            401,
            "unauthorized",
            "a valid service token is required in 'Authorization: Bearer'",
            headers=_CHALLENGE,
        )


async def require_app_session(services: Services, request: web.Request) -> Case:
    """Return the case whose app session token the request carries.

    Raises:
        ApiError: 401 ``invalid_session`` when the token is missing, malformed,
            wrong or expired, or its case is closed.
    """
    rejected = ApiError(
        401,
        "invalid_session",
        "a valid app session token is required in 'Authorization: Bearer'",
        headers=_CHALLENGE,
    )
    presented = bearer_token(request)
    if presented is None:
        raise rejected
    try:
        token = parse_token(presented)
    except MalformedToken:
        raise rejected from None

    stored = await services.redis.hget(keys.app_session(token.case_id), "token_hash")  # type: ignore[misc]
    if not stored or not secret_matches(token.secret, stored):
        raise rejected
    case = await services.store.find(token.case_id)
    if case is None or case.tombstone:
        raise rejected
    return case
