"""Telegram's send limits, shared by every bot and worker process through Redis.

Telegram's Bots FAQ (core.telegram.org/bots/faq, "My bot is hitting limits")
recommends about 30 messages a second for the whole bot, about one a second per
chat and at most 20 a minute per group. The whole-bot and per-chat limits are
GCRA (generic cell rate algorithm) counters: one string holds the theoretical
arrival time of the next message. The group limit is a sliding window: a
sorted set of the send times of the last minute. One Lua script that reads
Redis ``TIME`` checks every limit of a message and either admits it, moving
each counter on, or returns how long to wait. Because the state and the clock
are in Redis, the limits hold for the bot as a whole, however many processes
send.

A 429 with ``retry_after`` pauses every process: ``pause`` writes a key with
that lifetime, and the script admits nothing while it exists.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from telegram import Bot
from telegram.error import RetryAfter
from telegram.ext import BaseRateLimiter, ExtBot

from journey import keys

logger = logging.getLogger(__name__)

GLOBAL_MESSAGES_PER_SECOND = 30.0
"""The FAQ's "not more than 30 messages per second or so" for the whole bot."""

CHAT_MESSAGES_PER_SECOND = 1.0
"""The FAQ's "avoid sending more than one message per second" in one chat."""

CHAT_BURST = 3
"""Messages one chat may get back to back. The FAQ tolerates short bursts
without a number; the project's emulator allows 5, so 3 stays below it."""

GROUP_MAX_MESSAGES = 20
GROUP_WINDOW_SECONDS = 60.0
"""The FAQ's "not able to send more than 20 messages per minute to the same
group"; a group also keeps the per-chat limit."""

GLOBAL_BURST = 1
"""No burst for the whole bot: an even 30 a second never meets a 429."""

MAX_RETRY_AFTER_SECONDS = 3600.0
"""A ``retry_after`` above an hour is treated as an hour, so one odd response
cannot silence the bot for a day."""

OUTAGE_WARNING_INTERVAL_SECONDS = 60.0
"""While Redis is down every send would log the same warning; one a minute
is enough to show the outage."""

LIMITED_METHODS = frozenset(
    {
        "sendMessage",
        "sendPhoto",
        "sendDocument",
        "sendAudio",
        "sendVideo",
        "sendAnimation",
        "sendVoice",
        "sendVideoNote",
        "sendMediaGroup",
        "sendSticker",
        "sendLocation",
        "sendContact",
        "sendPoll",
        "copyMessage",
        "copyMessages",
        "forwardMessage",
        "forwardMessages",
        "editMessageText",
        "editMessageCaption",
        "editMessageMedia",
        "editMessageReplyMarkup",
        "pinChatMessage",
        "unpinChatMessage",
        "createForumTopic",
        "editForumTopic",
        "closeForumTopic",
        "reopenForumTopic",
    }
)
"""Bot API methods that count as a message in their chat. Telegram counts
messages, so reads (getChat, getChatMember), chat actions and
answerCallbackQuery are not limited here.

NOTE: the FAQ names only messages. Edits, pins and forum topic changes are
counted too because they show up in the chat, which is an assumption on the
safe side."""

ACQUIRED = "acquired"
"""``rate_limit_args`` key: True when the caller already waited for the limits
with ``SharedTelegramLimits.acquire``, so the first attempt goes out at once."""

MAX_RETRIES = "max_retries"
"""``rate_limit_args`` key: retries after a 429 for this one request."""

# Every key is in the {telegram} slot, so one script checks every limit.
# KEYS[1] pause, KEYS[2] global GCRA, KEYS[3] chat GCRA (optional), KEYS[4]
# group window (optional). ARGV[1] now in ms or "" for Redis TIME, ARGV[2]
# global interval in ms, ARGV[3] chat interval in ms, ARGV[4] chat burst,
# ARGV[5] group window in ms, ARGV[6] group maximum, ARGV[7] a unique member
# for the group window. Returns 0 when admitted, else the ms to wait; a
# message that must wait changes no counter.
_ACQUIRE = """
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local clock = redis.call('TIME')
  now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
end
local paused = redis.call('PTTL', KEYS[1])
if paused > 0 then return paused end

local function gcra(key, interval, burst, catch_up)
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now - catch_up then tat = now - catch_up end
  return tat - interval * (burst - 1) - now, tat
end

-- A global sender that arrives a little after its slot (timer overshoot, a
-- round trip) keeps up to half an interval of that lateness, so waiting
-- senders add up to the full rate. A chat keeps none: its burst covers that.
local global_interval = tonumber(ARGV[2])
local wait, global_tat = gcra(KEYS[2], global_interval, 1, global_interval / 2)
local chat_interval = tonumber(ARGV[3])
local chat_tat
if KEYS[3] then
  local chat_wait
  chat_wait, chat_tat = gcra(KEYS[3], chat_interval, tonumber(ARGV[4]), 0)
  if chat_wait > wait then wait = chat_wait end
end
local window = tonumber(ARGV[5])
if KEYS[4] then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - window)
  if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[6]) then
    local oldest = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
    local group_wait = tonumber(oldest[2]) + window - now
    if group_wait > wait then wait = group_wait end
  end
end
if wait > 0 then return math.ceil(wait) end

local next_tat = global_tat + global_interval
redis.call('SET', KEYS[2], string.format('%.3f', next_tat),
  'PX', math.ceil(next_tat - now) + 1000)
if KEYS[3] then
  next_tat = chat_tat + chat_interval
  redis.call('SET', KEYS[3], string.format('%.3f', next_tat),
    'PX', math.ceil(next_tat - now) + 1000)
end
if KEYS[4] then
  redis.call('ZADD', KEYS[4], now, ARGV[7])
  redis.call('PEXPIRE', KEYS[4], math.ceil(window))
end
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


@dataclass(frozen=True, slots=True)
class SendLimits:
    """The rates at which the bot sends, as the shared limiter applies them.

    Raises:
        ValueError: a rate or window is not above 0, or a count is below 1.
    """

    global_per_second: float = GLOBAL_MESSAGES_PER_SECOND
    chat_per_second: float = CHAT_MESSAGES_PER_SECOND
    chat_burst: int = CHAT_BURST
    group_max_messages: int = GROUP_MAX_MESSAGES
    group_window_seconds: float = GROUP_WINDOW_SECONDS

    def __post_init__(self) -> None:
        rates = {
            "global_per_second": self.global_per_second,
            "chat_per_second": self.chat_per_second,
            "group_window_seconds": self.group_window_seconds,
        }
        counts = {
            "chat_burst": self.chat_burst,
            "group_max_messages": self.group_max_messages,
        }
        for name, rate in rates.items():
            if not rate > 0:
                raise ValueError(f"{name} must be above 0, got {rate}")
        for name, count in counts.items():
            if count < 1:
                raise ValueError(f"{name} must be at least 1, got {count}")


class SharedTelegramLimits:
    """The global, per-chat and per-group send limits of the bot, kept in Redis.

    Redis never stores a chat id: each chat's keys are named by an HMAC-SHA256
    of the id, keyed with the bot token, which every process that sends as
    the bot has.

    Args:
        redis: a ``redis.asyncio`` client.
        bot_token: the token of the bot whose messages are counted.
        limits: the rates to apply; Telegram's by default.
        clock: Unix time in seconds for the scripts; None uses Redis ``TIME``,
            the one clock that every process shares.
    """

    def __init__(
        self,
        redis: Redis,
        bot_token: str,
        limits: SendLimits | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._limits = limits if limits is not None else SendLimits()
        self._chat_secret = bot_token.encode()
        self._clock = clock
        self._acquire = redis.register_script(_ACQUIRE)
        self._pause = redis.register_script(_PAUSE)

    @property
    def limits(self) -> SendLimits:
        """The rates this limiter applies."""
        return self._limits

    @property
    def global_per_second(self) -> float:
        """Messages a second for the whole bot."""
        return self._limits.global_per_second

    async def acquire(self, chat_id: int | str | None) -> None:
        """Wait until one message may go to ``chat_id`` (None: no chat limit)."""
        while True:
            wait = await self.try_acquire(chat_id)
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    async def try_acquire(self, chat_id: int | str | None) -> float:
        """Admit one message to ``chat_id`` now if every limit allows it.

        Returns:
            0 when the message was admitted and counted, else the seconds to
            wait before trying again; nothing is counted then.
        """
        limits = self._limits
        script_keys = [keys.telegram_pause(), keys.telegram_global_rate()]
        if chat_id is not None:
            chat = self.chat_digest(chat_id)
            script_keys.append(keys.telegram_chat_rate(chat))
            if is_group(chat_id):
                script_keys.append(keys.telegram_group_window(chat))
        now = "" if self._clock is None else f"{self._clock() * 1000:.3f}"
        wait_ms = await self._acquire(
            keys=script_keys,
            args=[
                now,
                1000.0 / limits.global_per_second,
                1000.0 / limits.chat_per_second,
                limits.chat_burst,
                limits.group_window_seconds * 1000.0,
                limits.group_max_messages,
                secrets.token_hex(8),
            ],
        )
        return max(int(wait_ms), 0) / 1000

    def chat_digest(self, chat_id: int | str) -> str:
        """Return the name of ``chat_id`` in Redis keys: 32 hex digits of its HMAC."""
        # "-100123" and -100123 name the same chat, so both get the same digest.
        name = str(chat_id)
        if isinstance(chat_id, str):
            try:
                name = str(int(chat_id))
            except ValueError:
                name = chat_id.lower()
        digest = hmac.new(self._chat_secret, name.encode(), hashlib.sha256)
        return digest.hexdigest()[:32]

    async def pause(self, retry_after: float) -> None:
        """Stop every send of every process for ``retry_after`` seconds."""
        seconds = min(retry_after, MAX_RETRY_AFTER_SECONDS)
        milliseconds = math.ceil(seconds * 1000)
        if milliseconds <= 0:
            # Redis rejects a zero expiry, and a zero pause stops nothing.
            return
        await self._pause(keys=[keys.telegram_pause()], args=[milliseconds])
        logger.warning("telegram flood control pause seconds=%s", seconds)


def is_group(chat_id: int | str) -> bool:
    """Tell whether ``chat_id`` names a group, supergroup or channel.

    Telegram gives users positive ids and groups negative ones; a channel may
    also be named by its ``@username``.
    """
    if isinstance(chat_id, int):
        return chat_id < 0
    return chat_id.startswith(("@", "-"))


def retry_after_seconds(error: RetryAfter) -> float:
    """Return the ``retry_after`` of a 429 in seconds (PTB gives int or timedelta)."""
    retry_after: int | timedelta = error.retry_after
    if isinstance(retry_after, timedelta):
        return retry_after.total_seconds()
    return float(retry_after)


def preacquired_send_options(bot: Bot) -> dict[str, Any]:
    """Return the keyword arguments for a send whose limits the caller acquired.

    A caller that waits for ``SharedTelegramLimits.acquire`` itself passes
    these to the bot method, so a bot with a ``SharedRateLimiter`` does not
    count the message twice and leaves a 429 to the caller. Other bots get
    no extra arguments, because PTB rejects ``rate_limit_args`` without a
    rate limiter.
    """
    if isinstance(bot, ExtBot) and isinstance(bot.rate_limiter, SharedRateLimiter):
        return {"rate_limit_args": {ACQUIRED: True, MAX_RETRIES: 0}}
    return {}


class SharedRateLimiter(BaseRateLimiter[dict[str, Any]]):
    """A PTB rate limiter that applies ``SharedTelegramLimits`` to every message.

    Requests of ``LIMITED_METHODS`` that name a ``chat_id`` wait for the
    chat's, the group's and the global limit; other requests go out at once.
    A 429 pauses every process for ``retry_after`` and the request is sent
    again, up to ``max_retries`` times; after that the ``RetryAfter`` is
    raised. ``rate_limit_args`` may carry ``ACQUIRED`` and ``MAX_RETRIES``.

    While Redis is unavailable, messages go out without the shared limits, so
    a client still gets the bot's "try again later". Telegram's own 429 then
    paces the bot, and this process waits out each ``retry_after`` alone.

    Args:
        limits: the shared limits to wait for.
        max_retries: retries after a 429, unless a request sets its own.
        clock: monotonic seconds that space the outage warnings.
    """

    def __init__(
        self,
        limits: SharedTelegramLimits,
        *,
        max_retries: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = limits
        self._max_retries = max_retries
        self._clock = clock
        self._warned_at: float | None = None

    @property
    def limits(self) -> SharedTelegramLimits:
        """The shared limits this rate limiter waits for."""
        return self._limits

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
        options = rate_limit_args or {}
        # Only a request of a limited method that names a chat waits.
        limited_chat_id: int | str | None = (
            data.get("chat_id") if endpoint in LIMITED_METHODS else None
        )
        limited = limited_chat_id is not None
        acquired = bool(options.get(ACQUIRED, False))
        max_retries = int(options.get(MAX_RETRIES, self._max_retries))
        attempt = 0
        while True:
            if limited_chat_id is not None and not acquired:
                await self._acquire(limited_chat_id, endpoint)
            acquired = False
            try:
                return await callback(*args, **kwargs)
            except RetryAfter as error:
                seconds = retry_after_seconds(error)
                paused = await self._pause(seconds, endpoint)
                if attempt >= max_retries:
                    raise
                attempt += 1
                logger.info(
                    "telegram request retried endpoint=%s attempt=%s retry_after=%s",
                    endpoint,
                    attempt,
                    seconds,
                )
                if not (limited and paused):
                    # A limited request waits out a shared pause in acquire.
                    await asyncio.sleep(seconds)

    async def _acquire(self, chat_id: int | str, endpoint: str) -> None:
        try:
            await self._limits.acquire(chat_id)
        except RedisError as error:
            self._warn_outage("acquire", endpoint, error)

    async def _pause(self, seconds: float, endpoint: str) -> bool:
        try:
            await self._limits.pause(seconds)
        except RedisError as error:
            self._warn_outage("pause", endpoint, error)
            return False
        return True

    def _warn_outage(self, step: str, endpoint: str, error: RedisError) -> None:
        now = self._clock()
        if (
            self._warned_at is not None
            and now - self._warned_at < OUTAGE_WARNING_INTERVAL_SECONDS
        ):
            return
        self._warned_at = now
        logger.warning(
            "telegram limits unavailable, sending without them step=%s "
            "endpoint=%s error=%s",
            step,
            endpoint,
            type(error).__name__,
        )
