"""The aiohttp application of the pairing service."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from journey.clock import Clock, system_clock
from journey.municipalities import MunicipalityRegistry
from journey.package import MAX_PACKAGE_BYTES
from journey.redis_client import connect
from pairing_service import (
    app_api,
    health,
    internal_api,
    metrics,
    page_stream,
    qr_page,
)
from pairing_service.config import Settings
from pairing_service.delivery import DeliveryWorker
from pairing_service.errors import error_middleware
from pairing_service.security import add_security_headers
from pairing_service.services import SERVICES, Services

logger = logging.getLogger(__name__)

REQUEST_BODY_SLACK_BYTES = 64 * 1024
"""aiohttp's own body limit is this far above the largest package, so a client
gets the package handler's precise 413 response instead of aiohttp's."""

REDIS_CONNECT_TIMEOUT_SECONDS = 3.0
"""A Redis that takes longer to accept a connection counts as unreachable."""

REDIS_SOCKET_TIMEOUT_SECONDS = 10.0
"""Above the delivery worker's 2 s blocking stream read, far above any other
command's time."""

DELIVERY_WORKER = web.AppKey("delivery_worker", DeliveryWorker)
"""Application key of the running delivery worker."""


def create_app(
    settings: Settings,
    *,
    redis: Redis | None = None,
    registry: MunicipalityRegistry | None = None,
    clock: Clock = system_clock,
    start_worker: bool = True,
) -> web.Application:
    """Build the service's application.

    Args:
        settings: the configuration.
        redis: a client created with ``decode_responses=True``; by default one
            is made from ``settings.redis_url`` and closed with the app.
        registry: the municipalities; by default read from
            ``settings.registry_path``.
        clock: the time source of every expiry and schedule, for tests.
        start_worker: run the delivery worker inside this process.

    Raises:
        RegistryError: the registry file is missing or invalid.
    """
    if registry is None:
        registry = MunicipalityRegistry.load(settings.registry_path)
    owns_redis = redis is None
    if redis is None:
        redis = connect(
            settings.redis_url,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS,
            socket_timeout=REDIS_SOCKET_TIMEOUT_SECONDS,
        )

    app = web.Application(
        # The metrics middleware is outermost, so it counts the status that
        # the error middleware chose.
        middlewares=[metrics.metrics_middleware, error_middleware],
        client_max_size=MAX_PACKAGE_BYTES + REQUEST_BODY_SLACK_BYTES,
    )
    app[SERVICES] = Services.build(settings, redis, registry, clock)
    app.on_response_prepare.append(add_security_headers)

    internal_api.add_routes(app)
    app_api.add_routes(app)
    qr_page.add_routes(app)
    page_stream.add_routes(app)
    health.add_routes(app)
    metrics.add_routes(app)
    app.router.add_get("/openapi.json", openapi_document)

    # Cleanup runs in reverse: the worker stops before Redis closes.
    if owns_redis:
        app.cleanup_ctx.append(_close_redis_on_cleanup)
    app.cleanup_ctx.append(page_stream.run_notifier)
    if start_worker:
        app.cleanup_ctx.append(_run_delivery_worker)
    return app


async def openapi_document(_request: web.Request) -> web.Response:
    """``GET /openapi.json``: the OpenAPI 3.1 description of this service."""
    return web.json_response(load_openapi())


@cache
def load_openapi() -> dict[str, Any]:
    """Return the OpenAPI document shipped with the package."""
    source = resources.files("pairing_service").joinpath("openapi.json")
    document: dict[str, Any] = json.loads(source.read_text(encoding="utf-8"))
    return document


async def _close_redis_on_cleanup(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[SERVICES].redis.aclose()


async def _run_delivery_worker(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    settings = services.settings
    worker = DeliveryWorker(
        services,
        schedule=settings.delivery_retry_schedule,
        timeout_seconds=settings.delivery_timeout_seconds,
        concurrency=settings.delivery_concurrency,
    )
    await worker.start()
    app[DELIVERY_WORKER] = worker
    yield
    await worker.stop()
