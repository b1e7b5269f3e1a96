"""Token buckets that reject calls with 429, as Telegram's flood control does."""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from . import limits
from .errors import too_many_requests


@dataclass(frozen=True)
class RateLimits:
    """Rates and burst sizes of the emulator's flood control.

    Defaults follow the Telegram Bots FAQ (core.telegram.org/bots/faq): about 30
    messages per second overall, about 1 per second in a private chat with short
    bursts tolerated, and 20 per minute in a group. ``enabled=False`` switches
    flood control off.
    """

    enabled: bool = True
    global_per_second: float = limits.GLOBAL_MESSAGES_PER_SECOND
    global_burst: int = limits.GLOBAL_BURST
    private_chat_per_second: float = limits.PRIVATE_CHAT_MESSAGES_PER_SECOND
    private_chat_burst: int = limits.PRIVATE_CHAT_BURST
    group_per_minute: float = limits.GROUP_MESSAGES_PER_MINUTE
    group_burst: int = limits.GROUP_BURST

    @classmethod
    def disabled(cls) -> "RateLimits":
        """Build limits that never reject a call with 429."""
        return cls(enabled=False)


@dataclass
class TokenBucket:
    """A bucket of ``capacity`` tokens that refills at ``rate`` tokens per second."""

    rate: float
    capacity: float
    tokens: float
    updated_at: float

    def refill(self, now: float) -> None:
        """Add the tokens earned since the last refill, up to the capacity."""
        elapsed = max(0.0, now - self.updated_at)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.updated_at = now

    def seconds_until_token(self) -> float:
        """Return how long until one whole token is available; 0 if one is now."""
        if self.tokens >= 1.0:
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass
class RateLimiter:
    """Flood control for messages sent by the bot, per emulator instance."""

    limits: RateLimits
    clock: Callable[[], float]
    rejected: int = 0
    _global: TokenBucket | None = None
    _chats: dict[int, TokenBucket] = field(default_factory=dict)

    def reset(self) -> None:
        """Refill every bucket and forget the count of rejections."""
        self.rejected = 0
        self._global = None
        self._chats.clear()

    def acquire(self, chat_id: int, is_private: bool) -> None:
        """Take one message token for ``chat_id`` from the chat and global buckets.

        Tokens are taken only when every bucket has one, so a rejected call costs
        nothing.

        Raises:
            BotApiError: 429 with ``retry_after`` in whole seconds, rounded up.
        """
        if not self.limits.enabled:
            return

        now = self.clock()
        buckets = [
            self._global_bucket(now),
            self._chat_bucket(chat_id, is_private, now),
        ]
        for bucket in buckets:
            bucket.refill(now)
        wait = max(bucket.seconds_until_token() for bucket in buckets)
        if wait > 0:
            self.rejected += 1
            raise too_many_requests(max(1, math.ceil(wait)))
        for bucket in buckets:
            bucket.tokens -= 1.0

    def _global_bucket(self, now: float) -> TokenBucket:
        if self._global is None:
            capacity = float(self.limits.global_burst)
            self._global = TokenBucket(
                self.limits.global_per_second, capacity, capacity, now
            )
        return self._global

    def _chat_bucket(self, chat_id: int, is_private: bool, now: float) -> TokenBucket:
        bucket = self._chats.get(chat_id)
        if bucket is None:
            if is_private:
                rate = self.limits.private_chat_per_second
                capacity = float(self.limits.private_chat_burst)
            else:
                rate = self.limits.group_per_minute / 60.0
                capacity = float(self.limits.group_burst)
            bucket = TokenBucket(rate, capacity, capacity, now)
            self._chats[chat_id] = bucket
        return bucket
