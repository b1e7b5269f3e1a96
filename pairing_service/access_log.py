"""An access log that writes route patterns instead of paths.

Paths contain case ids and QR page ids, which are secrets. The pattern
(``/v1/cases/{case_id}``) gives an operator the same information without them.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger


class RouteAccessLogger(AbstractAccessLogger):
    """Logs ``method route status seconds`` for every request."""

    def log(
        self, request: web.BaseRequest, response: web.StreamResponse, time: float
    ) -> None:
        """Write one line for a finished request."""
        self.logger.info(
            "request method=%s route=%s status=%s seconds=%.3f",
            request.method,
            _route_of(request),
            response.status,
            time,
        )


def _route_of(request: web.BaseRequest) -> str:
    # Only a web.Request has match_info. A request that aiohttp's parser
    # rejected never reached the router, and web.Request.match_info then
    # fails an assertion instead of returning None.
    match_info: web.UrlMappingMatchInfo | None = None
    if isinstance(request, web.Request):
        try:
            match_info = request.match_info
        except AssertionError:
            match_info = None
    resource = match_info.route.resource if match_info is not None else None
    if resource is None:
        return "unmatched"
    return resource.canonical
