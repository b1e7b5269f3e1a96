"""Group commit: callers that need the same round trip at the same time share it.

A ``Coalescer`` collects the items that its callers submit. The first item
starts a flush, which waits for the rest of the current turn of the event
loop, so every caller that submits in that turn shares the flush. The items
submitted while a flush runs go into the next one. An idle caller therefore
waits for no timer, and a busy one shares round trips with the others.
"""

from __future__ import annotations

import asyncio
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
    """

    def __init__(
        self, flush: Flush[Item, Result], *, max_batch: int, name: str
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._flush = flush
        self._max_batch = max_batch
        self._name = name
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        """Add ``item`` to the next batch and return its result.

        Cancelling the caller does not take the item out of a batch that
        already runs.
        """
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)
        return await future

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
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._run_batch(batch)
        finally:
            self._task = None

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
