"""The coalescer that lets callers share one round trip."""

from __future__ import annotations

import asyncio

import pytest

from pairing_service.batching import Coalescer


class RecordingFlush:
    """A flush that records each batch and returns every item doubled."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        return [item * 2 for item in items]


async def test_same_turn_shares_one_flush() -> None:
    flush = RecordingFlush()
    coalescer = Coalescer(flush, max_batch=10, name="test")
    results = await asyncio.gather(*(coalescer.submit(item) for item in (1, 2, 3)))
    assert results == [2, 4, 6]
    assert flush.batches == [[1, 2, 3]]


async def test_max_batch_splits_flushes() -> None:
    flush = RecordingFlush()
    coalescer = Coalescer(flush, max_batch=2, name="test")
    results = await asyncio.gather(*(coalescer.submit(item) for item in (1, 2, 3)))
    assert results == [2, 4, 6]
    assert flush.batches == [[1, 2], [3]]


async def test_min_batch_waits_for_enough_items() -> None:
    flush = RecordingFlush()
    coalescer = Coalescer(
        flush, max_batch=10, name="test", min_batch=3, max_wait_seconds=30.0
    )
    first = asyncio.create_task(coalescer.submit(1))
    second = asyncio.create_task(coalescer.submit(2))
    # Several turns of the event loop pass without a flush.
    for _turn in range(5):
        await asyncio.sleep(0)
    assert flush.batches == []
    third = await coalescer.submit(3)
    assert [await first, await second, third] == [2, 4, 6]
    assert flush.batches == [[1, 2, 3]]


async def test_hurry_flushes_fewer_items() -> None:
    flush = RecordingFlush()
    coalescer = Coalescer(
        flush, max_batch=10, name="test", min_batch=3, max_wait_seconds=30.0
    )
    waiting = asyncio.create_task(coalescer.submit(1))
    for _turn in range(5):
        await asyncio.sleep(0)
    assert flush.batches == []
    coalescer.hurry()
    assert await asyncio.wait_for(waiting, 5) == 2
    assert flush.batches == [[1]]


async def test_max_wait_ends_the_wait() -> None:
    flush = RecordingFlush()
    coalescer = Coalescer(
        flush, max_batch=10, name="test", min_batch=3, max_wait_seconds=0.05
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(coalescer.submit(1), 5) == 2
    assert loop.time() - started >= 0.04
    assert flush.batches == [[1]]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_batch": 0}, "max_batch"),
        ({"max_batch": 2, "min_batch": 3}, "min_batch"),
        ({"max_batch": 2, "min_batch": 0}, "min_batch"),
        ({"max_batch": 2, "max_wait_seconds": -1.0}, "max_wait_seconds"),
    ],
)
def test_invalid_options_name_the_field(options: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Coalescer(RecordingFlush(), name="test", **options)  # type: ignore[arg-type]
