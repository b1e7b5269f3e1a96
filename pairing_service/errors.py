"""JSON error responses with stable codes, and the middleware that produces them.

Every error the service returns is ``{"code": "<stable_code>", "message": "<English
sentence>"}`` with the matching HTTP status: our own errors, aiohttp's 404 and
405, a body that is too large or not JSON, Redis being down and unexpected
exceptions. No stack trace ever reaches a client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from journey.steps import TransitionRejected
from journey.store import CaseNotFound, StaleCase

logger = logging.getLogger(__name__)

REDIS_RETRY_AFTER_SECONDS = 5
"""``Retry-After`` while Redis is unreachable: long enough for a restart or
failover to finish, short enough that a person barely notices."""

STALE_RETRY_AFTER_SECONDS = 1
"""A case that kept changing under a write is free again within a second."""

_CODES_BY_STATUS: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    410: "gone",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error response: HTTP status, stable code and an English message.

    Raise it anywhere below a handler; the middleware turns it into JSON.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def to_response(self) -> web.Response:
        """Return the JSON response for this error."""
        return error_response(self.status, self.code, self.message, self.headers)


def error_response(
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """Return ``{"code", "message"}`` as JSON with ``status``."""
    return web.json_response(
        {"code": code, "message": message}, status=status, headers=headers
    )


@web.middleware
async def error_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Turn every exception below a handler into a JSON error response."""
    try:
        return await handler(request)
    except ApiError as error:
        return error.to_response()
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return _from_http_exception(request, error)
    except CaseNotFound:
        return error_response(404, "case_not_found", "no case with this id exists")
    except TransitionRejected as error:
        return error_response(409, "step_conflict", f"{error}")
    except StaleCase:
        logger.warning("case kept changing during a write route=%s", _route(request))
        return error_response(
            503,
            "case_busy",
            "the case changed during the request; try again",
            {"Retry-After": str(STALE_RETRY_AFTER_SECONDS)},
        )
    except (RedisConnectionError, RedisTimeoutError) as error:
        logger.warning(
            "redis unavailable route=%s error=%s", _route(request), type(error).__name__
        )
        return error_response(
            503,
            "redis_unavailable",
            "the service cannot reach its database; try again later",
            {"Retry-After": str(REDIS_RETRY_AFTER_SECONDS)},
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("unexpected error route=%s", _route(request))
        return error_response(500, "internal_error", "an unexpected error occurred")


def _from_http_exception(
    request: web.Request, error: web.HTTPException
) -> web.Response:
    status = error.status
    code = _CODES_BY_STATUS.get(status, "http_error")
    headers: dict[str, str] = {}
    if isinstance(error, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(error.allowed_methods))
        headers["Allow"] = allowed
        message = f"method {request.method} is not allowed here; allowed: {allowed}"
    elif isinstance(error, web.HTTPNotFound):
        message = "no endpoint or resource at this path"
    elif isinstance(error, web.HTTPRequestEntityTooLarge):
        message = "the request body is larger than the service accepts"
    else:
        message = f"the request failed: {error.reason}"
    return error_response(status, code, message, headers)


def _route(request: web.Request) -> str:
    # The route pattern, not the path: paths carry case ids and page ids.
    route = request.match_info.route
    resource = route.resource
    return resource.canonical if resource is not None else "unmatched"
