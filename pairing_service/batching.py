"""Group commit: callers that need the same round trip at the same time share it.

A ``Coalescer`` collects the items that its callers submit. The first item
starts a flush, which waits for the rest of the current turn of the event
loop, so every caller that submits in that turn shares the flush. The items
submitted while a flush runs go into the next one. An idle caller therefore
waits for no timer, and a busy one shares round trips with the others.

A coalescer with a ``min_batch`` above one also waits, up to
``max_wait_seconds``, until that many items are pending, unless its owner
calls ``hurry`` because no more items will come soon. Its callers then share
larger batches, at the cost of that wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

Flush = Callable[[list[Item]], Awaitable[Sequence[Result | Exception]]]
"""A function that handles a batch and returns one result per item, in order.
A result that is an exception is raised to that item's caller."""


class Coalescer(Generic[Item, Result]):
    """Runs the items submitted close together in one call of ``flush``.

    Args:
        flush: handles one batch (see ``Flush``). An exception that it raises
            is raised to every caller of that batch.
        max_batch: the maximum number of items in one call of ``flush``.
        name: names the flush task, for debugging.
        min_batch: the number of pending items that a flush waits for,
            at most ``max_wait_seconds``, before it starts.
        max_wait_seconds: the maximum time of such a wait, in seconds.
    """

    def __init__(
        self,
        flush: Flush[Item, Result],
        *,
        max_batch: int,
        name: str,
        min_batch: int = 1,
        max_wait_seconds: float = 0.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if not 1 <= min_batch <= max_batch:
            raise ValueError(
                f"min_batch must be from 1 to max_batch ({max_batch}), got {min_batch}"
            )
        if max_wait_seconds < 0:
            raise ValueError(
                f"max_wait_seconds must not be negative, got {max_wait_seconds}"
            )
        self._flush = flush
        self._max_batch = max_batch
        self._name = name
        self._min_batch = min_batch
        self._max_wait = max_wait_seconds
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._task: asyncio.Task[None] | None = None
        self._enough = asyncio.Event()
        """Set when ``min_batch`` items are pending or ``hurry`` was called."""

    async def submit(self, item: Item) -> Result:
        """Add ``item`` to the next batch and return its result.

        Cancelling the caller does not take the item out of a batch that
        already runs.
        """
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self._min_batch:
            self._enough.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)
        return await future

    def hurry(self) -> None:
        """Start the next flush without waiting for ``min_batch`` items."""
        self._enough.set()

    async def drain(self) -> None:
        """Wait until the batches submitted so far are handled."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        try:
            # One turn of the event loop: callers that woke in the same turn
            # as the first one submit before the batch is cut.
            await asyncio.sleep(0)
            while self._pending:
                await self._gather()
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._run_batch(batch)
        finally:
            self._task = None

    async def _gather(self) -> None:
        # Wait for min_batch items, a call of hurry or the end of max_wait.
        if self._max_wait > 0 and len(self._pending) < self._min_batch:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._max_wait):
                    await self._enough.wait()
        self._enough.clear()

    async def _run_batch(
        self, batch: list[tuple[Item, asyncio.Future[Result]]]
    ) -> None:
        try:
            results = await self._flush([item for item, _future in batch])
        except Exception as error:
            for _item, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        except BaseException as error:
            # The flush was cancelled, so its callers are cancelled too. The
            # next submit starts a new flush.
            for _item, future in batch:
                if not future.done():
                    future.cancel()
            for _item, future in self._pending:
                future.cancel()
            self._pending.clear()
            raise error

        if len(results) != len(batch):
            failure = RuntimeError(
                f"flush returned {len(results)} results for {len(batch)} items"
            )
            results = [failure] * len(batch)
        for (_item, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
