"""Two bot replicas share Telegram's limits through Redis, at the real rates.

Both replicas run in webhook mode behind one round-robin proxy, with the
default send limits: 30 messages a second for the bot, and per chat a burst
of 3 then one a second. The emulator enforces Telegram's limits and records
when each Bot API call arrives; the tests check those times against the
limits. A 429 that one replica meets must hold back the other one too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from bot.telegram_limits import SendLimits
from journey import keys
from sandbox.redis_server import RedisServer
from sandbox.telegram_emulator import EmulatorClient, RateLimits, start_emulator
from tests.test_reminders import registry
from tests.test_webhook_replicas import BOT_TOKEN, running_replicas

LIMITS = SendLimits()
"""The defaults, Telegram's limits: what production runs with."""

CHATS = 60
"""Clients who write at once: two seconds of replies at 30 a second."""

SAME_CHAT_MESSAGES = 6
"""Messages of one client in a row: a burst of 3, then one a second."""

STAMP_JITTER_SECONDS = 0.15
"""How much earlier than the limiter's spacing the emulator may stamp a call.
The limiter admits a message at Redis time and the emulator stamps it when
the request arrives, so the spread of the request latency shows up here. The
value is an estimate with room for a loaded machine."""

FIRST_USER_ID = 910_000
WAIT_SECONDS = 30.0
"""Upper bound for one expected message; the slowest waits here take 3 s."""

FLOODED_CHAT_RATE = 1 / 3
"""Private-chat refill of the emulator in the 429 test, a third of Telegram's
documented rate. After the test empties one chat's bucket, a reply to that
chat meets a 429 even if it arrives up to three seconds later. On a loaded
machine it arrived after about one second. The ``retry_after`` is then 1 to
3 seconds."""

STREAM_CHATS = 20
"""Chats each replica sends to while a 429 pauses the bot."""


@contextlib.asynccontextmanager
async def emulator_with(limits: RateLimits) -> AsyncIterator[str]:
    runner, base_url = await start_emulator("127.0.0.1", 0, rate_limits=limits)
    try:
        yield base_url
    finally:
        await runner.cleanup()


def text_of(event: dict[str, Any]) -> str:
    message = event["message"]
    return str(message.get("text") or message.get("caption") or "")


async def next_sent(client: EmulatorClient, user_id: int) -> dict[str, Any]:
    return await client.wait_for(
        user_id, lambda event: event["kind"] == "sent", timeout=WAIT_SECONDS
    )


def earliest_excess(
    times: list[float], interval: float, burst: int, catch_up: float = 0.0
) -> float:
    """Return how much too early the worst-spaced pair of sends came, in seconds.

    A limiter with this interval and burst lets send ``j`` come no sooner than
    ``(j - i - burst + 1) * interval - catch_up`` after send ``i``. The result
    is the largest shortfall over all pairs of the sorted times; 0 or less
    means every pair kept its spacing.
    """
    ordered = sorted(times)
    worst = float("-inf")
    for first in range(len(ordered)):
        for later in range(first + burst, len(ordered)):
            allowed = (later - first - burst + 1) * interval - catch_up
            worst = max(worst, allowed - (ordered[later] - ordered[first]))
    return worst


def ok_sends(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [call for call in calls if call["ok"]]


async def test_replicas_keep_global_and_chat_rates(
    redis: Redis, redis_server: RedisServer
) -> None:
    users = [FIRST_USER_ID + index for index in range(CHATS)]
    same_chat = FIRST_USER_ID + CHATS
    async with (
        emulator_with(RateLimits()) as emulator,
        EmulatorClient(emulator) as client,
        running_replicas(
            emulator, redis, redis_server.url, registry(), LIMITS
        ) as replicas,
    ):
        await asyncio.gather(
            *(client.send_text(user, "hallo") for user in users),
            *(client.send_text(same_chat, "hallo") for _ in range(SAME_CHAT_MESSAGES)),
        )
        for user in users:
            await next_sent(client, user)
        for _ in range(SAME_CHAT_MESSAGES):
            await next_sent(client, same_chat)
        calls = await client.calls("sendMessage")
        stats = await client.stats()

    sends = ok_sends(calls)
    assert stats["rate_limited"] == 0
    assert len(sends) == CHATS + SAME_CHAT_MESSAGES
    assert min(replicas.proxy.forwarded.values()) >= CHATS // 2

    interval = 1.0 / LIMITS.global_per_second
    times = [call["clock"] for call in sends]
    # The global limiter grants a late sender up to half an interval back.
    global_excess = earliest_excess(times, interval, 1, catch_up=interval / 2)
    assert global_excess <= STAMP_JITTER_SECONDS

    same_chat_times = [call["clock"] for call in sends if call["chat_id"] == same_chat]
    assert len(same_chat_times) == SAME_CHAT_MESSAGES
    chat_excess = earliest_excess(
        same_chat_times, 1.0 / LIMITS.chat_per_second, LIMITS.chat_burst
    )
    assert chat_excess <= STAMP_JITTER_SECONDS
    # Without the chat limit the six replies would come within a fraction of
    # a second; with it the last waits three seconds after the burst.
    span = max(same_chat_times) - min(same_chat_times)
    assert span >= SAME_CHAT_MESSAGES - LIMITS.chat_burst - STAMP_JITTER_SECONDS


@contextlib.asynccontextmanager
async def pause_watch(redis: Redis) -> AsyncIterator[asyncio.Event]:
    """Yield an event that is set once Redis reports a write of the pause key."""
    previous = (await redis.config_get("notify-keyspace-events"))[
        "notify-keyspace-events"
    ]
    await redis.config_set("notify-keyspace-events", "K$")
    pubsub = redis.pubsub()
    await pubsub.subscribe(f"__keyspace@0__:{keys.telegram_pause()}")
    written = asyncio.Event()

    async def watch() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message" and message["data"] == "set":
                written.set()
                return

    task = asyncio.create_task(watch())
    try:
        yield written
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pubsub.aclose()
        await redis.config_set("notify-keyspace-events", previous)


async def empty_chat_bucket(emulator: str, chat_id: int) -> int:
    """Send to ``chat_id`` past the shared limits until the emulator responds 429.

    Plays a second sender with the bot's token that ignores the shared limits;
    returns how many of its messages went through.
    """
    url = f"{emulator}/bot{BOT_TOKEN}/sendMessage"
    sent = 0
    async with aiohttp.ClientSession() as session:
        while True:
            body = {"chat_id": chat_id, "text": "buiten de limiet"}
            async with session.post(url, json=body) as response:
                if response.status == 429:
                    return sent
                assert response.status == 200
                sent += 1


async def test_429_pauses_both_replicas(
    redis: Redis, redis_server: RedisServer
) -> None:
    users_a = [FIRST_USER_ID + 100 + index for index in range(STREAM_CHATS)]
    users_b = [FIRST_USER_ID + 200 + index for index in range(STREAM_CHATS)]
    flooded = FIRST_USER_ID + 300
    limits = RateLimits(private_chat_per_second=FLOODED_CHAT_RATE)
    async with (
        emulator_with(limits) as emulator,
        EmulatorClient(emulator) as client,
        running_replicas(
            emulator, redis, redis_server.url, registry(), LIMITS
        ) as replicas,
    ):
        everyone = [*users_a, *users_b, flooded]
        await asyncio.gather(*(client.send_text(user, "hallo") for user in everyone))
        replies = [await next_sent(client, user) for user in everyone]
        reply_text = text_of(replies[-1])

        outside_sends = await empty_chat_bucket(emulator, flooded)
        async with pause_watch(redis) as paused:
            await client.send_text(flooded, "hallo")
            async with asyncio.timeout(WAIT_SECONDS):
                await paused.wait()
        # Both replicas send while the pause lasts; neither may reach Telegram.
        first, second = replicas.apps
        await asyncio.gather(
            *(first.bot.send_message(user, "van replica 0") for user in users_a),
            *(second.bot.send_message(user, "van replica 1") for user in users_b),
        )
        retried = await client.wait_for(
            flooded,
            lambda event: event["kind"] == "sent" and text_of(event) == reply_text,
            timeout=WAIT_SECONDS,
        )
        messages = await client.messages(flooded)
        calls = await client.calls("sendMessage")
        stats = await client.stats()

    assert outside_sends >= 1
    assert retried["message"]["text"] == reply_text
    assert [text_of({"message": m}) for m in messages].count(reply_text) == 2
    # One 429 for the outside sender, one for the replica's reply.
    assert stats["rate_limited"] == 2

    rejected = [call for call in calls if call["error_code"] == 429]
    bot_429 = rejected[-1]
    assert bot_429["chat_id"] == flooded
    # The emulator rounds the wait up to whole seconds: 1 to 3 here.
    retry_after = int(bot_429["description"].rsplit(" ", 1)[-1])
    assert retry_after >= 1
    resume_at = bot_429["clock"] + retry_after
    later_sends = [call for call in ok_sends(calls) if call["clock"] > bot_429["clock"]]
    stream_a = [call["clock"] for call in later_sends if call["chat_id"] in users_a]
    stream_b = [call["clock"] for call in later_sends if call["chat_id"] in users_b]
    retry = [call["clock"] for call in later_sends if call["chat_id"] == flooded]
    assert len(stream_a) == STREAM_CHATS
    assert len(stream_b) == STREAM_CHATS
    assert len(retry) == 1
    # A small margin: Redis and the emulator read two clocks of one machine.
    assert min(stream_a) >= resume_at - 0.05
    assert min(stream_b) >= resume_at - 0.05
    assert retry[0] >= resume_at - 0.05


@pytest.mark.parametrize(
    ("times", "burst", "expected"),
    [
        ([0.0, 0.0, 0.0, 1.0, 2.0], 3, 0.0),
        ([0.0, 0.0, 0.0, 0.4], 3, 0.6),
        ([0.0, 0.5], 1, 0.5),
    ],
)
def test_excess_measures_spacing(
    times: list[float], burst: int, expected: float
) -> None:
    assert earliest_excess(times, 1.0, burst) == pytest.approx(expected)
