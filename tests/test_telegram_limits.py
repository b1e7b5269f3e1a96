"""The shared Telegram limits on a real Redis, on a clock the test moves.

``SharedTelegramLimits`` reads the test's clock instead of Redis ``TIME``,
so each admission and each wait can be checked to the millisecond. The pause
after a 429 is a Redis key lifetime, so its checks use Redis time.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from telegram.error import RetryAfter

from bot.config import BotSettings, ConfigError
from bot.reminders import ReminderSettings
from bot.telegram_limits import (
    ACQUIRED,
    MAX_RETRIES,
    SendLimits,
    SharedRateLimiter,
    SharedTelegramLimits,
    is_group,
)
from journey import keys
from sandbox.redis_server import free_port
from tests.test_bot_units import base_environment

START = 1_800_000_000.0
"""Unix time at which every fake clock starts."""

STEP = 0.01
"""Seconds the fake clock moves between two sends that should both pass the
global limit of ``FAST_GLOBAL``."""

FAST_GLOBAL = 1_000.0
"""A global rate whose 1 ms interval never delays sends ``STEP`` apart."""

BOT_TOKEN = "123456:limits-test-token"
PRIVATE_CHAT = 7301
GROUP_CHAT = -1001234567890


class FakeClock:
    """Unix time that moves only when the test calls ``advance``."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def limits_on(redis: Redis, clock: FakeClock, **rates: Any) -> SharedTelegramLimits:
    values: dict[str, Any] = {"global_per_second": FAST_GLOBAL}
    values.update(rates)
    return SharedTelegramLimits(redis, BOT_TOKEN, SendLimits(**values), clock=clock)


async def admitted_in_a_row(
    limits: SharedTelegramLimits, clock: FakeClock, chat_id: int, count: int
) -> list[float]:
    waits = []
    for _ in range(count):
        waits.append(await limits.try_acquire(chat_id))
        clock.advance(STEP)
    return waits


# The per-chat limit.


async def test_chat_burst_then_one_a_second(redis: Redis, clock: FakeClock) -> None:
    limits = limits_on(redis, clock, chat_per_second=1.0, chat_burst=3)

    burst = await admitted_in_a_row(limits, clock, PRIVATE_CHAT, 3)
    fourth = await limits.try_acquire(PRIVATE_CHAT)
    clock.advance(fourth)
    after_wait = await limits.try_acquire(PRIVATE_CHAT)
    fifth = await limits.try_acquire(PRIVATE_CHAT)

    assert burst == [0.0, 0.0, 0.0]
    assert fourth == pytest.approx(1.0 - 3 * STEP, abs=0.001)
    assert after_wait == 0.0
    assert fifth == pytest.approx(1.0, abs=0.001)


async def test_chats_are_limited_apart(redis: Redis, clock: FakeClock) -> None:
    limits = limits_on(redis, clock, chat_per_second=1.0, chat_burst=1)

    first = await limits.try_acquire(PRIVATE_CHAT)
    clock.advance(STEP)
    same_chat = await limits.try_acquire(PRIVATE_CHAT)
    other_chat = await limits.try_acquire(PRIVATE_CHAT + 1)

    assert first == 0.0
    assert same_chat > 0.9
    assert other_chat == 0.0


async def test_waiting_send_counts_nothing(redis: Redis, clock: FakeClock) -> None:
    limits = limits_on(redis, clock, global_per_second=10.0, chat_burst=1)

    await limits.try_acquire(PRIVATE_CHAT)
    clock.advance(0.1)
    # The chat must wait a second; had it taken the global slot anyway, the
    # other chat would have to wait 0.1 s.
    rejected = await limits.try_acquire(PRIVATE_CHAT)
    other_chat = await limits.try_acquire(PRIVATE_CHAT + 1)

    assert rejected > 0.8
    assert other_chat == 0.0


async def test_chat_id_text_shares_key(redis: Redis, clock: FakeClock) -> None:
    limits = limits_on(redis, clock, chat_per_second=1.0, chat_burst=1)

    await limits.try_acquire(GROUP_CHAT)
    clock.advance(STEP)

    assert await limits.try_acquire(str(GROUP_CHAT)) > 0.9


async def test_keys_name_no_chat_id(redis: Redis, clock: FakeClock) -> None:
    limits = limits_on(redis, clock)
    other_bot = SharedTelegramLimits(redis, "654321:other-bot-token")

    await limits.try_acquire(GROUP_CHAT)
    written = [key async for key in redis.scan_iter(match="gv:{telegram}:*")]

    assert written
    for key in written:
        assert str(abs(GROUP_CHAT)) not in key
    assert limits.chat_digest(GROUP_CHAT) != other_bot.chat_digest(GROUP_CHAT)
    assert len(limits.chat_digest(GROUP_CHAT)) == 32


# The global limit.


async def test_global_rate_spaces_sends(redis: Redis, clock: FakeClock) -> None:
    limits = limits_on(redis, clock, global_per_second=10.0)

    first = await limits.try_acquire(None)
    too_soon = await limits.try_acquire(PRIVATE_CHAT)
    clock.advance(too_soon)
    second = await limits.try_acquire(PRIVATE_CHAT + 1)
    third = await limits.try_acquire(PRIVATE_CHAT + 2)

    assert first == 0.0
    # An idle limiter grants half an interval of catch-up, no more.
    assert too_soon == pytest.approx(0.05, abs=0.001)
    assert second == 0.0
    assert third == pytest.approx(0.1, abs=0.001)


# The group window.


async def test_group_window_holds_maximum(redis: Redis, clock: FakeClock) -> None:
    limits = limits_on(
        redis,
        clock,
        chat_per_second=100.0,
        chat_burst=100,
        group_max_messages=3,
        group_window_seconds=10.0,
    )

    sent = []
    for _ in range(3):
        sent.append(await limits.try_acquire(GROUP_CHAT))
        clock.advance(1.0)
    fourth = await limits.try_acquire(GROUP_CHAT)
    clock.advance(fourth)
    after_oldest_left = await limits.try_acquire(GROUP_CHAT)
    clock.advance(0.5)
    next_one = await limits.try_acquire(GROUP_CHAT)

    assert sent == [0.0, 0.0, 0.0]
    assert fourth == pytest.approx(7.0, abs=0.001)
    assert after_oldest_left == 0.0
    assert next_one == pytest.approx(0.5, abs=0.001)


async def test_private_chat_has_no_window(redis: Redis, clock: FakeClock) -> None:
    limits = limits_on(
        redis,
        clock,
        chat_per_second=100.0,
        chat_burst=100,
        group_max_messages=1,
    )

    waits = await admitted_in_a_row(limits, clock, PRIVATE_CHAT, 5)

    assert waits == [0.0] * 5
    private_window = keys.telegram_group_window(limits.chat_digest(PRIVATE_CHAT))
    assert await redis.exists(private_window) == 0


@pytest.mark.parametrize(
    ("chat_id", "expected"),
    [
        (7301, False),
        ("7301", False),
        (-4001, True),
        (-1001234567890, True),
        ("-100123", True),
        ("@gezondverzekerd", True),
    ],
)
def test_group_told_from_chat_id(chat_id: int | str, expected: bool) -> None:
    assert is_group(chat_id) is expected


async def test_every_limiter_key_expires(redis: Redis, clock: FakeClock) -> None:
    limits = limits_on(redis, clock)

    await limits.try_acquire(GROUP_CHAT)
    clock.advance(STEP)
    await limits.try_acquire(PRIVATE_CHAT)
    await limits.pause(5.0)

    written = [key async for key in redis.scan_iter(match="gv:{telegram}:*")]
    assert sorted(written) == sorted(
        [
            keys.telegram_global_rate(),
            keys.telegram_pause(),
            keys.telegram_chat_rate(limits.chat_digest(GROUP_CHAT)),
            keys.telegram_chat_rate(limits.chat_digest(PRIVATE_CHAT)),
            keys.telegram_group_window(limits.chat_digest(GROUP_CHAT)),
        ]
    )
    for key in written:
        assert await redis.pttl(key) > 0, key


# The pause after a 429.


async def test_pause_stops_every_chat(redis: Redis, clock: FakeClock) -> None:
    limits = limits_on(redis, clock)

    await limits.pause(2.0)
    private = await limits.try_acquire(PRIVATE_CHAT)
    group = await limits.try_acquire(GROUP_CHAT)
    no_chat = await limits.try_acquire(None)

    for wait in (private, group, no_chat):
        assert 1.5 < wait <= 2.0


async def test_short_pause_keeps_longer_one(redis: Redis, clock: FakeClock) -> None:
    limits = limits_on(redis, clock)

    await limits.pause(30.0)
    await limits.pause(1.0)

    assert await redis.pttl(keys.telegram_pause()) > 20_000


async def test_pause_of_zero_is_ignored(redis: Redis, clock: FakeClock) -> None:
    limits = limits_on(redis, clock)

    await limits.pause(0.0)

    assert await redis.exists(keys.telegram_pause()) == 0
    assert await limits.try_acquire(PRIVATE_CHAT) == 0.0


# The PTB rate limiter.


def chat_rate_key(chat_id: int) -> str:
    digest = SharedTelegramLimits(Redis(), BOT_TOKEN).chat_digest(chat_id)
    return keys.telegram_chat_rate(digest)


class FloodControlledCall:
    """Stands in for PTB's HTTP post: 429 for the first ``rejections`` calls."""

    def __init__(self, rejections: int, retry_after: timedelta) -> None:
        self.rejections = rejections
        self.retry_after = retry_after
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.calls <= self.rejections:
            raise RetryAfter(self.retry_after)
        return {"message_id": self.calls}


async def send_through(
    limiter: SharedRateLimiter,
    call: FloodControlledCall,
    endpoint: str = "sendMessage",
    rate_limit_args: dict[str, Any] | None = None,
) -> Any:
    return await limiter.process_request(
        call,
        (),
        {},
        endpoint,
        {"chat_id": PRIVATE_CHAT, "text": "x"},
        rate_limit_args,
    )


async def test_429_pauses_then_retries(redis: Redis) -> None:
    limiter = SharedRateLimiter(SharedTelegramLimits(redis, BOT_TOKEN), max_retries=2)
    call = FloodControlledCall(1, timedelta(milliseconds=50))

    result = await send_through(limiter, call)

    assert result == {"message_id": 2}
    assert call.calls == 2


async def test_429_retries_are_bounded(redis: Redis) -> None:
    limiter = SharedRateLimiter(SharedTelegramLimits(redis, BOT_TOKEN), max_retries=2)
    call = FloodControlledCall(10, timedelta(milliseconds=20))

    with pytest.raises(RetryAfter):
        await send_through(limiter, call)

    assert call.calls == 3
    assert await redis.pttl(keys.telegram_pause()) != -1


async def test_per_request_retries_override(redis: Redis) -> None:
    limiter = SharedRateLimiter(SharedTelegramLimits(redis, BOT_TOKEN), max_retries=2)
    call = FloodControlledCall(10, timedelta(milliseconds=20))

    with pytest.raises(RetryAfter):
        await send_through(limiter, call, rate_limit_args={MAX_RETRIES: 0})

    assert call.calls == 1


async def test_acquired_send_not_counted_again(redis: Redis) -> None:
    limiter = SharedRateLimiter(SharedTelegramLimits(redis, BOT_TOKEN))
    call = FloodControlledCall(0, timedelta(0))

    await send_through(limiter, call, rate_limit_args={ACQUIRED: True})

    assert await redis.exists(chat_rate_key(PRIVATE_CHAT)) == 0


async def test_reads_are_not_limited(redis: Redis) -> None:
    limiter = SharedRateLimiter(SharedTelegramLimits(redis, BOT_TOKEN))
    call = FloodControlledCall(0, timedelta(0))

    await send_through(limiter, call, endpoint="getChatMember")

    assert await redis.exists(chat_rate_key(PRIVATE_CHAT)) == 0
    assert await redis.exists(keys.telegram_global_rate()) == 0


async def test_message_counted_in_its_chat(redis: Redis) -> None:
    limiter = SharedRateLimiter(SharedTelegramLimits(redis, BOT_TOKEN))
    call = FloodControlledCall(0, timedelta(0))

    await send_through(limiter, call, endpoint="editMessageText")

    assert await redis.exists(chat_rate_key(PRIVATE_CHAT)) == 1


async def test_sends_without_redis(caplog: pytest.LogCaptureFixture) -> None:
    unreachable = Redis(host="127.0.0.1", port=free_port())
    limiter = SharedRateLimiter(
        SharedTelegramLimits(unreachable, BOT_TOKEN), max_retries=1
    )
    first = FloodControlledCall(0, timedelta(0))
    flooded = FloodControlledCall(1, timedelta(milliseconds=20))

    try:
        sent = await send_through(limiter, first)
        retried = await send_through(limiter, flooded)
    finally:
        await unreachable.aclose()

    assert sent == {"message_id": 1}
    assert retried == {"message_id": 2}
    assert flooded.calls == 2
    warnings = [
        record
        for record in caplog.records
        if "limits unavailable" in record.getMessage()
    ]
    assert len(warnings) == 1


# Settings.


def test_limits_read_from_environment(tmp_path: Path) -> None:
    environment = base_environment(tmp_path)
    environment.update(
        {
            "TELEGRAM_MESSAGES_PER_SECOND": "25",
            "TELEGRAM_CHAT_MESSAGES_PER_SECOND": "0.5",
            "TELEGRAM_CHAT_BURST": "2",
            "TELEGRAM_GROUP_MESSAGES_PER_MINUTE": "15",
        }
    )

    limits = BotSettings.from_env(environment).telegram_limits

    assert limits.global_per_second == 25.0
    assert limits.chat_per_second == 0.5
    assert limits.chat_burst == 2
    assert limits.group_max_messages == 15
    assert limits.group_window_seconds == 60.0


def test_limits_default_to_telegram(tmp_path: Path) -> None:
    limits = BotSettings.from_env(base_environment(tmp_path)).telegram_limits

    assert limits == SendLimits()
    assert (limits.global_per_second, limits.chat_per_second) == (30.0, 1.0)
    assert limits.group_max_messages == 20


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TELEGRAM_MESSAGES_PER_SECOND", "0"),
        ("TELEGRAM_MESSAGES_PER_SECOND", "fast"),
        ("TELEGRAM_CHAT_MESSAGES_PER_SECOND", "-1"),
        ("TELEGRAM_CHAT_BURST", "2.5"),
        ("TELEGRAM_GROUP_MESSAGES_PER_MINUTE", "0"),
    ],
)
def test_invalid_limit_is_named(tmp_path: Path, variable: str, value: str) -> None:
    environment = base_environment(tmp_path)
    environment[variable] = value

    with pytest.raises(ConfigError, match=variable):
        BotSettings.from_env(environment)


def test_send_limits_reject_zero_burst() -> None:
    with pytest.raises(ValueError, match="chat_burst"):
        SendLimits(chat_burst=0)


def test_standalone_dispatcher_reads_limits() -> None:
    settings = ReminderSettings.from_env(
        {"TELEGRAM_MESSAGES_PER_SECOND": "12", "TELEGRAM_CHAT_BURST": "2"}
    )

    assert settings.send_limits.global_per_second == 12.0
    assert settings.send_limits.chat_burst == 2
