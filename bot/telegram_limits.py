"""Telegram's send limits, shared by every bot and worker process through Redis.

Telegram's Bots FAQ (core.telegram.org/bots/faq, "My bot is hitting limits")
asks for about 30 messages a second for the whole bot and about one a second
per chat. Each limit is a GCRA (generic cell rate algorithm) counter in
Redis: one string holds the theoretical arrival time of the next message,
and a Lua script that reads Redis ``TIME`` either admits a send and moves that
time on, or returns how long to wait. Because the state and the clock are in
Redis, the limits hold for the bot as a whole, however many processes send.

A 429 with ``retry_after`` pauses every process: ``pause`` writes a key with
that lifetime, and the global script admits nothing while it exists.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from redis.asyncio import Redis
from telegram.error import RetryAfter
from telegram.ext import BaseRateLimiter

from journey import keys

logger = logging.getLogger(__name__)

GLOBAL_MESSAGES_PER_SECOND = 30.0
"""The FAQ's "not more than 30 messages per second or so" for the whole bot."""

CHAT_MESSAGES_PER_SECOND = 1.0
"""The FAQ's "avoid sending more than one message per second" in one chat."""

CHAT_BURST = 3
"""Messages one chat may get back to back. The FAQ tolerates short bursts
without a number; the project's emulator allows 5, so 3 stays below it."""

GLOBAL_BURST = 1
"""No burst for the whole bot: an even 30 a second never meets a 429."""

MAX_RETRY_AFTER_SECONDS = 3600.0
"""A ``retry_after`` above an hour is treated as an hour, so one odd response
cannot silence the bot for a day."""

# Generic cell rate algorithm (GCRA): the key holds the theoretical arrival
# time of the next message. KEYS[1] GCRA key, KEYS[2] pause key or absent.
# ARGV[1] interval between messages in ms, ARGV[2] burst in messages,
# ARGV[3] now in ms or "" for Redis TIME. Returns 0 when admitted, else the ms to wait.
_ACQUIRE = """
local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local clock = redis.call('TIME')
  now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
end
if KEYS[2] then
  local paused = redis.call('PTTL', KEYS[2])
  if paused > 0 then return paused end
end
local interval = tonumber(ARGV[1])
local tolerance = interval * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
-- A sender that arrives a little after its slot (timer overshoot, a round
-- trip) keeps up to half an interval of that lateness, so waiting senders
-- add up to the full rate; an idle limiter still starts from about now.
local floor = now - interval / 2
if tat < floor then tat = floor end
local wait = tat - tolerance - now
if wait > 0 then return math.ceil(wait) end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', next_tat),
  'PX', math.ceil(next_tat - now) + 1000)
return 0
"""

# KEYS[1] pause key. ARGV[1] pause in ms. A shorter pause never cuts a longer one.
_PAUSE = """
local remaining = redis.call('PTTL', KEYS[1])
if remaining < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
"""


class SharedTelegramLimits:
    """The global and per-chat send limits of the bot, kept in Redis.

    Args:
        redis: a ``redis.asyncio`` client.
        global_per_second: messages a second for the whole bot.
        chat_per_second: messages a second for one chat.
        chat_burst: messages one chat may get back to back.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        global_per_second: float = GLOBAL_MESSAGES_PER_SECOND,
        chat_per_second: float = CHAT_MESSAGES_PER_SECOND,
        chat_burst: int = CHAT_BURST,
    ) -> None:
        if global_per_second <= 0 or chat_per_second <= 0 or chat_burst < 1:
            raise ValueError(
                "rates must be above 0 and the burst at least 1, got "
                f"global={global_per_second} chat={chat_per_second} "
                f"burst={chat_burst}"
            )
        self._redis = redis
        self._global_interval_ms = 1000.0 / global_per_second
        self._chat_interval_ms = 1000.0 / chat_per_second
        self._chat_burst = chat_burst
        self._acquire = redis.register_script(_ACQUIRE)
        self._pause = redis.register_script(_PAUSE)

    @property
    def global_per_second(self) -> float:
        """Messages a second for the whole bot."""
        return 1000.0 / self._global_interval_ms

    async def acquire(self, chat_id: int | str | None) -> None:
        """Wait until one message may go to ``chat_id`` (None: no chat limit)."""
        if chat_id is not None:
            await self._wait_for(
                [keys.telegram_chat_rate(_chat_key(chat_id))],
                self._chat_interval_ms,
                self._chat_burst,
            )
        await self._wait_for(
            [keys.telegram_global_rate(), keys.telegram_pause()],
            self._global_interval_ms,
            GLOBAL_BURST,
        )

    async def pause(self, retry_after: float) -> None:
        """Stop every send of every process for ``retry_after`` seconds."""
        seconds = min(max(retry_after, 0.0), MAX_RETRY_AFTER_SECONDS)
        await self._pause(keys=[keys.telegram_pause()], args=[int(seconds * 1000)])
        logger.warning("telegram flood control pause seconds=%s", seconds)

    async def _wait_for(
        self, script_keys: list[str], interval: float, burst: int
    ) -> None:
        while True:
            wait_ms = await self._acquire(keys=script_keys, args=[interval, burst, ""])
            if int(wait_ms) <= 0:
                return
            await asyncio.sleep(int(wait_ms) / 1000)


def _chat_key(chat_id: int | str) -> int:
    # A channel may be named by its @username; hash it to a stable number so
    # the limit still applies per chat.
    if isinstance(chat_id, int):
        return chat_id
    try:
        return int(chat_id)
    except ValueError:
        return hash(chat_id) & 0x7FFFFFFF


class SharedRateLimiter(BaseRateLimiter[dict[str, Any]]):
    """A PTB rate limiter that applies ``SharedTelegramLimits`` to every request.

    Requests that name a ``chat_id`` wait for the chat's and the global limit;
    others (getUpdates, setMyCommands, ...) are not limited, because Telegram
    counts messages. A 429 pauses every process for ``retry_after`` and the
    request is sent again, up to ``max_retries`` times.
    """

    def __init__(self, limits: SharedTelegramLimits, *, max_retries: int = 0) -> None:
        self._limits = limits
        self._max_retries = max_retries

    async def initialize(self) -> None:
        """Nothing to set up: the state is in Redis."""

    async def shutdown(self) -> None:
        """Nothing to close: the Redis client belongs to the caller."""

    async def process_request(
        self,
        callback: Callable[
            ..., Coroutine[Any, Any, bool | dict[str, Any] | list[dict[str, Any]]]
        ],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: dict[str, Any] | None,
    ) -> bool | dict[str, Any] | list[dict[str, Any]]:
        """Wait for the limits, send the request and retry it after a 429."""
        chat_id = data.get("chat_id")
        limited = chat_id is not None and endpoint != "getUpdates"
        attempt = 0
        while True:
            if limited:
                await self._limits.acquire(chat_id)
            try:
                return await callback(*args, **kwargs)
            except RetryAfter as error:
                retry_after = error.retry_after
                seconds = (
                    retry_after.total_seconds()
                    if hasattr(retry_after, "total_seconds")
                    else float(retry_after)
                )
                await self._limits.pause(seconds)
                if attempt >= self._max_retries:
                    raise
                attempt += 1
                logger.info(
                    "telegram request retried endpoint=%s attempt=%s", endpoint, attempt
                )
                await asyncio.sleep(seconds)
