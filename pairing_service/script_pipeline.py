"""Script calls of concurrent requests, sent to one Redis server together.

Under load many requests reach their script call in the same turn of the event
loop. Each call on its own takes a connection from the pool, writes, waits for
its reply under the socket timeout and gives the connection back. A
``ScriptPipeline`` sends the calls of one turn as one pipeline of ``EVALSHA``
commands instead: one connection, one write, one wait, the same replies. Every
script still runs on its own and atomically; the pipeline is no transaction,
so one call's error is only that call's.

An idle service sends a lone call as it is, without a pipeline; redis-py then
loads a script that the server does not know. In a pipeline, the calls that
meet ``NOSCRIPT`` (after a restart or ``SCRIPT FLUSH``) are sent again as
``EVAL`` with the script's source, which also caches the script for the next
``EVALSHA``. A ``SCRIPT LOAD`` before the retry would leave a window in which
another flush fails the retry, and under load that window spans many turns of
the event loop.

Only for a single Redis server: on Redis Cluster the calls of one pipeline go
to the nodes of their keys, which redis-py's cluster pipeline does in its own
way, so the service calls scripts directly there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from pairing_service.batching import Coalescer

MAX_PIPELINE_CALLS = 64
"""Maximum number of script calls in one pipeline. It is above the usual number
of requests in flight, and a longer queue goes out in several pipelines."""

ScriptCall = tuple[AsyncScript, Sequence[str], Sequence[Any]]
"""A script with the keys and arguments of one call."""


class ScriptPipeline:
    """Runs the script calls made in one turn of the event loop in one pipeline.

    Args:
        redis: a client of a single Redis server.
        max_calls: the maximum number of calls in one pipeline.
    """

    def __init__(self, redis: Redis, *, max_calls: int = MAX_PIPELINE_CALLS) -> None:
        self._redis = redis
        self._coalescer: Coalescer[ScriptCall, Any] = Coalescer(
            self._flush, max_batch=max_calls, name="script-pipeline"
        )

    async def call(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """Run ``script`` with ``keys`` and ``args`` and return its reply.

        Raises:
            redis.exceptions.ResponseError: the script failed.
            redis.exceptions.ConnectionError, TimeoutError: Redis is
                unreachable. Every call of the same pipeline gets the error.
        """
        return await self._coalescer.submit((script, keys, args))

    async def _flush(self, calls: list[ScriptCall]) -> list[Any]:
        if len(calls) == 1:
            # An error of the lone call is raised to its caller as it is.
            script, keys, args = calls[0]
            return [await script(keys=keys, args=args)]

        return await run_in_pipeline(self._redis, calls)


async def run_in_pipeline(redis: Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    """Run every call in one pipeline of ``EVALSHA`` and return their replies.

    A reply is the script's result or the ``ResponseError`` of that call. The
    calls that meet ``NOSCRIPT`` go out once more as ``EVAL`` with the source.

    Raises:
        redis.exceptions.ConnectionError, TimeoutError: Redis is unreachable.
    """
    replies = await _send(redis, calls, with_source=False)
    missing = [
        index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)
    ]
    if missing:
        again = await _send(
            redis, [calls[index] for index in missing], with_source=True
        )
        for index, reply in zip(missing, again, strict=True):
            replies[index] = reply
    return replies


async def _send(
    redis: Redis, calls: Sequence[ScriptCall], *, with_source: bool
) -> list[Any]:
    pipe = redis.pipeline(transaction=False)
    for script, keys, args in calls:
        if with_source:
            pipe.execute_command("EVAL", script.script, len(keys), *keys, *args)
        else:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    replies: list[Any] = await pipe.execute(raise_on_error=False)
    return replies
