"""The queue through which every message to the support group goes, in order.

Telegram accepts at most 20 messages a minute to one group (Bots FAQ). One
worker task runs the queued jobs one after another, and each job calls
``acquire`` before every Bot API call that posts in the group, which waits
until the call fits in a sliding window of ``max_messages`` per
``window_seconds``. A sliding window, unlike a token bucket, never lets more
than the limit through in any window, bursts included.

The queue lives in process memory. That is enough because only one process
receives a bot's updates (getUpdates or one webhook), and that process makes
all relay calls, in the order the updates came.

NOTE: a second bot process, such as a reminder worker that also runs the
takeover timeouts, keeps its own window, so the limit then applies per process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

Job = Callable[[], Awaitable[Any]]


class SlidingWindow:
    """At most ``max_events`` events in any ``window_seconds`` of ``clock`` time."""

    def __init__(
        self,
        max_events: int,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_events < 1 or window_seconds <= 0:
            raise ValueError(
                f"a window needs at least 1 event and a positive length, got "
                f"max_events={max_events} window_seconds={window_seconds}"
            )
        self._max_events = max_events
        self._window = window_seconds
        self._clock = clock
        self._times: collections.deque[float] = collections.deque()

    def delay(self) -> float:
        """Return the seconds until one more event fits; 0 when it fits now."""
        now = self._clock()
        while self._times and self._times[0] <= now - self._window:
            self._times.popleft()
        if len(self._times) < self._max_events:
            return 0.0
        return self._times[0] + self._window - now

    def record(self) -> None:
        """Count one event at the current time."""
        self._times.append(self._clock())


class GroupSendQueue:
    """Runs jobs that post in one group in order, within the group's limit.

    Args:
        max_messages: messages allowed in any window.
        window_seconds: length of the window.
        clock: monotonic time source of the window.
    """

    def __init__(
        self,
        max_messages: int,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = SlidingWindow(max_messages, window_seconds, clock)
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

    async def acquire(self) -> None:
        """Wait until one more message fits in the group's window, and count it.

        Only jobs call this, and one job runs at a time, so no two callers wait
        for the same slot.
        """
        delay = self._window.delay()
        while delay > 0:
            await asyncio.sleep(delay)
            delay = self._window.delay()
        self._window.record()

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
