"""The bot's own HTTP server for probes and metrics.

PTB's webhook server (tornado) only accepts updates, and polling mode has no
server at all. So the bot serves ``GET /healthz`` (the process runs),
``GET /readyz`` (Redis replies to a PING) and ``GET /metrics`` (Prometheus
text format) on a port of its own, ``BOT_HEALTH_PORT``.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

READINESS_TIMEOUT_SECONDS = 2.0
"""A Redis that takes longer to reply to a PING counts as unreachable. Probes
of orchestrators time out after a few seconds, and the reply must come first."""

READINESS_RETRY_AFTER_SECONDS = 5
"""``Retry-After`` of a failed readiness check: about one probe interval."""

REDIS_KEY = web.AppKey("redis", Redis)

SHUTDOWN_TIMEOUT_SECONDS = 2.0
"""Probe and scrape requests are short; a stop does not wait longer for them."""


def create_app(redis: Redis) -> web.Application:
    """Build the probe and metrics application on ``redis``."""
    app = web.Application()
    app[REDIS_KEY] = redis
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def healthz(_request: web.Request) -> web.Response:
    """``GET /healthz``: the process serves requests."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: 200 when Redis replies to a PING, else 503 JSON."""
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
            await request.app[REDIS_KEY].ping()
    except (RedisError, OSError, TimeoutError) as error:
        logger.warning("readiness check failed error=%s", type(error).__name__)
        return web.json_response(
            {
                "code": "redis_unavailable",
                "message": "Redis did not answer; the bot cannot serve updates.",
            },
            status=503,
            headers={"Retry-After": str(READINESS_RETRY_AFTER_SECONDS)},
        )
    return web.json_response({"status": "ready"})


async def metrics(_request: web.Request) -> web.Response:
    """``GET /metrics``: every metric of the default registry, text format."""
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def start_server(redis: Redis, host: str, port: int) -> web.AppRunner:
    """Serve the probes on ``host``:``port`` (0 picks a free port).

    Stop the server with ``await runner.cleanup()``. ``runner.addresses``
    gives the bound address.
    """
    runner = web.AppRunner(
        create_app(redis), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS
    )
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound = runner.addresses[0]
    logger.info("bot health server started host=%s port=%s", bound[0], bound[1])
    return runner
