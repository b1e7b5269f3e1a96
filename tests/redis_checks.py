"""Checks on what a journey leaves behind in Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from redis.asyncio import Redis


async def keys_without_ttl(redis: Redis) -> list[str]:
    """Return every key that has no TTL (``TTL`` answers -1)."""
    missing = []
    async for key in redis.scan_iter(count=1000):
        if await redis.ttl(key) == -1:
            missing.append(key)
    return missing


async def dump_values(redis: Redis) -> str:
    """Return every key and value in the database as one string, for searching."""
    parts: list[str] = []
    async for key in redis.scan_iter(count=1000):
        kind = await redis.type(key)
        parts.append(key)
        if kind == "string":
            parts.append(str(await redis.get(key)))
        elif kind == "hash":
            parts.append(str(await redis.hgetall(key)))
        elif kind == "list":
            parts.append(str(await redis.lrange(key, 0, -1)))
        elif kind == "set":
            parts.append(str(await redis.smembers(key)))
        elif kind == "zset":
            parts.append(str(await redis.zrange(key, 0, -1, withscores=True)))
        elif kind == "stream":
            parts.append(str(await redis.xrange(key)))
    return "\n".join(parts)


class CommandRecorder:
    """Every command the Redis server executes, as MONITOR reports it."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def text(self) -> str:
        """Return all recorded command lines as one string."""
        return "\n".join(self.lines)


@contextlib.asynccontextmanager
async def monitor_commands(url: str) -> AsyncIterator[CommandRecorder]:
    """Record every command the server runs while the block is open."""
    recorder = CommandRecorder()
    client = Redis.from_url(url, decode_responses=False)
    started = asyncio.Event()

    async def record() -> None:
        async with client.monitor() as monitor:
            started.set()
            async for entry in monitor.listen():
                recorder.lines.append(str(entry.get("command", "")))

    task = asyncio.create_task(record())
    await started.wait()
    try:
        yield recorder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await client.aclose()
