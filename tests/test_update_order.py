"""Updates of one chat run in order; updates of other chats do not wait.

The processor gets real PTB ``Update`` objects and coroutines that wait on
events the test controls, so the order is observed without any sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

from telegram import Chat, Message, Update

from bot.update_order import ChatOrderedUpdateProcessor

CONCURRENCY = 8


def update_for(update_id: int, chat_id: int) -> Update:
    chat = Chat(chat_id, Chat.PRIVATE)
    message = Message(update_id, datetime(2026, 1, 1, tzinfo=UTC), chat, text="x")
    return Update(update_id, message=message)


class Recorder:
    """Coroutines that log their start and end, and may wait for a release."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.started: dict[str, asyncio.Event] = {}
        self.release: dict[str, asyncio.Event] = {}

    def job(self, name: str, *, hold: bool = False) -> Coroutine[Any, Any, None]:
        self.started[name] = asyncio.Event()
        self.release[name] = asyncio.Event()
        if not hold:
            self.release[name].set()

        async def run() -> None:
            self.log.append(f"start {name}")
            self.started[name].set()
            await self.release[name].wait()
            self.log.append(f"end {name}")

        return run()


async def test_same_chat_waits_for_earlier() -> None:
    processor = ChatOrderedUpdateProcessor(CONCURRENCY)
    recorder = Recorder()
    first = asyncio.create_task(
        processor.process_update(update_for(1, 10), recorder.job("a1", hold=True))
    )
    await recorder.started["a1"].wait()
    second = asyncio.create_task(
        processor.process_update(update_for(2, 10), recorder.job("a2"))
    )
    other_chat = asyncio.create_task(
        processor.process_update(update_for(3, 20), recorder.job("b1"))
    )

    await other_chat
    assert "end b1" in recorder.log
    assert "start a2" not in recorder.log

    recorder.release["a1"].set()
    await asyncio.gather(first, second)
    assert recorder.log.index("end a1") < recorder.log.index("start a2")


async def test_chat_updates_keep_arrival_order() -> None:
    processor = ChatOrderedUpdateProcessor(CONCURRENCY)
    recorder = Recorder()
    head = asyncio.create_task(
        processor.process_update(update_for(1, 10), recorder.job("u1", hold=True))
    )
    await recorder.started["u1"].wait()
    rest = [
        asyncio.create_task(
            processor.process_update(update_for(n, 10), recorder.job(f"u{n}"))
        )
        for n in range(2, 6)
    ]
    recorder.release["u1"].set()
    await asyncio.gather(head, *rest)

    starts = [entry for entry in recorder.log if entry.startswith("start")]
    assert starts == [f"start u{n}" for n in range(1, 6)]


async def test_idle_processor_holds_no_locks() -> None:
    processor = ChatOrderedUpdateProcessor(CONCURRENCY)
    recorder = Recorder()
    await asyncio.gather(
        *(
            processor.process_update(update_for(n, n % 3), recorder.job(f"j{n}"))
            for n in range(9)
        )
    )
    assert processor.chats_in_progress == 0
    assert len([entry for entry in recorder.log if entry.startswith("end")]) == 9
