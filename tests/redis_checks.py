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
        self.from_scripts: list[bool] = []
        self._added = asyncio.Event()

    def add(self, line: str, *, from_script: bool = False) -> None:
        """Record one command line; ``from_script`` for one a Lua script ran."""
        self.lines.append(line)
        self.from_scripts.append(from_script)
        self._added.set()

    def client_commands_between(self, start: str, end: str) -> list[str]:
        """Return the commands clients sent after the line with ``start`` and
        before the line with ``end``, without those a Lua script ran."""
        first = next(i for i, line in enumerate(self.lines) if start in line)
        last = next(i for i, line in enumerate(self.lines) if end in line)
        return [
            line
            for line, from_script in zip(
                self.lines[first + 1 : last],
                self.from_scripts[first + 1 : last],
                strict=True,
            )
            if not from_script
        ]

    async def wait_for(self, text: str, *, after: int = 0) -> None:
        """Wait until a line recorded at index ``after`` or later contains ``text``.

        A unique command sent last (such as an ECHO of a random token) marks
        the point where every earlier command has been recorded.
        """
        while not any(text in line for line in self.lines[after:]):
            after = len(self.lines)
            self._added.clear()
            await self._added.wait()

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
                recorder.add(
                    str(entry.get("command", "")),
                    from_script=entry.get("client_type") == "lua",
                )

    task = asyncio.create_task(record())
    await started.wait()
    try:
        yield recorder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await client.aclose()
