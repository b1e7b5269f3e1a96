"""Fixed-window request counters in Redis, shared by every service process."""

from __future__ import annotations

import hashlib

from redis.asyncio import Redis

from journey import keys


def subject_hash(subject: str) -> str:
    """Return a short one-way form of a subject such as a client address.

    Counters need only tell subjects apart; an IP address is personal data, so
    it never becomes part of a key.
    """
    return hashlib.sha256(subject.encode("utf-8")).hexdigest()[:24]


async def allow(
    redis: Redis, scope: str, subject: str, *, limit: int, window_seconds: int
) -> bool:
    """Count one request of ``subject`` and tell whether it is within ``limit``.

    The window starts with the subject's first request and lasts
    ``window_seconds``; the counter key expires with it.
    """
    key = keys.rate_limit(scope, subject_hash(subject))
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, window_seconds, nx=True)
        count, _ = await pipe.execute()
    return int(count) <= limit
