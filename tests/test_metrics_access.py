"""``GET /metrics`` of the pairing service: the token it requires, and the
cached funnel count.

The service runs over real HTTP on loopback with a private redis-server.
SCANs are counted with Redis MONITOR, and time moves only with a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from journey import keys
from journey.package import generate_key_pair
from pairing_service.app import create_app
from pairing_service.config import MIN_METRICS_TOKEN_LENGTH, ConfigError, Settings
from pairing_service.metrics import FUNNEL_CACHE_SECONDS
from sandbox.redis_server import RedisServer, start_redis_server
from tests.redis_checks import CommandRecorder, monitor_commands
from tests.test_pairing_service import (
    MUNICIPALITY,
    PUBLIC_BASE_URL,
    SERVICE_TOKEN,
    FakeClock,
    make_registry,
)

METRICS_TOKEN = "test-metrics-token-" + "m" * 24

FUNNEL_SCAN = f"SCAN 0 MATCH {keys.case('*')} "
"""The start of a funnel count as MONITOR shows it: every count begins at
cursor 0."""


def metrics_settings(metrics_token: str) -> Settings:
    return Settings(
        service_token=SERVICE_TOKEN,
        public_base_url=PUBLIC_BASE_URL,
        bot_username="gv_test_bot",
        registry_path=Path("unused-registry.json"),
        metrics_token=metrics_token,
    )


@contextlib.asynccontextmanager
async def serving(
    redis: Redis, metrics_token: str, clock: FakeClock | None = None
) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(
        metrics_settings(metrics_token),
        redis=redis,
        registry=make_registry(generate_key_pair()),
        clock=clock or FakeClock(),
        start_worker=False,
    )
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def funnel_scans(recorder: CommandRecorder, redis: Redis) -> int:
    # The ECHO goes out after every earlier command, so once MONITOR shows it
    # the recorder contains all of them.
    marker = f"scan-count-marker-{secrets.token_hex(8)}"
    await redis.echo(marker)
    await recorder.wait_for(marker)
    return sum(1 for line in recorder.lines if line.startswith(FUNNEL_SCAN))


def sample_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == (labels or {}):
                return sample.value
    raise AssertionError(f"no sample {name} {labels or {}}")


def invited_cases(text: str) -> float:
    return sample_value(text, "gv_cases", {"step": "invited"})


async def scrape(client: TestClient[Any, Any]) -> str:
    response = await client.get("/metrics", headers=bearer(METRICS_TOKEN))
    assert response.status == 200
    return await response.text()


async def create_case(client: TestClient[Any, Any]) -> None:
    response = await client.post(
        "/v1/cases",
        json={"municipality_code": MUNICIPALITY},
        headers=bearer(SERVICE_TOKEN),
    )
    assert response.status == 201


def environment(**overrides: str) -> Mapping[str, str]:
    return {
        "SERVICE_TOKEN": SERVICE_TOKEN,
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "BOT_USERNAME": "gv_test_bot",
        "MUNICIPALITY_REGISTRY": "unused-registry.json",
        **overrides,
    }


# Access.


async def test_metrics_off_without_token(redis: Redis) -> None:
    async with serving(redis, metrics_token="") as client:
        response = await client.get("/metrics", headers=bearer(METRICS_TOKEN))
        document = await response.json()

    assert response.status == 404
    assert response.content_type == "application/json"
    assert document["code"] == "metrics_disabled"
    assert "METRICS_TOKEN" in document["message"]


async def test_metrics_without_header_rejected(redis: Redis) -> None:
    async with serving(redis, METRICS_TOKEN) as client:
        response = await client.get("/metrics")
        document = await response.json()

    assert response.status == 401
    assert response.content_type == "application/json"
    assert document["code"] == "metrics_token_required"
    assert document["message"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer " + "x" * len(METRICS_TOKEN),
        "Bearer " + METRICS_TOKEN[:-1],
        "Bearer " + METRICS_TOKEN + "x",
        "Bearer " + SERVICE_TOKEN,
        "Basic " + METRICS_TOKEN,
    ],
)
async def test_metrics_wrong_token_rejected(redis: Redis, authorization: str) -> None:
    async with serving(redis, METRICS_TOKEN) as client:
        response = await client.get(
            "/metrics", headers={"Authorization": authorization}
        )
        body = await response.text()
        document = await response.json()

    assert response.status == 401
    assert response.content_type == "application/json"
    assert document["code"] in ("invalid_metrics_token", "metrics_token_required")
    assert "gv_" not in body
    assert METRICS_TOKEN not in body


async def test_metrics_other_token_is_invalid(redis: Redis) -> None:
    async with serving(redis, METRICS_TOKEN) as client:
        response = await client.get("/metrics", headers=bearer(SERVICE_TOKEN))
        document = await response.json()

    assert response.status == 401
    assert document["code"] == "invalid_metrics_token"


async def test_metrics_non_utf8_token_rejected(redis: Redis) -> None:
    # aiohttp's client encodes headers as UTF-8, so the raw bytes go out
    # over a plain socket.
    async with serving(redis, METRICS_TOKEN) as client:
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(
            b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer \xff\xfe-not-utf-8\r\n"
            b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        response = await reader.read()
        writer.close()
        await writer.wait_closed()

    status_line, _, rest = response.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 401 Unauthorized"
    assert b'"code": "invalid_metrics_token"' in rest


async def test_metrics_right_token_served(redis: Redis) -> None:
    async with serving(redis, METRICS_TOKEN) as client:
        response = await client.get("/metrics", headers=bearer(METRICS_TOKEN))
        text = await response.text()

    assert response.status == 200
    assert response.content_type == "text/plain"
    names = {family.name for family in text_string_to_metric_families(text)}
    assert "gv_cases" in names
    assert "gv_cases_scan_truncated" in names
    assert "gv_service_http_requests" in names


async def test_metrics_token_never_logged(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(redis, METRICS_TOKEN) as client:
        for headers in ({}, bearer(METRICS_TOKEN[:-1]), bearer(METRICS_TOKEN)):
            response = await client.get("/metrics", headers=headers)
            await response.read()

    assert caplog.records
    assert METRICS_TOKEN not in caplog.text
    assert METRICS_TOKEN[:-1] not in caplog.text


# Settings.


def test_metrics_token_unset_turns_metrics_off() -> None:
    assert Settings.from_env(environment()).metrics_token == ""
    assert Settings.from_env(environment(METRICS_TOKEN="  ")).metrics_token == ""


def test_metrics_token_read_from_environment() -> None:
    settings = Settings.from_env(environment(METRICS_TOKEN=METRICS_TOKEN))
    assert settings.metrics_token == METRICS_TOKEN


def test_metrics_token_short_is_config_error() -> None:
    short = "m" * (MIN_METRICS_TOKEN_LENGTH - 1)
    with pytest.raises(ConfigError) as error:
        Settings.from_env(environment(METRICS_TOKEN=short))
    assert error.value.variable == "METRICS_TOKEN"
    assert "METRICS_TOKEN" in str(error.value)
    assert str(MIN_METRICS_TOKEN_LENGTH) in str(error.value)
    assert short not in str(error.value)


def test_metrics_token_same_as_service_token_rejected() -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env(environment(METRICS_TOKEN=SERVICE_TOKEN))
    assert error.value.variable == "METRICS_TOKEN"
    assert SERVICE_TOKEN not in str(error.value)


def test_metrics_token_not_in_settings_repr() -> None:
    settings = Settings.from_env(environment(METRICS_TOKEN=METRICS_TOKEN))
    assert METRICS_TOKEN not in repr(settings)


# The funnel count.


async def test_funnel_scanned_once_within_interval(
    redis: Redis, redis_server: RedisServer
) -> None:
    clock = FakeClock()
    async with serving(redis, METRICS_TOKEN, clock) as client:
        async with monitor_commands(redis_server.url) as recorder:
            await scrape(client)
            await scrape(client)
            assert await funnel_scans(recorder, redis) == 1

            clock.advance(FUNNEL_CACHE_SECONDS - 0.5)
            await scrape(client)
            assert await funnel_scans(recorder, redis) == 1

            clock.advance(1.0)
            await scrape(client)
            assert await funnel_scans(recorder, redis) == 2


async def test_funnel_concurrent_scrapes_scan_once(
    redis: Redis, redis_server: RedisServer
) -> None:
    clock = FakeClock()
    async with serving(redis, METRICS_TOKEN, clock) as client:
        assert invited_cases(await scrape(client)) == 0
        await create_case(client)
        await create_case(client)
        clock.advance(FUNNEL_CACHE_SECONDS)

        async with monitor_commands(redis_server.url) as recorder:
            texts = await asyncio.gather(*(scrape(client) for _scrape in range(5)))
            assert await funnel_scans(recorder, redis) == 1

        # Scrapes that came in during the count waited for it.
        for text in texts:
            assert invited_cases(text) == 2


async def test_funnel_rejected_scrape_scans_nothing(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with serving(redis, METRICS_TOKEN) as client:
        async with monitor_commands(redis_server.url) as recorder:
            for headers in ({}, bearer(METRICS_TOKEN[:-1])):
                response = await client.get("/metrics", headers=headers)
                assert response.status == 401
            assert await funnel_scans(recorder, redis) == 0


async def test_funnel_recounted_after_clock_goes_back(
    redis: Redis, redis_server: RedisServer
) -> None:
    clock = FakeClock()
    async with serving(redis, METRICS_TOKEN, clock) as client:
        async with monitor_commands(redis_server.url) as recorder:
            await scrape(client)
            clock.advance(-60.0)
            await scrape(client)
            assert await funnel_scans(recorder, redis) == 2


async def test_funnel_cached_count_then_new_count(redis: Redis) -> None:
    clock = FakeClock()
    async with serving(redis, METRICS_TOKEN, clock) as client:
        assert invited_cases(await scrape(client)) == 0
        await create_case(client)
        assert invited_cases(await scrape(client)) == 0

        clock.advance(FUNNEL_CACHE_SECONDS)
        assert invited_cases(await scrape(client)) == 1


async def test_funnel_failed_count_waits_interval() -> None:
    server = start_redis_server()
    redis = Redis.from_url(server.url, decode_responses=True)
    clock = FakeClock()
    failures = "gv_cases_scan_failures_total"
    try:
        async with serving(redis, METRICS_TOKEN, clock) as client:
            before = sample_value(await scrape(client), failures)
            server.stop()
            clock.advance(FUNNEL_CACHE_SECONDS)

            # Every scrape still returns the metrics while Redis is down, but
            # only the first one within the interval tries to count.
            for _scrape in range(3):
                assert sample_value(await scrape(client), failures) == before + 1

            clock.advance(FUNNEL_CACHE_SECONDS)
            assert sample_value(await scrape(client), failures) == before + 2
    finally:
        await redis.aclose()
        server.remove()
        server.stop()
