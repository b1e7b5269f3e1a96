"""Prometheus metrics of the pairing service, served at ``GET /metrics``.

Request metrics come from a middleware that labels each request with its
route pattern (``/v1/cases/{case_id}/pairings``), never the path, because
paths carry case ids and page ids. Pairings created and claimed are counted
from the responses of their routes. Deliveries are counted by the delivery
worker. The journey funnel (cases per step) is read from Redis at scrape
time with a bounded scan (``journey.funnel``), so every replica reports the
same numbers.
"""

from __future__ import annotations

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
from redis.exceptions import RedisError

from journey.funnel import count_cases_by_step
from pairing_service.services import services_of

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PAIRING_ROUTE = "/v1/cases/{case_id}/pairings"
CLAIM_ROUTE = "/app/v1/claim"

DELIVERY_LATENCY_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 3600, 4 * 3600, 16 * 3600)
"""Seconds from the last consent to the municipality's 2xx. The first attempt
usually lands within seconds; the retry schedule stretches to about 16 hours."""

ATTEMPT_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15)
"""Seconds of one webhook request; the request timeout is 15 s by default."""

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


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: the service's metrics in Prometheus text format.

    The funnel is counted first. When Redis is unreachable, the gauges keep
    their last values and ``gv_cases_scan_failures_total`` goes up, so a
    scrape still returns the other metrics.
    """
    try:
        funnel = await count_cases_by_step(services_of(request).redis)
    except (RedisError, OSError) as error:
        FUNNEL_FAILURES.inc()
        logger.warning("funnel count failed error=%s", type(error).__name__)
    else:
        for step, count in funnel.by_step.items():
            CASES_BY_STEP.labels(step).set(count)
        FUNNEL_SCANNED.set(funnel.scanned)
        FUNNEL_TRUNCATED.set(1 if funnel.truncated else 0)
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application) -> None:
    """Register ``GET /metrics`` on ``app``."""
    app.router.add_get("/metrics", metrics)


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
