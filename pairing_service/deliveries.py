"""The delivery queue in Redis: records, the intake stream, the retry schedule.

A delivery is a hash ``keys.delivery(id)`` with ids and counts only. It enters
through the stream ``keys.deliveries()`` (consumer group ``delivery``), from
which a worker moves it into the sorted set ``keys.delivery_schedule()``,
scored by the Unix time of its next attempt. Before an attempt a worker takes
a lease on the record in one Lua script, so two workers never send the same
delivery at the same time. A worker that dies only delays the delivery until
its lease runs out. Every command touches one key, so the queue works on
Redis Cluster.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from journey import keys
from journey.clock import Clock
from journey.events import ensure_stream_group
from journey.model import Case, encode_fields, hash_from_flat

logger = logging.getLogger(__name__)

DELIVERY_GROUP = "delivery"
"""The consumer group that the delivery workers share."""

INTAKE_CLAIM_IDLE_MS = 30_000
"""An intake entry read but not scheduled for this long belonged to a worker
that died; another worker takes it over."""

DEAD_LETTER_MAX_LENGTH = 10_000
"""Cap on the dead-letter list; support handles failures long before this."""

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
ABANDONED = "abandoned"
"""Statuses of a delivery record."""

LEASE_LUA = """
local function take_lease(record, now, owner, lease_end)
  -- One read and one write: each call from a script costs Redis about as
  -- much as the work of a small command.
  local fields = redis.call('HGETALL', record)
  local at = {}
  for index = 1, #fields, 2 do at[fields[index]] = index + 1 end
  local status = fields[at.status]
  if not status then return {-1} end
  if status ~= 'pending' then return {-2} end
  local lease_until = fields[at.lease_until]
  if lease_until and tonumber(lease_until) > tonumber(now) then
    return {0, lease_until}
  end
  local attempt = (tonumber(fields[at.attempts]) or 0) + 1
  local lease = {'lease_owner', owner, 'lease_until', lease_end,
    'attempts', tostring(attempt)}
  redis.call('HSET', record, unpack(lease))
  for index = 1, #lease, 2 do
    local name, value = lease[index], lease[index + 1]
    if at[name] then
      fields[at[name]] = value
    else
      fields[#fields + 1] = name
      fields[#fields + 1] = value
    end
  end
  return {1, attempt, fields}
end
"""
"""A Lua function that leases one delivery record, for scripts to embed.

``take_lease(record, now, owner, lease_end)`` returns ``{1, attempt, fields}``
when leased, where ``fields`` is the hash after the lease as a flat
name/value list, ``{0, lease end}`` while another worker owns it, ``{-1}``
when the record is gone and ``{-2}`` when it is no longer pending.
"""

RELEASE_LUA = """
local function release_lease(record, owner, fields)
  if redis.call('HGET', record, 'lease_owner') ~= owner then return 0 end
  if #fields > 0 then redis.call('HSET', record, unpack(fields)) end
  redis.call('HDEL', record, 'lease_owner', 'lease_until')
  return 1
end
"""
"""A Lua function that writes an attempt's outcome and ends its lease.

``release_lease(record, owner, fields)`` writes the flat field/value list
``fields`` only for the worker that still owns the lease, and returns 1, else
0: a worker whose lease ran out has lost the delivery.
"""

# KEYS[1] delivery hash. ARGV[1] now, ARGV[2] owner, ARGV[3] lease end.
_LEASE = (
    LEASE_LUA
    + """
return take_lease(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
"""
)

# KEYS[1] delivery hash. ARGV[1] owner, then field/value pairs to set.
_RELEASE = (
    RELEASE_LUA
    + """
return release_lease(KEYS[1], ARGV[1], {unpack(ARGV, 2)})
"""
)


# KEYS[1] delivery hash. ARGV[1] now, ARGV[2] record TTL.
# Reopens a delivery that failed for good, for an operator's redelivery: the
# attempt count starts again at zero, so the whole retry schedule applies.
# Returns 1 when reopened, -1 when the record is gone and 0 when it is not failed.
_REOPEN = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status ~= 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'pending', 'attempts', '0',
  'next_at', ARGV[1], 'last_error', '')
redis.call('HDEL', KEYS[1], 'lease_owner', 'lease_until')
redis.call('HINCRBY', KEYS[1], 'redeliveries', 1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One delivery as stored in its hash; times are Unix times."""

    delivery_id: str
    case_id: str
    case_ref: str
    municipality_code: str
    status: str
    attempts: int
    created_at: float
    next_at: float
    last_error: str = ""

    @classmethod
    def from_hash(cls, delivery_id: str, raw: dict[str, str]) -> DeliveryRecord:
        """Build a record from the strings of its hash."""
        return cls(
            delivery_id=delivery_id,
            case_id=raw["case_id"],
            case_ref=raw["case_ref"],
            municipality_code=raw["municipality_code"],
            status=raw["status"],
            attempts=int(raw.get("attempts", "0")),
            created_at=float(raw["created_at"]),
            next_at=float(raw.get("next_at") or raw["created_at"]),
            last_error=raw.get("last_error", ""),
        )


def new_delivery_id() -> str:
    """Return a new delivery id, sent as ``webhook-id`` on every attempt."""
    return "msg_" + secrets.token_urlsafe(16)


class DeliveryQueue:
    """The Redis side of deliveries, shared by the consent step and the workers.

    Args:
        redis: a ``redis.asyncio`` client created with ``decode_responses=True``.
        clock: the time source, injectable for tests.
    """

    def __init__(self, redis: Redis, *, clock: Clock) -> None:
        self._redis = redis
        self._clock = clock
        self._release = redis.register_script(_RELEASE)
        self._reopen = redis.register_script(_REOPEN)

    async def enqueue(self, delivery_id: str, case: Case) -> None:
        """Create the record of a delivery and announce it on the intake stream."""
        now = self._clock()
        values: dict[str, Any] = {
            "case_id": case.case_id,
            "case_ref": case.ref,
            "municipality_code": case.municipality_code,
            "status": PENDING,
            "attempts": 0,
            "created_at": now,
            "next_at": now,
        }
        record_key = keys.delivery(delivery_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(record_key, mapping=encode_fields(values))
            pipe.expire(record_key, keys.DELIVERY_RECORD_TTL_SECONDS)
            await pipe.execute()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(keys.deliveries(), {"delivery_id": delivery_id})
            pipe.expire(keys.deliveries(), keys.DELIVERY_QUEUE_TTL_SECONDS)
            await pipe.execute()
        logger.info("delivery queued case=%s", case.ref)

    async def ensure_group(self) -> None:
        """Create the workers' consumer group (and the stream) if missing."""
        await ensure_stream_group(
            self._redis,
            keys.deliveries(),
            DELIVERY_GROUP,
            keys.DELIVERY_QUEUE_TTL_SECONDS,
        )

    async def take_new(self, consumer: str, *, block_ms: int) -> int:
        """Move announced deliveries into the retry schedule; return how many.

        Runs ``read_new``, then ``schedule_entries``.
        """
        entries = await self.read_new(consumer, block_ms=block_ms)
        await self.schedule_entries(entries)
        return len(entries)

    async def read_new(self, consumer: str, *, block_ms: int) -> list[tuple[str, str]]:
        """Return the intake entries for ``consumer`` as (entry id, delivery id).

        Entries a dead worker left unscheduled are taken over first. Blocks up
        to ``block_ms`` when there is nothing new. The caller schedules them
        with ``schedule_entries``, which also acknowledges them.
        """
        _next, claimed, _deleted = await self._redis.xautoclaim(
            keys.deliveries(),
            DELIVERY_GROUP,
            consumer,
            min_idle_time=INTAKE_CLAIM_IDLE_MS,
            count=100,
        )
        entries = [(entry_id, fields) for entry_id, fields in claimed if fields]
        if not entries:
            response = await self._redis.xreadgroup(
                DELIVERY_GROUP,
                consumer,
                {keys.deliveries(): ">"},
                count=100,
                block=block_ms,
            )
            for _stream, stream_entries in response or []:
                entries.extend(stream_entries)
        return [
            (str(entry_id), str(fields.get("delivery_id", "")))
            for entry_id, fields in entries
        ]

    async def read_own_pending(self, consumer: str) -> list[tuple[str, str]]:
        """Return the intake entries that ``consumer`` read and did not schedule.

        A worker that stops between reading the intake and scheduling, or
        while Redis returns its blocking read, leaves such entries. Scheduling
        them at stop spares them the wait for ``INTAKE_CLAIM_IDLE_MS``.
        """
        response = await self._redis.xreadgroup(
            DELIVERY_GROUP, consumer, {keys.deliveries(): "0"}, count=100
        )
        return [
            (str(entry_id), str(fields.get("delivery_id", "")))
            for _stream, stream_entries in response or []
            for entry_id, fields in stream_entries
            if fields
        ]

    async def schedule_entries(self, entries: Sequence[tuple[str, str]]) -> None:
        """Schedule the first attempt of each intake entry, then acknowledge it.

        ``entries`` are (entry id, delivery id) pairs from ``read_new``.
        """
        if not entries:
            return
        # Three round trips for the whole batch: the records' next attempt
        # times, the schedule, then the acknowledgement. An entry is
        # acknowledged only after its delivery is in the schedule.
        delivery_ids = [delivery_id for _entry_id, delivery_id in entries]
        async with self._redis.pipeline(transaction=False) as pipe:
            for delivery_id in delivery_ids:
                pipe.hget(keys.delivery(delivery_id), "next_at")
            next_ats = await pipe.execute()
        first_attempts = {
            delivery_id: float(next_at)
            for delivery_id, next_at in zip(delivery_ids, next_ats, strict=True)
            if next_at is not None
        }
        if first_attempts:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zadd(keys.delivery_schedule(), first_attempts, nx=True)
                pipe.expire(keys.delivery_schedule(), keys.DELIVERY_QUEUE_TTL_SECONDS)
                await pipe.execute()
        entry_ids = [entry_id for entry_id, _delivery_id in entries]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(keys.deliveries(), DELIVERY_GROUP, *entry_ids)
            pipe.xdel(keys.deliveries(), *entry_ids)
            await pipe.execute()

    async def schedule(
        self,
        delivery_id: str,
        at: float,
        *,
        only_new: bool = False,
        only_existing: bool = False,
    ) -> None:
        """Set the time of a delivery's next attempt in the schedule."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(
                keys.delivery_schedule(),
                {delivery_id: at},
                nx=only_new,
                xx=only_existing,
            )
            pipe.expire(keys.delivery_schedule(), keys.DELIVERY_QUEUE_TTL_SECONDS)
            await pipe.execute()

    async def unschedule(self, delivery_id: str) -> None:
        """Remove a delivery from the schedule."""
        await self._redis.zrem(keys.delivery_schedule(), delivery_id)

    async def due(self, *, limit: int) -> list[str]:
        """Return up to ``limit`` delivery ids whose next attempt is due."""
        return list(
            await self._redis.zrangebyscore(
                keys.delivery_schedule(), "-inf", self._clock(), start=0, num=limit
            )
        )

    async def due_and_next(self, *, limit: int) -> tuple[list[str], float | None]:
        """Return up to ``limit`` due delivery ids and the time of the next attempt.

        The time is that of the earliest scheduled delivery not in the list,
        or None when there is none. Both come from one ``ZRANGE``.
        """
        now = self._clock()
        entries = await self._redis.zrange(
            keys.delivery_schedule(), 0, limit, withscores=True
        )
        due = [str(member) for member, score in entries[:limit] if score <= now]
        rest = entries[len(due) :]
        return due, (float(rest[0][1]) if rest else None)

    async def next_due_at(self) -> float | None:
        """Return the time of the earliest scheduled attempt, or None."""
        first = await self._redis.zrange(
            keys.delivery_schedule(), 0, 0, withscores=True
        )
        return float(first[0][1]) if first else None

    async def lease(
        self, delivery_id: str, owner: str, *, seconds: float
    ) -> DeliveryRecord | None:
        """Take the lease for one attempt; return the record, or None if not taken.

        The attempt count grows by one with every lease. While the lease runs
        the delivery is scheduled at its end, so no worker finds it due. If
        the worker dies, the delivery is due again when the lease ends.
        """
        leased = await self.lease_many([delivery_id], owner, seconds=seconds)
        return leased[0] if leased else None

    async def lease_many(
        self, delivery_ids: list[str], owner: str, *, seconds: float
    ) -> list[DeliveryRecord]:
        """Take the lease of each delivery, as ``lease`` does; return those taken.

        One pipeline carries the lease script of every id (each touches one
        record) and moves every id to the lease end in the schedule. An id
        whose lease another worker holds is then moved to that worker's lease
        end, and an id whose record is gone or closed leaves the schedule.
        """
        if not delivery_ids:
            return []
        now = self._clock()
        until = now + seconds
        async with self._redis.pipeline(transaction=False) as pipe:
            for delivery_id in delivery_ids:
                # EVAL, not EVALSHA: a pipeline cannot load a missing script
                # and run the command again. redis-py 6.4 sends repr() of a
                # float, which is the same text as str().
                pipe.eval(
                    _LEASE, 1, keys.delivery(delivery_id), str(now), owner, str(until)
                )
            pipe.zadd(
                keys.delivery_schedule(), dict.fromkeys(delivery_ids, until), xx=True
            )
            pipe.expire(keys.delivery_schedule(), keys.DELIVERY_QUEUE_TTL_SECONDS)
            *results, _moved, _expiry = await pipe.execute()

        leased: list[DeliveryRecord] = []
        gone: list[str] = []
        for delivery_id, result in zip(delivery_ids, results, strict=True):
            if result[0] == 1:
                raw = hash_from_flat(result[2])
                leased.append(DeliveryRecord.from_hash(delivery_id, raw))
            elif result[0] == 0:
                await self._defer_to_lease_end(delivery_id, str(result[1]))
            else:
                gone.append(delivery_id)

        if gone:
            await self._redis.zrem(keys.delivery_schedule(), *gone)
        return leased

    async def _defer_to_lease_end(self, delivery_id: str, held_until: str) -> None:
        # Another worker owns the lease: move the delivery out of the due
        # range until that lease ends, unless that worker removed it.
        await self.schedule(delivery_id, float(held_until), only_existing=True)
        # The owner may have released the lease and scheduled its retry
        # just before the line above, which then pushed the retry back to
        # the old lease end. Put it back at the time the owner chose.
        lease_until, next_at, status = await self._redis.hmget(  # type: ignore[misc]
            keys.delivery(delivery_id), ["lease_until", "next_at", "status"]
        )
        if lease_until != held_until and status == PENDING and next_at:
            await self.schedule(delivery_id, float(next_at), only_existing=True)

    async def release(self, record: DeliveryRecord, owner: str, **updates: Any) -> bool:
        """Write the outcome of an attempt and end the lease.

        Returns False when the lease had run out and another worker took the
        delivery; the caller then writes nothing else.
        """
        pairs = [item for pair in encode_fields(updates).items() for item in pair]
        released = await self._release(
            keys=[keys.delivery(record.delivery_id)], args=[owner, *pairs]
        )
        return bool(released)

    async def close(self, record: DeliveryRecord, owner: str, **updates: Any) -> bool:
        """Write a final outcome, end the lease and unschedule, in one round trip.

        The delivery leaves the schedule even when the lease had run out, as
        after ``release`` followed by ``unschedule``. Returns what ``release``
        returns.
        """
        [released] = await self.close_many([(record, updates)], owner)
        return released

    async def close_many(
        self, closings: Sequence[tuple[DeliveryRecord, Mapping[str, Any]]], owner: str
    ) -> list[bool]:
        """Close each delivery with its updates, as ``close`` does, in one round trip.

        Returns per delivery, in order, what ``release`` returns.
        """
        if not closings:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for record, updates in closings:
                pairs = [
                    item for pair in encode_fields(updates).items() for item in pair
                ]
                pipe.eval(_RELEASE, 1, keys.delivery(record.delivery_id), owner, *pairs)
            pipe.zrem(
                keys.delivery_schedule(),
                *(record.delivery_id for record, _updates in closings),
            )
            *released, _removed = await pipe.execute()
        return [bool(result) for result in released]

    async def dead_letter(self, record: DeliveryRecord, reason: str) -> None:
        """List a delivery that failed for good, with metadata only."""
        entry = {
            "delivery_id": record.delivery_id,
            "case_ref": record.case_ref,
            "municipality_code": record.municipality_code,
            "attempts": record.attempts,
            "reason": reason,
            "failed_at": self._clock(),
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lpush(keys.dead_letters(), json.dumps(entry, separators=(",", ":")))
            pipe.ltrim(keys.dead_letters(), 0, DEAD_LETTER_MAX_LENGTH - 1)
            pipe.expire(keys.dead_letters(), keys.DEAD_LETTER_TTL_SECONDS)
            await pipe.execute()

    async def dead_letters(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """Return up to ``limit`` dead letters, newest first."""
        entries = await self._redis.lrange(keys.dead_letters(), 0, limit - 1)  # type: ignore[misc]
        return [json.loads(entry) for entry in entries]

    async def remove_dead_letter(self, delivery_id: str) -> int:
        """Remove the dead letters of one delivery; return how many were removed."""
        removed = 0
        entries = await self._redis.lrange(keys.dead_letters(), 0, -1)  # type: ignore[misc]
        for entry in entries:
            if json.loads(entry).get("delivery_id") == delivery_id:
                removed += await self._redis.lrem(keys.dead_letters(), 0, entry)  # type: ignore[misc]
        return removed

    async def record(self, delivery_id: str) -> DeliveryRecord | None:
        """Return the record of a delivery, or None when there is none."""
        raw: dict[str, str] = await self._redis.hgetall(keys.delivery(delivery_id))  # type: ignore[misc]
        if not raw:
            return None
        return DeliveryRecord.from_hash(delivery_id, raw)

    async def reopen(self, delivery_id: str) -> bool:
        """Make a failed delivery pending again with a fresh attempt count.

        Returns False when the record is gone or did not fail. The caller
        schedules the first attempt.
        """
        result = await self._reopen(
            keys=[keys.delivery(delivery_id)],
            args=[self._clock(), keys.DELIVERY_RECORD_TTL_SECONDS],
        )
        return bool(result == 1)

    async def disable_endpoint(
        self, municipality_code: str, *, reason: str, delivery_id: str
    ) -> None:
        """Mark a municipality's endpoint as disabled until an operator enables it."""
        key = keys.endpoint_disabled(municipality_code)
        values = {
            "reason": reason,
            "delivery_id": delivery_id,
            "disabled_at": self._clock(),
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=encode_fields(values))
            pipe.expire(key, keys.ENDPOINT_DISABLED_TTL_SECONDS)
            await pipe.execute()

    async def endpoint_disabled(self, municipality_code: str) -> dict[str, str] | None:
        """Return why a municipality's endpoint is disabled, or None when it is not."""
        raw: dict[str, str] = await self._redis.hgetall(  # type: ignore[misc]
            keys.endpoint_disabled(municipality_code)
        )
        return raw or None

    async def enable_endpoint(self, municipality_code: str) -> bool:
        """Enable a disabled endpoint again; return False when it was not disabled."""
        return bool(await self._redis.delete(keys.endpoint_disabled(municipality_code)))
