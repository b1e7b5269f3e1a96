"""The queue through which every message to the support group goes, in order.

One worker task runs the queued jobs one after another, so the calls that
post in the group keep the order of the updates that caused them. Telegram's
limit of 20 messages a minute to one group (Bots FAQ) is not kept here: the
bot's rate limiter (``bot.telegram_limits.SharedRateLimiter``) counts every
group message in Redis, for all bot processes together.

The queue lives in process memory, so the order is kept within one process only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

Job = Callable[[], Awaitable[Any]]


class GroupSendQueue:
    """Runs jobs that post in one group one after another, in order."""

    def __init__(self) -> None:
        self._jobs: asyncio.Queue[tuple[Job, asyncio.Future[Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the worker task."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="gv-support-queue")

    async def stop(self) -> None:
        """Stop the worker; jobs still queued are cancelled."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._jobs.empty():
            _, future = self._jobs.get_nowait()
            future.cancel()

    def submit(self, job: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        """Queue ``job`` and return a future of its result or its exception."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put_nowait((job, future))
        return future

    def post(self, job: Job, description: str) -> None:
        """Queue ``job`` without waiting for it; a failure is logged."""
        future = self.submit(job)
        future.add_done_callback(lambda done: _log_failure(done, description))

    async def _run(self) -> None:
        while True:
            job, future = await self._jobs.get()
            if future.cancelled():
                continue
            try:
                result = await job()
            except asyncio.CancelledError:
                future.cancel()
                raise
            except Exception as error:
                # The submitter gets the error through the future.
                future.set_exception(error)
            else:
                future.set_result(result)


def _log_failure(future: asyncio.Future[Any], description: str) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None:
        logger.warning(
            "support group job failed job=%s error=%s",
            description,
            type(error).__name__,
        )
