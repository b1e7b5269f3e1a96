"""The journey funnel: how many cases are in each step right now.

The count comes from Redis, not from per-process counters, so it is the same
whichever replica is scraped and it survives restarts. It scans the case keys
(``gv:{<case_id>}:case``) with SCAN, which returns at most about
``SCAN_COUNT`` keys per call, and reads each key's ``step`` in pipelined
batches. The scan stops after
``max_keys`` keys, so a scrape costs a bounded amount of Redis time; the
result then says that it is truncated.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from redis.asyncio import Redis

from journey import keys
from journey.steps import Step

SCAN_COUNT = 1000
"""Keys per SCAN step: large steps finish sooner, and each one still blocks
Redis only briefly."""

MAX_SCANNED_KEYS = 50_000
"""Case keys read per count. Three weeks of invitations at a few thousand a
day stay below it; above it the count is a lower bound."""


@dataclass(frozen=True, slots=True)
class FunnelCounts:
    """Cases per step, from one scan."""

    by_step: dict[str, int] = field(default_factory=dict)
    """Step name to number of cases; every ``Step`` is present, zero or more."""
    scanned: int = 0
    """Case keys read."""
    truncated: bool = False
    """The scan stopped at its bound, so the counts are lower bounds."""


async def count_cases_by_step(
    redis: Redis, *, max_keys: int = MAX_SCANNED_KEYS
) -> FunnelCounts:
    """Count the cases in Redis per step, reading at most ``max_keys`` keys.

    A tombstone keeps its final step (``delivered``, ``refused``, …), so the
    final steps count finished cases until their tombstones expire.
    """
    counts: Counter[str] = Counter({step.value: 0 for step in Step})
    batch: list[str] = []
    scanned = 0
    truncated = False

    async for key in redis.scan_iter(match=keys.case("*"), count=SCAN_COUNT):
        if scanned >= max_keys:
            truncated = True
            break
        batch.append(key)
        scanned += 1
        if len(batch) >= SCAN_COUNT:
            counts.update(await _steps_of(redis, batch))
            batch = []
    if batch:
        counts.update(await _steps_of(redis, batch))

    return FunnelCounts(by_step=dict(counts), scanned=scanned, truncated=truncated)


async def _steps_of(redis: Redis, case_keys: list[str]) -> list[str]:
    pipeline = redis.pipeline(transaction=False)
    for key in case_keys:
        pipeline.hget(key, "step")
    steps = await pipeline.execute()
    # A key that expired between SCAN and HGET has no step and is not counted.
    return [str(step) for step in steps if step]
