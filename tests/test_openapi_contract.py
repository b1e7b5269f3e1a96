"""schemathesis against the OpenAPI document, with the service on loopback.

Every operation of ``pairing_service/openapi.json`` gets generated requests,
valid and invalid. Each response must not be a server error, must have a
status, content type, headers and body that the document describes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from redis.asyncio import Redis
from schemathesis.specs.openapi import checks as openapi_checks

from journey.package import generate_key_pair
from pairing_service.app import create_app, load_openapi
from pairing_service.config import Settings
from sandbox.redis_server import RedisServer, free_port
from tests.test_pairing_service import PUBLIC_BASE_URL, SERVICE_TOKEN, make_registry

EXAMPLES_PER_OPERATION = 30
"""Generated requests per operation: enough to reach every error branch of a
handler, and the whole run stays within a few seconds."""

START_TIMEOUT_SECONDS = 10.0

schema = schemathesis.openapi.from_dict(load_openapi())

CHECKS = [
    schemathesis.checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.response_headers_conformance,
]


class ServiceThread:
    """The service on its own event loop in a thread, for the sync test client."""

    def __init__(self, redis_url: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._redis_url = redis_url
        self._started = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="gv-service")

    def __enter__(self) -> ServiceThread:
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_SECONDS):
            raise RuntimeError("the service did not start")
        return self

    def __exit__(self, *_exc: object) -> None:
        stop = self._stop
        if stop is not None:
            self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(START_TIMEOUT_SECONDS)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        redis = Redis.from_url(self._redis_url, decode_responses=True)
        settings_ = Settings(
            service_token=SERVICE_TOKEN,
            public_base_url=PUBLIC_BASE_URL,
            bot_username="gv_test_bot",
            registry_path=Path("unused-registry.json"),
            # Generated claims come from one address; the limit is tested
            # elsewhere and would turn most of them into 429s here.
            claims_per_address=1_000_000,
        )
        app = create_app(
            settings_,
            redis=redis,
            registry=make_registry(generate_key_pair()),
            start_worker=False,
        )
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await redis.aclose()


@pytest.fixture(scope="module")
def service_url(redis_server: RedisServer) -> Iterator[str]:
    with ServiceThread(redis_server.url) as service:
        yield service.base_url


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_openapi(case: Any, service_url: str) -> None:
    headers = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    case.call_and_validate(base_url=service_url, headers=headers, checks=CHECKS)
