"""Metrics and logs: what an operator reads, and that it contains no secrets.

The service's ``/metrics`` is scraped over HTTP with the stack's metrics
token, before and after a whole journey on the sandbox stack. The emulator's
flood control drives the Telegram request counters. The log format and the
token filter are checked through the real ``logging`` machinery.
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from telegram import Bot
from telegram.error import RetryAfter

from bot.metrics import CountingRequest
from journey.logging_setup import (
    KeyValueFormatter,
    SecretFilter,
    configure_logging,
    parse_level,
)
from sandbox.redis_server import RedisServer
from sandbox.stack import SandboxStack, running_stack
from sandbox.telegram_emulator import EmulatorClient, RateLimits, start_emulator
from tests.test_bot_conversation import FAST_SEND_LIMITS
from tests.test_end_to_end import play

Samples = dict[tuple[str, str], float]

BOT_TOKEN = "654321:observability-test-token"
FLOOD_USER_ID = 424242
MAX_SENDS_BEFORE_429 = 50
"""The emulator's private-chat burst is a few messages, so fifty sends in a
row must get a 429 long before the end."""


@pytest.fixture
async def stack(redis: Redis, redis_server: RedisServer) -> AsyncIterator[SandboxStack]:
    async with running_stack(
        redis_url=redis_server.url,
        rate_limits=RateLimits.disabled(),
        send_limits=FAST_SEND_LIMITS,
    ) as running:
        yield running


async def scrape(stack: SandboxStack) -> Samples:
    headers = {"Authorization": f"Bearer {stack.metrics_token}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{stack.service_url}/metrics", headers=headers
        ) as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[(sample.name, labels)] = sample.value
    return samples


def delta(before: Samples, after: Samples, name: str, labels: str = "") -> float:
    return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)


async def test_service_metrics_follow_journey(stack: SandboxStack) -> None:
    before = await scrape(stack)
    await play(stack, partner=False, marker="metrics-journey")
    after = await scrape(stack)

    assert delta(before, after, "gv_service_pairings_created_total") >= 1
    assert delta(before, after, "gv_service_pairings_claimed_total") == 1
    delivered = "outcome=delivered"
    assert delta(before, after, "gv_service_deliveries_total", delivered) == 1
    assert delta(before, after, "gv_service_delivery_latency_seconds_count") == 1
    assert (
        delta(before, after, "gv_service_delivery_attempt_duration_seconds_count") >= 1
    )
    claim = "method=POST,route=/app/v1/claim,status=200"
    assert delta(before, after, "gv_service_http_requests_total", claim) == 1


async def test_service_funnel_lists_every_step(stack: SandboxStack) -> None:
    # Scrapes within FUNNEL_CACHE_SECONDS of the first one return its count,
    # so the journey and the invitation come before the only scrape.
    await play(stack, partner=False, marker="metrics-funnel")
    await stack.invite()
    samples = await scrape(stack)
    steps = {labels for name, labels in samples if name == "gv_cases"}
    assert "step=invited" in steps
    assert "step=delivering" in steps
    assert samples[("gv_cases", "step=invited")] >= 1
    assert samples[("gv_cases", "step=delivered")] >= 1
    assert samples[("gv_cases_scan_truncated", "")] == 0


async def test_service_metrics_hide_ids(stack: SandboxStack) -> None:
    invitation = await stack.invite()
    async with aiohttp.ClientSession() as session:
        url = f"{stack.service_url}/v1/cases/{invitation.case_id}"
        headers = {"Authorization": f"Bearer {stack.service_token}"}
        async with session.get(url, headers=headers) as response:
            assert response.status == 200
    samples = await scrape(stack)
    labels = " ".join(labels for _name, labels in samples)
    assert invitation.case_id not in labels
    assert "route=/v1/cases/{case_id}" in labels


@pytest.fixture
async def flood_emulator() -> AsyncIterator[str]:
    runner, base_url = await start_emulator("127.0.0.1", 0, rate_limits=RateLimits())
    yield base_url
    await runner.cleanup()


async def test_telegram_429_counted(flood_emulator: str) -> None:
    async with EmulatorClient(flood_emulator) as client:
        await client.send_text(FLOOD_USER_ID, "hallo")
    bot = Bot(
        BOT_TOKEN,
        base_url=f"{flood_emulator}/bot",
        request=CountingRequest(),
    )
    method = "method=sendMessage"
    async with bot:
        before = await scrape_registry()
        rate_limited = 0
        for _attempt in range(MAX_SENDS_BEFORE_429):
            try:
                await bot.send_message(FLOOD_USER_ID, "test")
            except RetryAfter:
                rate_limited += 1
                break
        after = await scrape_registry()

    assert rate_limited == 1
    assert delta(before, after, "gv_bot_telegram_rate_limited_total", method) == 1
    errors = f"{method},status=429"
    assert delta(before, after, "gv_bot_telegram_errors_total", errors) == 1
    sent = f"{method},status=200"
    assert delta(before, after, "gv_bot_telegram_requests_total", sent) >= 1


async def scrape_registry() -> Samples:
    # The bot's counters live in this process's default registry; the probe
    # server that serves them over HTTP is tested with the webhook replicas.
    text = generate_latest(REGISTRY).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[(sample.name, labels)] = sample.value
    return samples


# Logs.


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers = list(root.handlers)
    saved_level = root.level
    stream = io.StringIO()
    configure_logging(logging.INFO, stream, force=True)
    yield stream
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
    root.setLevel(saved_level)


def test_log_line_is_key_value(log_stream: io.StringIO) -> None:
    logging.getLogger("journey.test").info("case moved case=%s step=%s", "GV-1", "qr")
    line = log_stream.getvalue().strip()
    assert line.startswith("ts=")
    assert line.endswith('msg="case moved case=GV-1 step=qr"')
    assert " level=INFO " in line
    assert " logger=journey.test " in line


def test_log_message_stays_one_line(log_stream: io.StringIO) -> None:
    logging.getLogger("journey.test").warning('bad value="a"\nsecond line')
    lines = log_stream.getvalue().splitlines()
    assert len(lines) == 1
    assert 'msg="bad value=\\"a\\"\\nsecond line"' in lines[0]


def test_token_url_record_dropped(log_stream: io.StringIO) -> None:
    url = (
        "https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/getMe"
    )
    logging.getLogger("httpx").warning("HTTP Request: POST %s", url)
    logging.getLogger("telegram.ext").error("network error at %s", url)
    assert log_stream.getvalue() == ""


def test_token_in_exception_dropped(log_stream: io.StringIO) -> None:
    try:
        raise ValueError("bad request to /bot123456789:secret-part-of-the-token/x")
    except ValueError:
        logging.getLogger("bot.errors").exception("request failed")
    assert log_stream.getvalue() == ""


def test_httpx_info_silenced(log_stream: io.StringIO) -> None:
    logging.getLogger("httpx").info("HTTP Request: GET http://127.0.0.1/healthz")
    assert log_stream.getvalue() == ""


def test_secret_filter_passes_case_ref() -> None:
    record = logging.LogRecord(
        "bot", logging.INFO, __file__, 1, "sent case=%s", ("GV-1A2B3C4D5E",), None
    )
    assert SecretFilter().filter(record)
    assert "case=GV-1A2B3C4D5E" in KeyValueFormatter().format(record)


def test_log_level_rejects_unknown() -> None:
    assert parse_level(None) == logging.INFO
    assert parse_level("debug") == logging.DEBUG
    with pytest.raises(ValueError, match="LOG_LEVEL"):
        parse_level("verbose")
