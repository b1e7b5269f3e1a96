"""Prometheus metrics of the pairing service, served at ``GET /metrics``.

Request metrics come from a middleware that labels each request with its
route pattern (``/v1/cases/{case_id}/pairings``), never the path, because
paths carry case ids and page ids. Pairings created and claimed are counted
from the responses of their routes. Deliveries are counted by the delivery
worker. The journey funnel (cases per step) is read from Redis with a
bounded scan (``journey.funnel``), so every replica reports the same numbers.
Each process runs that scan at most once every ``FUNNEL_CACHE_SECONDS``
(``FunnelCache``, under a lock) and serves the cached counts between scans.

``GET /metrics`` is on the public port, so it requires the bearer token in
``METRICS_TOKEN`` and returns 404 while that setting is empty.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from redis.asyncio import Redis
from redis.exceptions import RedisError

from journey.clock import Clock
from journey.funnel import count_cases_by_step
from pairing_service.errors import ApiError
from pairing_service.services import SERVICES, services_of
from pairing_service.sessions import bearer_token

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PAIRING_ROUTE = "/v1/cases/{case_id}/pairings"
CLAIM_ROUTE = "/app/v1/claim"

DELIVERY_LATENCY_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 3600, 4 * 3600, 16 * 3600)
"""Seconds from the last consent to the municipality's 2xx. The first attempt
usually lands within seconds; the retry schedule stretches to about 16 hours."""

ATTEMPT_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15)
"""Seconds of one webhook request; the request timeout is 15 s by default."""

FUNNEL_CACHE_SECONDS = 15.0
"""Seconds for which scrapes reuse the last funnel count. It is the scrape
interval of Prometheus's example configuration
(``documentation/examples/prometheus.yml``). Unless a count failed, a scrape
gets counts at most this old. Several scrapers or a retry storm cost one SCAN
per interval per process."""

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="metrics"'}

HTTP_REQUESTS = Counter(
    "gv_service_http_requests_total",
    "HTTP requests served, by method, route pattern and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "gv_service_http_request_duration_seconds",
    "Time to serve one HTTP request, by route pattern.",
    ["route"],
)
PAIRINGS_CREATED = Counter(
    "gv_service_pairings_created_total",
    "Pairing codes issued (a first code or a renewal).",
)
PAIRINGS_CLAIMED = Counter(
    "gv_service_pairings_claimed_total",
    "Pairing codes that the app claimed successfully.",
)
CLAIMS_REJECTED = Counter(
    "gv_service_claims_rejected_total",
    "Claims the service rejected, by HTTP status.",
    ["status"],
)
DELIVERIES = Counter(
    "gv_service_deliveries_total",
    "Delivery attempts by outcome: delivered, retry or failed.",
    ["outcome"],
)
DELIVERY_LATENCY = Histogram(
    "gv_service_delivery_latency_seconds",
    "Seconds from queueing a delivery to the municipality's 2xx response.",
    buckets=DELIVERY_LATENCY_BUCKETS,
)
DELIVERY_ATTEMPT_DURATION = Histogram(
    "gv_service_delivery_attempt_duration_seconds",
    "Seconds of one webhook request to a municipality, any outcome.",
    buckets=ATTEMPT_DURATION_BUCKETS,
)
CASES_BY_STEP = Gauge(
    "gv_cases",
    "Cases in Redis per journey step, counted at scrape time.",
    ["step"],
)
FUNNEL_SCANNED = Gauge(
    "gv_cases_scanned",
    "Case keys read for the last funnel count.",
)
FUNNEL_TRUNCATED = Gauge(
    "gv_cases_scan_truncated",
    "1 when the last funnel count stopped at its bound, so counts are lower bounds.",
)
FUNNEL_FAILURES = Counter(
    "gv_cases_scan_failures_total",
    "Funnel counts that failed because Redis did not answer.",
)


@web.middleware
async def metrics_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Count the request and time it, labelled by route pattern and status.

    It runs outside the error middleware, so it records the status that the
    client receives. An exception that still escapes counts as 500.
    """
    started = time.perf_counter()
    route = _route(request)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    finally:
        HTTP_REQUESTS.labels(request.method, route, str(status)).inc()
        HTTP_DURATION.labels(route).observe(time.perf_counter() - started)
        _count_pairing(request.method, route, status)


class FunnelCache:
    """The funnel gauges of one process, counted again once they are stale.

    A count is stale ``interval`` seconds after it started, or when the clock
    went back past its start. A lock makes concurrent scrapes of a stale count
    wait for one SCAN instead of each starting their own.
    """

    __slots__ = ("_counted_at", "_interval", "_lock")

    def __init__(self, interval: float = FUNNEL_CACHE_SECONDS) -> None:
        self._interval = interval
        self._counted_at: float | None = None
        self._lock = asyncio.Lock()

    async def refresh(self, redis: Redis, clock: Clock) -> None:
        """Count the cases per step into the gauges unless the last count is fresh.

        A failed count also waits out the interval, because a Redis that
        times out should not get a new SCAN with every retried scrape. Until
        the next count the gauges keep their last values, and each failure
        adds one to ``gv_cases_scan_failures_total``.
        """
        async with self._lock:
            now = clock()
            if self._is_fresh(now):
                return
            self._counted_at = now

            try:
                funnel = await count_cases_by_step(redis)
            except (RedisError, OSError) as error:
                FUNNEL_FAILURES.inc()
                logger.warning("funnel count failed error=%s", type(error).__name__)
                return

            for step, count in funnel.by_step.items():
                CASES_BY_STEP.labels(step).set(count)
            FUNNEL_SCANNED.set(funnel.scanned)
            FUNNEL_TRUNCATED.set(1 if funnel.truncated else 0)

    def _is_fresh(self, now: float) -> bool:
        counted_at = self._counted_at
        if counted_at is None:
            return False
        return counted_at <= now < counted_at + self._interval


FUNNEL_CACHE = web.AppKey("funnel_cache", FunnelCache)
"""Application key of the process's ``FunnelCache``."""


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: the service's metrics in Prometheus text format.

    The funnel gauges are counted again when their last count is older than
    ``FUNNEL_CACHE_SECONDS``. When Redis is unreachable the scrape still
    returns every metric, with the gauges at their last values.

    Raises:
        ApiError: 404 ``metrics_disabled`` when ``METRICS_TOKEN`` is not set;
            401 ``metrics_token_required`` without a bearer token and 401
            ``invalid_metrics_token`` with another one.
    """
    services = services_of(request)
    require_metrics_token(request, services.settings.metrics_token)

    await request.config_dict[FUNNEL_CACHE].refresh(services.redis, services.clock)
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def require_metrics_token(request: web.Request, expected: str) -> None:
    """Check the request's bearer token against ``expected`` in constant time.

    An empty ``expected`` means that the metrics are off.

    Raises:
        ApiError: 404 ``metrics_disabled``, 401 ``metrics_token_required`` or
            401 ``invalid_metrics_token``.
    """
    if not expected:
        raise ApiError(
            404,
            "metrics_disabled",
            "metrics are off; set METRICS_TOKEN to serve them at /metrics",
        )

    presented = bearer_token(request)
    if presented is None:
        raise ApiError(
            401,
            "metrics_token_required",
            "the metrics require 'Authorization: Bearer <METRICS_TOKEN>'",
            headers=_CHALLENGE,
        )

    # aiohttp decodes header bytes that are not UTF-8 as surrogates, and
    # surrogateescape turns them back into the bytes that were sent.
    presented_bytes = presented.encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(presented_bytes, expected.encode()):
        raise ApiError(
            401,
            "invalid_metrics_token",
            "the bearer token is not the METRICS_TOKEN of this service",
            headers=_CHALLENGE,
        )


def add_routes(app: web.Application) -> None:
    """Register ``GET /metrics`` and the funnel cache on ``app``.

    ``app`` must already contain its ``Services``, whose settings decide
    whether the metrics are on.
    """
    app[FUNNEL_CACHE] = FunnelCache()
    app.router.add_get("/metrics", metrics)
    if not app[SERVICES].settings.metrics_token:
        logger.info("metrics off: /metrics returns 404 until METRICS_TOKEN is set")


def record_delivered(queued_at: float, now: float) -> None:
    """Count a delivery the municipality accepted, with its latency in seconds."""
    DELIVERIES.labels("delivered").inc()
    DELIVERY_LATENCY.observe(max(0.0, now - queued_at))


def record_retry() -> None:
    """Count a failed attempt that will be retried."""
    DELIVERIES.labels("retry").inc()


def record_failed() -> None:
    """Count a delivery that failed for good."""
    DELIVERIES.labels("failed").inc()


def _count_pairing(method: str, route: str, status: int) -> None:
    if method != "POST":
        return
    if route == PAIRING_ROUTE and status == 201:
        PAIRINGS_CREATED.inc()
    elif route == CLAIM_ROUTE:
        if status == 200:
            PAIRINGS_CLAIMED.inc()
        else:
            CLAIMS_REJECTED.labels(str(status)).inc()


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"
