"""Handle the updates of one chat one after another, in the order received.

PTB's default processor runs up to ``concurrent_updates`` updates at once,
with no regard for their chat, so a client's second tap could be handled
before the first. ``ChatOrderedUpdateProcessor`` keeps the concurrency across
chats but queues the updates of one chat behind each other. ``asyncio.Lock``
wakes its waiters in the order they started waiting, and PTB takes updates
from its queue in order, so one chat's updates run in the order this process
received them.

NOTE: the order is kept inside one process only. With several webhook replicas, two
updates of one chat that reach two replicas at once may run in either
order. Correctness does not depend on it: every transition is a
compare-and-set pinned to the step the client saw, so a late update is
answered as an old button and never moves a case twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from telegram import Update
from telegram.ext import BaseUpdateProcessor


class ChatOrderedUpdateProcessor(BaseUpdateProcessor):
    """Run updates of different chats concurrently and of one chat in order.

    An update that waits for its chat takes one of PTB's concurrency slots
    meanwhile. So a burst of updates in one chat can slow the other chats
    down until that chat's queue drains.

    Args:
        max_concurrent_updates: updates handled at once over all chats.
    """

    def __init__(self, max_concurrent_updates: int) -> None:
        super().__init__(max_concurrent_updates)
        self._locks: dict[int, asyncio.Lock] = {}
        self._waiting: dict[int, int] = {}
        self.turn_requested = asyncio.Event()
        """Set whenever a turn of any chat is requested. An observer clears it
        and waits for the next request."""

    @property
    def chats_in_progress(self) -> int:
        """Chats with an update running or waiting; zero when idle."""
        return len(self._locks)

    async def do_process_update(
        self, update: object, coroutine: Awaitable[Any]
    ) -> None:
        """Await ``coroutine`` once no earlier update of the same chat runs."""
        chat_id = _chat_id(update)
        if chat_id is None:
            await coroutine
            return
        async with self.chat_turn(chat_id):
            await coroutine

    @contextlib.asynccontextmanager
    async def chat_turn(self, chat_id: int) -> AsyncIterator[None]:
        """Wait until no earlier update or turn of ``chat_id`` runs, then hold it.

        The event consumer sends its messages inside a turn, so a message of
        an event waits for the reply of an update that is being handled.
        """
        lock = self._locks.setdefault(chat_id, asyncio.Lock())
        self._waiting[chat_id] = self._waiting.get(chat_id, 0) + 1
        self.turn_requested.set()
        try:
            async with lock:
                yield
        finally:
            # The last turn of a chat removes its lock, so the table only
            # holds chats with work at hand.
            self._waiting[chat_id] -= 1
            if self._waiting[chat_id] == 0:
                del self._waiting[chat_id]
                del self._locks[chat_id]

    def turns_of(self, chat_id: int) -> int:
        """Return the number of turns of ``chat_id`` that run or wait."""
        return self._waiting.get(chat_id, 0)

    async def initialize(self) -> None:
        """Nothing to allocate: the locks are made on demand."""

    async def shutdown(self) -> None:
        """Nothing to free: a lock goes away with the chat's last update."""


def _chat_id(update: object) -> int | None:
    if not isinstance(update, Update):
        return None
    chat = update.effective_chat
    return chat.id if chat is not None else None
