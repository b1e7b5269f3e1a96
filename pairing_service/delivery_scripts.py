"""The delivery worker's Redis steps on one server, one Lua script each.

On one Redis server a script may touch keys of any hash slot, so apart from
reading the intake stream the worker needs three kinds of command:

- ``schedule_new``: one script per read of the intake stream puts the new
  deliveries into the schedule and acknowledges their entries.
- ``take_due``: one script per dispatch finds the due deliveries, leases them,
  moves them to their lease end in the schedule and returns each record with
  its case and its municipality's disabled-endpoint flag. The packages follow
  in one pipeline of plain reads. Inside a script, redis-server 7.0 took
  about 34 µs to read a package of 16 KiB, against 1 µs for a plain HGETALL.
- ``finish_delivered``: one script per delivery that the receiver accepted,
  pipelined across a batch, writes the tombstone, deletes the chat index and
  the QR page key, appends the ``delivered`` event to the stream and closes
  the record. The event is therefore written together with the tombstone or
  not at all.

Redis Cluster rejects a script whose keys span hash slots (CROSSSLOT), so
there the worker keeps its pipelines of one-key commands (see
``pairing_service.delivery``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from string import Template
from typing import Any

from redis.commands.core import AsyncScript

from journey import keys
from journey.events import EventType, encode_event
from journey.model import Case, encode_fields, hash_from_flat
from journey.steps import Event, Step, TransitionRejected
from journey.store import TOMBSTONE_LUA, CaseStore, TombstoneWrite
from pairing_service.deliveries import (
    DELIVERED,
    DELIVERY_GROUP,
    LEASE_LUA,
    RELEASE_LUA,
    DeliveryRecord,
)
from pairing_service.packages import StoredPackage
from pairing_service.script_pipeline import run_in_pipeline


def _lua_key(builder: Callable[[str], str], argument: str) -> str:
    """Return a Lua expression that builds ``builder``'s key from ``argument``.

    The key layout stays in ``journey.keys``: the builder's output for a
    placeholder gives the text before and after the id.
    """
    placeholder = "\x00"
    before, after = builder(placeholder).split(placeholder)
    return f"'{before}' .. {argument} .. '{after}'"


# KEYS[1] the schedule. ARGV[1] now, ARGV[2] owner, ARGV[3] lease end,
# ARGV[4] maximum number of due deliveries, ARGV[5] a JSON list of the ids of
# the deliveries that this worker already runs, which it leaves alone.
# Returns {due, next_at, leased}: the number of due deliveries found (running
# ones included), the score of the first entry after them or '' when there
# is none, and per leased delivery {id, record, case, flag}, each a hash as a
# flat name/value list (empty when the key does not exist).
#
# NOTE: the script builds the keys of the records, cases and flags
# from the ids it reads, so it does not declare them in KEYS. A single
# server runs such a script; Redis Cluster would reject it.
_TAKE_DUE = Template(
    LEASE_LUA
    + """
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[4])
local running = {}
for _, id in ipairs(cjson.decode(ARGV[5])) do running[id] = true end
local entries = redis.call('ZRANGE', KEYS[1], 0, limit, 'WITHSCORES')
local due = 0
local leased = {}
local flags = {}
while due < limit and 2 * due < #entries
    and tonumber(entries[2 * due + 2]) <= now do
  local id = entries[2 * due + 1]
  due = due + 1
  if not running[id] then
    local record = $delivery_key
    local lease = take_lease(record, ARGV[1], ARGV[2], ARGV[3])
    if lease[1] == 1 then
      redis.call('ZADD', KEYS[1], 'XX', ARGV[3], id)
      local fields = lease[3]
      local case_id, code = '', ''
      for index = 1, #fields, 2 do
        if fields[index] == 'case_id' then case_id = fields[index + 1] end
        if fields[index] == 'municipality_code' then code = fields[index + 1] end
      end
      if flags[code] == nil then
        flags[code] = redis.call('HGETALL', $flag_key)
      end
      leased[#leased + 1] = {id, lease[3], redis.call('HGETALL', $case_key),
        flags[code]}
    elseif lease[1] == 0 then
      redis.call('ZADD', KEYS[1], 'XX', lease[2], id)
    else
      redis.call('ZREM', KEYS[1], id)
    end
  end
end
if due > 0 then redis.call('EXPIRE', KEYS[1], $schedule_ttl) end
return {due, entries[2 * due + 2] or '', leased}
"""
).substitute(
    delivery_key=_lua_key(keys.delivery, "id"),
    case_key=_lua_key(keys.case, "case_id"),
    flag_key=_lua_key(keys.endpoint_disabled, "code"),
    schedule_ttl=keys.DELIVERY_QUEUE_TTL_SECONDS,
)

# KEYS[1] the schedule, KEYS[2] the intake stream. ARGV contains pairs of an
# intake entry id and its delivery id. Schedules the first attempt of each
# delivery whose record exists at the record's next_at, then acknowledges and
# deletes the entries. Returns the number of deliveries scheduled.
#
# NOTE: the record keys are built from the ids, as in _TAKE_DUE.
_SCHEDULE_NEW = Template(
    """
local entry_ids = {}
local scheduled = 0
for index = 1, #ARGV, 2 do
  entry_ids[#entry_ids + 1] = ARGV[index]
  local id = ARGV[index + 1]
  local next_at = redis.call('HGET', $delivery_key, 'next_at')
  if next_at then
    redis.call('ZADD', KEYS[1], 'NX', next_at, id)
    scheduled = scheduled + 1
  end
end
if scheduled > 0 then redis.call('EXPIRE', KEYS[1], $schedule_ttl) end
redis.call('XACK', KEYS[2], '$group', unpack(entry_ids))
redis.call('XDEL', KEYS[2], unpack(entry_ids))
return scheduled
"""
).substitute(
    delivery_key=_lua_key(keys.delivery, "id"),
    schedule_ttl=keys.DELIVERY_QUEUE_TTL_SECONDS,
    group=DELIVERY_GROUP,
)

# KEYS[1] the delivery record, KEYS[2] the schedule, KEYS[3] the event
# stream, KEYS[4..3+n] the case hash and the case's keys deleted with it, then
# the chat index when ``chat`` is true and the QR page key when ``page`` is.
# ARGV[1] is a JSON object (see ``_finish_call``). Its ``case_keys`` is n, or 0
# when an earlier attempt wrote the tombstone. It also has the case's expected
# ``version``, ``case_id``, ``owner``, ``delivery_id``, the flags ``chat`` and
# ``page``, and the flat field/value lists ``event``, ``record`` (closing
# fields) and ``tombstone``. redis-py encodes every argument in Python, so one
# JSON value costs less to send than these some forty values would.
# Returns {1, version, released} when done, where version is '' without a
# tombstone write and released is what release_lease returned. Returns
# {0, version} on a version conflict and {-1} when the case is gone, and
# then has written nothing.
_FINISH_DELIVERED = Template(
    TOMBSTONE_LUA
    + RELEASE_LUA
    + """
local finish = cjson.decode(ARGV[1])
local case_keys = finish.case_keys
local version = ''
if case_keys > 0 then
  local written = write_tombstone({unpack(KEYS, 4, 3 + case_keys)},
    finish.version, $tombstone_ttl, finish.tombstone)
  if written[1] ~= 1 then return written end
  version = written[2]
  local index = 4 + case_keys
  if finish.chat then
    if redis.call('GET', KEYS[index]) == finish.case_id then
      redis.call('DEL', KEYS[index])
    end
    index = index + 1
  end
  if finish.page then redis.call('DEL', KEYS[index]) end
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', $stream_length, '*',
  unpack(finish.event))
redis.call('EXPIRE', KEYS[3], $stream_ttl)
local released = release_lease(KEYS[1], finish.owner, finish.record)
redis.call('ZREM', KEYS[2], finish.delivery_id)
return {1, version, released}
"""
).substitute(
    tombstone_ttl=keys.TOMBSTONE_TTL_SECONDS,
    stream_length=keys.EVENT_STREAM_MAX_LENGTH,
    stream_ttl=keys.EVENT_STREAM_TTL_SECONDS,
)


@dataclass(frozen=True, slots=True)
class AttemptInputs:
    """The case, endpoint flag and package that an attempt reads before it sends."""

    case: Case | None
    disabled: dict[str, str] | None
    """The disabled-endpoint flag of the record's municipality, or None."""
    package: StoredPackage | None


@dataclass(frozen=True, slots=True)
class DueBatch:
    """The due deliveries that one ``take_due`` found, and those it leased."""

    due: int
    """Due deliveries found, including those the worker already runs."""
    next_at: float | None
    """The time of the first scheduled attempt after them, or None."""
    leased: list[tuple[DeliveryRecord, AttemptInputs]]


@dataclass(frozen=True, slots=True)
class FinishedDelivery:
    """The outcome of one ``finish_delivered`` script that ran to its end."""

    closed_case: bool
    """Whether it wrote the tombstone, which is False when an earlier attempt did."""
    released: bool
    """Whether this worker still owned the lease and closed the record."""


NOT_APPLIED = None
"""The outcome of a ``finish_delivered`` script that found the case changed or
gone and wrote nothing; the caller finishes that delivery another way."""


class OneServerSteps:
    """Runs the delivery worker's scripts on one Redis server.

    Args:
        store: the case store, whose client talks to one server.
        event_stream: the key of the stream that the bot reads.
    """

    def __init__(self, store: CaseStore, *, event_stream: str) -> None:
        redis = store.redis
        self._redis = redis
        self._store = store
        self._event_stream = event_stream
        self._schedule_new = redis.register_script(_SCHEDULE_NEW)
        self._take_due = redis.register_script(_TAKE_DUE)
        self._finish = redis.register_script(_FINISH_DELIVERED)

    async def schedule_new(self, entries: Sequence[tuple[str, str]]) -> None:
        """Schedule and acknowledge intake entries, as ``schedule_entries`` does.

        ``entries`` are (entry id, delivery id) pairs from
        ``DeliveryQueue.read_new``. One script does it all, so an entry is
        never acknowledged without its delivery in the schedule.
        """
        if not entries:
            return
        await self._schedule_new(
            keys=[keys.delivery_schedule(), keys.deliveries()],
            args=[item for entry in entries for item in entry],
        )

    async def take_due(
        self,
        owner: str,
        *,
        limit: int,
        now: float,
        lease_seconds: float,
        running: Sequence[str],
    ) -> DueBatch:
        """Lease up to ``limit`` due deliveries and read the inputs of each.

        ``running`` lists the deliveries that ``owner`` already runs; they
        count as due but are left alone. A delivery whose lease another
        worker owns moves to that lease's end in the schedule, and one whose
        record is gone or closed leaves the schedule.
        """
        reply = await self._take_due(
            keys=[keys.delivery_schedule()],
            args=[
                str(now),
                owner,
                str(now + lease_seconds),
                limit,
                json.dumps(list(running)),
            ],
        )
        due, next_at, leased_replies = reply
        records = [
            DeliveryRecord.from_hash(str(delivery_id), hash_from_flat(record))
            for delivery_id, record, _case, _flag in leased_replies
        ]
        packages = await self._read_packages(records)
        leased: list[tuple[DeliveryRecord, AttemptInputs]] = []
        for parsed, (_id, _record, case, flag), package in zip(
            records, leased_replies, packages, strict=True
        ):
            inputs = AttemptInputs(
                case=Case.from_hash(parsed.case_id, hash_from_flat(case))
                if case
                else None,
                disabled=hash_from_flat(flag) or None,
                package=package,
            )
            leased.append((parsed, inputs))
        return DueBatch(
            due=int(due),
            next_at=float(next_at) if next_at else None,
            leased=leased,
        )

    async def _read_packages(
        self, records: Sequence[DeliveryRecord]
    ) -> list[StoredPackage | None]:
        # The package of each leased delivery, or None when it is gone. The
        # lease keeps every other worker away from these deliveries, so the
        # packages read here belong to the leases just taken.
        if not records:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for record in records:
                pipe.hgetall(keys.package(record.case_id))
            replies = await pipe.execute()
        return [StoredPackage.from_hash(raw) if raw else None for raw in replies]

    async def finish_delivered(
        self,
        deliveries: Sequence[tuple[DeliveryRecord, Case, bool]],
        owner: str,
        *,
        delivered_at: float,
    ) -> list[FinishedDelivery | Exception | None]:
        """Finish each accepted delivery in one script, all in one pipeline.

        Each entry is the record, the case as read and whether this attempt
        writes the tombstone. It does not when an earlier attempt wrote it
        and died before the close, so only the event and the close remain.

        Returns:
            Per delivery, in order, a ``FinishedDelivery``, ``NOT_APPLIED``
            when the case changed or is gone, or the ``ResponseError`` of its
            script. A lost connection raises for all.
        """
        closing = encode_fields({"status": DELIVERED, "delivered_at": delivered_at})
        record_fields = [item for pair in closing.items() for item in pair]
        writes: list[TombstoneWrite | None] = []
        calls: list[tuple[list[str], list[Any]]] = []
        runnable: list[int] = []
        for index, (record, case, finish_case) in enumerate(deliveries):
            write = None
            if finish_case:
                try:
                    write = self._store.plan_tombstone(
                        case, Event.DELIVERED, expected_step=Step.DELIVERING
                    )
                except (TransitionRejected, ValueError):
                    writes.append(None)
                    continue
            writes.append(write)
            runnable.append(index)
            calls.append(self._finish_call(record, case, write, owner, record_fields))
        replies = await self._pipelined(self._finish, calls)

        outcomes: list[FinishedDelivery | Exception | None] = [NOT_APPLIED] * len(
            deliveries
        )
        for index, reply in zip(runnable, replies, strict=True):
            write = writes[index]
            if isinstance(reply, Exception):
                outcomes[index] = reply
            elif reply[0] == 1:
                outcomes[index] = FinishedDelivery(write is not None, bool(reply[2]))
        return outcomes

    def _finish_call(
        self,
        record: DeliveryRecord,
        case: Case,
        write: TombstoneWrite | None,
        owner: str,
        record_fields: list[str],
    ) -> tuple[list[str], list[Any]]:
        # The keys and arguments of one _FINISH_DELIVERED script.
        script_keys = [
            keys.delivery(record.delivery_id),
            keys.delivery_schedule(),
            self._event_stream,
        ]
        has_chat = has_page = False
        if write is not None:
            script_keys += write.case_keys
            if case.chat_id is not None:
                has_chat = True
                script_keys.append(keys.chat(case.chat_id))
            if case.pairing_page_id:
                has_page = True
                script_keys.append(keys.pairing_page(case.pairing_page_id))
        # The tombstone keeps no chat id, so the final event carries the chat
        # and language the bot needs to confirm the delivery.
        event = encode_event(
            EventType.DELIVERED,
            case.case_id,
            step=Step.DELIVERED.value,
            chat_id=case.chat_id,
            language=case.language,
        )
        finish = {
            "case_keys": len(write.case_keys) if write is not None else 0,
            "version": write.expected_version if write is not None else "",
            "case_id": case.case_id,
            "owner": owner,
            "delivery_id": record.delivery_id,
            "chat": has_chat,
            "page": has_page,
            "event": [item for pair in event.items() for item in pair],
            "record": record_fields,
            "tombstone": write.fields if write is not None else [],
        }
        arguments: list[Any] = [json.dumps(finish, separators=(",", ":"))]
        return script_keys, arguments

    async def _pipelined(
        self, script: AsyncScript, calls: list[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        # EVALSHA of every call in one pipeline, with NOSCRIPT handled.
        pipelined = [
            (script, script_keys, arguments) for script_keys, arguments in calls
        ]
        return await run_in_pipeline(self._redis, pipelined)
