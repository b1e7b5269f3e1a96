"""Liveness and readiness probes."""

from __future__ import annotations

from aiohttp import web

from pairing_service.services import services_of


async def healthz(_request: web.Request) -> web.Response:
    """``GET /healthz``: the process serves requests."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: check that Redis replies to a PING.

    When Redis is unreachable the error middleware returns 503
    ``redis_unavailable`` with ``Retry-After``.
    """
    await services_of(request).redis.ping()
    return web.json_response({"status": "ready"})


def add_routes(app: web.Application) -> None:
    """Register the probe routes on ``app``."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
