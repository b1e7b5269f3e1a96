"""Reminders: the schedule in local time and the Redis queue that hands them out.

A case that is not finished gets a reminder 5, 10 and 14 days after its
invitation, at the invitation's local time of day in Europe/Amsterdam, and
expires some days after the last one. A reminder is only sent inside the send
window (default 09:00 to 20:00 local time); a time outside it moves to the
next opening of the window.

The queue is a sorted set with one member per pending reminder of a case
(``<case_id>:<kind>``), scored by its due Unix time. Only the next reminder
of the series is queued; handling it queues the one after. A worker claims
due members in one Lua script that reads the time from Redis ``TIME``, so
host clocks do not matter, and moves them to a second sorted set scored by
the end of a lease. A claim whose lease ran out (its worker died) goes back
to the due set on the next claim by any worker.

Telegram has no idempotency key, so a worker marks a reminder as sent in the
case's reminder hash before it sends it (``mark_sent``). A claim that comes
back after a crash finds the mark and is not sent again; the cost is at most
one reminder lost per crash, the one between its mark and its request.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from redis.asyncio import Redis

from journey import keys
from journey.clock import Clock
from journey.steps import TERMINAL_STEPS, Step

logger = logging.getLogger(__name__)

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
"""Every client lives in the Netherlands, so local time is Amsterdam time."""

REMINDER_DAYS: tuple[int, ...] = (5, 10, 14)
"""Days after the invitation on which an unfinished case gets a reminder."""

EXPIRY_DAYS_AFTER_LAST_REMINDER = 6
"""Day 20 after the invitation: the case hash lives 21 days
(``keys.INVITATION_TTL_SECONDS``), and the send window may push the expiry
notice on by at most 13 hours, so the notice goes out before the case is gone."""

LATER_DELAY_SECONDS = 24 * 3600
""""Herinner me later" sends a reminder a day later. Switching on SMS
verification takes minutes and a new DigiD a few days, so a day is a nudge."""

CLAIM_LEASE_SECONDS = 60.0
"""Time a worker has to send a claimed reminder before another may take it;
one send is a Redis write and one Telegram call, well under a minute."""

DEFAULT_WINDOW_TEXT = "09:00-20:00"
"""No reminder at night: only from 09:00 to 20:00 local time."""

_SECONDS_PER_DAY = 24 * 3600
_WINDOW = re.compile(r"(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})")


class Kind(enum.StrEnum):
    """A reminder of a case, as named in its queue member."""

    FIRST = "first"
    SECOND = "second"
    LAST = "last"
    EXPIRY = "expiry"
    """Not a reminder: the expiry notice, after which the case expires."""
    LATER = "later"
    """The client tapped "Herinner me later"; outside the series."""


SERIES: tuple[Kind, ...] = (Kind.FIRST, Kind.SECOND, Kind.LAST, Kind.EXPIRY)
"""The reminders of every case, in order; each queues the next when handled."""

_SERIES_DAYS: dict[Kind, int] = {
    Kind.FIRST: REMINDER_DAYS[0],
    Kind.SECOND: REMINDER_DAYS[1],
    Kind.LAST: REMINDER_DAYS[2],
    Kind.EXPIRY: REMINDER_DAYS[2] + EXPIRY_DAYS_AFTER_LAST_REMINDER,
}


class WindowError(ValueError):
    """Raised when a send window is not ``HH:MM-HH:MM`` with start before end."""


@dataclass(frozen=True, slots=True)
class SendWindow:
    """The local times of day between which reminders may be sent.

    ``start`` and ``end`` are seconds after local midnight; ``end`` may be
    ``24 * 3600`` for a window that stays open until midnight. Times are wall
    clock times in ``zone``, so the window stays 09:00 to 20:00 across the
    change to and from summer time.
    """

    start: int = 9 * 3600
    end: int = 20 * 3600
    zone: ZoneInfo = AMSTERDAM

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end <= _SECONDS_PER_DAY:
            raise WindowError(
                f"send window must start before it ends within one day, "
                f"got start={self.start} s end={self.end} s"
            )

    @classmethod
    def parse(cls, text: str, zone: ZoneInfo = AMSTERDAM) -> SendWindow:
        """Build a window from ``HH:MM-HH:MM``, for example ``09:00-20:00``.

        Raises:
            WindowError: the text is not of that form, or start is not before end.
        """
        match = _WINDOW.fullmatch(text.strip())
        if match is None:
            raise WindowError(f"send window must look like 09:00-20:00, got {text!r}")
        start_hour, start_minute, end_hour, end_minute = map(int, match.groups())
        if start_minute > 59 or end_minute > 59 or start_hour > 23 or end_hour > 24:
            raise WindowError(f"send window has an invalid time: {text!r}")
        start = start_hour * 3600 + start_minute * 60
        end = end_hour * 3600 + end_minute * 60
        return cls(start=start, end=end, zone=zone)

    def contains(self, moment: float) -> bool:
        """Tell whether the Unix time ``moment`` falls inside the window."""
        local = datetime.fromtimestamp(moment, self.zone)
        return self.start <= _seconds_of_day(local) < self.end

    def next_opening(self, moment: float) -> float:
        """Return ``moment`` if it is inside the window, else the next start."""
        local = datetime.fromtimestamp(moment, self.zone)
        second = _seconds_of_day(local)
        if self.start <= second < self.end:
            return moment
        day = local.date()
        if second >= self.end:
            day += timedelta(days=1)
        return self._local_time(day, self.start)

    def _local_time(self, day: date, seconds: int) -> float:
        # The window never starts inside the skipped or repeated hour of a
        # summer time change (02:00-03:00 in the Netherlands) unless configured
        # so; zoneinfo then picks the earlier offset (fold=0).
        hour, rest = divmod(seconds, 3600)
        moment = datetime.combine(day, time(hour, rest // 60), tzinfo=self.zone)
        return moment.timestamp()


DEFAULT_WINDOW = SendWindow()


def _seconds_of_day(local: datetime) -> int:
    return local.hour * 3600 + local.minute * 60 + local.second


def series_due_time(kind: Kind, invited_at: float, window: SendWindow) -> float:
    """Return the Unix time at which ``kind`` of the series is due.

    The day is counted in local calendar days, and the time of day is the
    invitation's local time, so an invitation at 10:15 before a summer time
    change still gets its reminders at 10:15. A time outside ``window`` moves
    to the window's next start.

    Raises:
        ValueError: ``kind`` is ``Kind.LATER``, which has no fixed day.
    """
    if kind not in _SERIES_DAYS:
        raise ValueError(f"{kind} is not part of the reminder series")
    invited = datetime.fromtimestamp(invited_at, window.zone)
    # Arithmetic on the naive wall clock time keeps the local time of day;
    # attaching the zone afterwards applies the offset of the target day.
    wall = invited.replace(tzinfo=None) + timedelta(days=_SERIES_DAYS[kind])
    target = wall.replace(tzinfo=window.zone).timestamp()
    return window.next_opening(target)


def series_due_times(invited_at: float, window: SendWindow) -> dict[Kind, float]:
    """Return the due time of every kind of the series for one invitation."""
    return {kind: series_due_time(kind, invited_at, window) for kind in SERIES}


def next_in_series(kind: Kind) -> Kind | None:
    """Return the kind that follows ``kind`` in the series, or None after the last."""
    if kind not in SERIES:
        return None
    position = SERIES.index(kind)
    return SERIES[position + 1] if position + 1 < len(SERIES) else None


@dataclass(frozen=True, slots=True)
class Reminder:
    """One claimed reminder: the case and which of its reminders."""

    case_id: str
    kind: Kind

    @property
    def member(self) -> str:
        """The reminder's member in the queue's sorted sets."""
        return f"{self.case_id}:{self.kind.value}"

    @classmethod
    def from_member(cls, member: str) -> Reminder:
        """Parse a queue member ``<case_id>:<kind>``.

        Raises:
            ValueError: the member has no known kind.
        """
        case_id, _, kind = member.rpartition(":")
        return cls(case_id, Kind(kind))


@dataclass(frozen=True, slots=True)
class Claim:
    """Reminders claimed at ``now``, the Unix time that the claim used."""

    now: float
    reminders: list[Reminder]


@dataclass(frozen=True, slots=True)
class ReminderState:
    """What a case's reminder hash records."""

    invited_at: float | None
    paused: bool
    blocked: bool
    sent: frozenset[Kind]
    parked: frozenset[Kind]
    later_at: float | None

    @property
    def held(self) -> bool:
        """Whether reminders wait: support has the chat, or the client blocked us."""
        return self.paused or self.blocked


# KEYS[1] due set, KEYS[2] claimed set. ARGV[1] the current Unix time or ""
# for Redis TIME, ARGV[2] lease seconds, ARGV[3] maximum count, ARGV[4] TTL.
# Claims whose lease ended go back to the due set first, due now.
# Returns {now as a string, member, member, ...}.
_CLAIM = """
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local clock = redis.call('TIME')
  now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, member in ipairs(expired) do
  redis.call('ZREM', KEYS[2], member)
  redis.call('ZADD', KEYS[1], 'NX', now, member)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0,
  tonumber(ARGV[3]))
local lease_end = now + tonumber(ARGV[2])
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZADD', KEYS[2], lease_end, member)
end
if #due > 0 or #expired > 0 then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
end
local result = {string.format('%.6f', now)}
for _, member in ipairs(due) do table.insert(result, member) end
return result
"""

# KEYS[1] the case's reminder hash. ARGV[1] field name, ARGV[2] value,
# ARGV[3] TTL. Returns 1 when this call set the mark, 0 when it existed.
_MARK = """
local set = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return set
"""

# KEYS[1] the case's reminder hash. ARGV[1] the flag to clear, ARGV[2] TTL.
# When no flag is left, the parked kinds are removed and returned.
_RELEASE = """
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
if redis.call('HEXISTS', KEYS[1], 'paused') == 1
  or redis.call('HEXISTS', KEYS[1], 'blocked') == 1 then
  return {}
end
local released = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 7) == 'parked:' then
    redis.call('HDEL', KEYS[1], field)
    table.insert(released, string.sub(field, 8))
  end
end
return released
"""


class ReminderScheduler:
    """The reminder queue in Redis, shared by any number of worker processes.

    Args:
        redis: a ``redis.asyncio`` client created with ``decode_responses=True``.
        window: the send window for due times.
        clock: a time source for tests; by default the time is Redis ``TIME``,
            so every worker and host agrees on it.
        lease_seconds: how long a claim is kept before another worker may take it.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        window: SendWindow = DEFAULT_WINDOW,
        clock: Clock | None = None,
        lease_seconds: float = CLAIM_LEASE_SECONDS,
    ) -> None:
        self._redis = redis
        self._window = window
        self._clock = clock
        self._lease_seconds = lease_seconds
        self._claim = redis.register_script(_CLAIM)
        self._mark = redis.register_script(_MARK)
        self._release = redis.register_script(_RELEASE)

    @property
    def window(self) -> SendWindow:
        """The send window of this scheduler."""
        return self._window

    async def now(self) -> float:
        """Return the current Unix time: the injected clock's, else Redis ``TIME``."""
        if self._clock is not None:
            return self._clock()
        seconds, microseconds = await self._redis.time()
        return float(seconds) + float(microseconds) / 1_000_000

    async def schedule_case(self, case_id: str, invited_at: float) -> float:
        """Queue the first reminder of a new case and return its due time.

        ``POST /v1/cases`` calls it for an invitation's case, and the bot for
        a case it creates for a client who started without an invitation.
        """
        due = series_due_time(Kind.FIRST, invited_at, self._window)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(keys.reminder_state(case_id), "invited_at", repr(invited_at))
            pipe.expire(keys.reminder_state(case_id), keys.REMINDER_STATE_TTL_SECONDS)
            await pipe.execute()
        await self._enqueue(Reminder(case_id, Kind.FIRST), due)
        return due

    async def schedule_later(self, case_id: str, requested_at: float) -> float:
        """Queue the "remind me later" reminder of a case and return its due time.

        A second request replaces the time of the first, because the client
        asked again; a "later" reminder that was already sent may come again.
        """
        due = self._window.next_opening(requested_at + LATER_DELAY_SECONDS)
        state_key = keys.reminder_state(case_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(state_key, "later_at", repr(due))
            pipe.hdel(state_key, f"sent:{Kind.LATER.value}")
            pipe.expire(state_key, keys.REMINDER_STATE_TTL_SECONDS)
            await pipe.execute()
        await self._enqueue(Reminder(case_id, Kind.LATER), due, only_new=False)
        return due

    async def claim(self, limit: int) -> Claim:
        """Claim up to ``limit`` due reminders for this worker.

        Claims of dead workers whose lease ended are taken back first.
        """
        now = "" if self._clock is None else repr(self._clock())
        result = await self._claim(
            keys=[keys.reminders_due(), keys.reminders_claimed()],
            args=[now, self._lease_seconds, limit, keys.REMINDER_QUEUE_TTL_SECONDS],
        )
        reminders = []
        for member in result[1:]:
            try:
                reminders.append(Reminder.from_member(member))
            except ValueError:
                logger.error("reminder member invalid, dropped member_kind=unknown")
                await self._redis.zrem(keys.reminders_claimed(), member)
        return Claim(now=float(result[0]), reminders=reminders)

    async def mark_sent(self, reminder: Reminder, at: float) -> bool:
        """Mark a reminder as sent before sending it; False if it was marked before."""
        marked = await self._mark(
            keys=[keys.reminder_state(reminder.case_id)],
            args=[
                f"sent:{reminder.kind.value}",
                repr(at),
                keys.REMINDER_STATE_TTL_SECONDS,
            ],
        )
        return bool(marked)

    async def unmark(self, reminder: Reminder) -> None:
        """Remove the sent mark after Telegram rejected the request for certain."""
        await self._redis.hdel(  # type: ignore[misc]
            keys.reminder_state(reminder.case_id), f"sent:{reminder.kind.value}"
        )

    async def complete(self, reminder: Reminder, next_due: float | None) -> None:
        """Finish a claim and queue the next reminder of the series at ``next_due``."""
        if next_due is not None:
            following = next_in_series(reminder.kind)
            if following is not None:
                await self._enqueue(Reminder(reminder.case_id, following), next_due)
        await self._redis.zrem(keys.reminders_claimed(), reminder.member)

    async def defer(self, reminder: Reminder, due: float) -> None:
        """Give a claimed reminder back to the queue, due at ``due``."""
        await self._enqueue(reminder, due, only_new=False)
        await self._redis.zrem(keys.reminders_claimed(), reminder.member)

    async def park(self, reminder: Reminder) -> None:
        """Hold a claimed reminder until the case is resumed or unblocked."""
        state_key = keys.reminder_state(reminder.case_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(state_key, f"parked:{reminder.kind.value}", "1")
            pipe.expire(state_key, keys.REMINDER_STATE_TTL_SECONDS)
            await pipe.execute()
        await self._redis.zrem(keys.reminders_claimed(), reminder.member)

    async def pause(self, case_id: str) -> None:
        """Hold the reminders of a case while support has the conversation."""
        await self._set_flag(case_id, "paused")

    async def resume(self, case_id: str) -> list[Kind]:
        """End a pause; parked reminders are queued again, due now or later."""
        return await self._clear_flag(case_id, "paused")

    async def block(self, case_id: str) -> None:
        """Stop the reminders of a case whose client blocked the bot."""
        await self._set_flag(case_id, "blocked")

    async def unblock(self, case_id: str) -> list[Kind]:
        """Restart the reminders of a client who wrote to the bot again."""
        return await self._clear_flag(case_id, "blocked")

    async def state(self, case_id: str) -> ReminderState:
        """Return what the case's reminder hash records."""
        raw: dict[str, str] = await self._redis.hgetall(  # type: ignore[misc]
            keys.reminder_state(case_id)
        )
        return ReminderState(
            invited_at=float(raw["invited_at"]) if raw.get("invited_at") else None,
            paused="paused" in raw,
            blocked="blocked" in raw,
            sent=_kinds_with_prefix(raw, "sent:"),
            parked=_kinds_with_prefix(raw, "parked:"),
            later_at=float(raw["later_at"]) if raw.get("later_at") else None,
        )

    async def cancel(self, case_id: str) -> None:
        """Remove every queued reminder of a case and its reminder hash."""
        members = [Reminder(case_id, kind).member for kind in Kind]
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(keys.reminders_due(), *members)
            pipe.zrem(keys.reminders_claimed(), *members)
            await pipe.execute()
        await self._redis.delete(keys.reminder_state(case_id))

    async def queue_size(self) -> int:
        """Return the number of reminders queued, claimed ones included."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zcard(keys.reminders_due())
            pipe.zcard(keys.reminders_claimed())
            due, claimed = await pipe.execute()
        return int(due) + int(claimed)

    async def rebuild(self, open_cases: AsyncIterable[tuple[str, float]]) -> int:
        """Queue the next reminder of each open case again; return how many.

        For when the queue's keys were lost. ``open_cases`` are pairs of case
        id and invitation time. The sent marks in each case's reminder hash
        decide which reminder is next, so nothing that was marked goes out twice.
        Members already queued keep their time.
        """
        count = 0
        async for case_id, invited_at in open_cases:
            state = await self.state(case_id)
            if state.invited_at is None:
                await self._redis.hset(  # type: ignore[misc]
                    keys.reminder_state(case_id), "invited_at", repr(invited_at)
                )
                await self._redis.expire(
                    keys.reminder_state(case_id), keys.REMINDER_STATE_TTL_SECONDS
                )
            pending = [kind for kind in SERIES if kind not in state.sent]
            # A parked reminder waits in the hash for resume or unblock.
            if pending and pending[0] not in state.parked:
                due = series_due_time(pending[0], invited_at, self._window)
                await self._enqueue(Reminder(case_id, pending[0]), due)
                count += 1
            if state.later_at is not None and Kind.LATER not in state.sent:
                await self._enqueue(Reminder(case_id, Kind.LATER), state.later_at)
                count += 1
        logger.info("reminder queue rebuilt queued=%s", count)
        return count

    async def _enqueue(
        self, reminder: Reminder, due: float, *, only_new: bool = True
    ) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            if only_new:
                pipe.zadd(keys.reminders_due(), {reminder.member: due}, nx=True)
            else:
                pipe.zadd(keys.reminders_due(), {reminder.member: due})
            pipe.expire(keys.reminders_due(), keys.REMINDER_QUEUE_TTL_SECONDS)
            await pipe.execute()

    async def _set_flag(self, case_id: str, flag: str) -> None:
        state_key = keys.reminder_state(case_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(state_key, flag, "1")
            pipe.expire(state_key, keys.REMINDER_STATE_TTL_SECONDS)
            await pipe.execute()
        logger.info("reminders held flag=%s", flag)

    async def _clear_flag(self, case_id: str, flag: str) -> list[Kind]:
        released = await self._release(
            keys=[keys.reminder_state(case_id)],
            args=[flag, keys.REMINDER_STATE_TTL_SECONDS],
        )
        kinds = [Kind(name) for name in released]
        if kinds:
            now = await self.now()
            for kind in kinds:
                await self._enqueue(Reminder(case_id, kind), now, only_new=False)
            logger.info("reminders released flag=%s queued=%s", flag, len(kinds))
        return kinds


REBUILD_SCAN_COUNT = 1000
"""Keys per SCAN step when the queue is rebuilt; large steps finish sooner,
and each step still blocks Redis only briefly."""


async def scan_open_cases(redis: Redis) -> AsyncIterator[tuple[str, float]]:
    """Yield the id and invitation time of every open case in Redis.

    Tombstones and cases in a final step are skipped. The scan visits every
    key once per rebuild, so it runs when the queue was lost, not routinely.
    """
    pattern = keys.case("*")
    async for key in redis.scan_iter(match=pattern, count=REBUILD_SCAN_COUNT):
        step, tombstone, created_at = await redis.hmget(  # type: ignore[misc]
            key, ["step", "tombstone", "created_at"]
        )
        if step is None or tombstone == "1" or not created_at:
            continue
        if Step(step) in TERMINAL_STEPS:
            continue
        case_id = key.removeprefix(f"{keys.PREFIX}:{{").removesuffix("}:case")
        yield case_id, float(created_at)


def _kinds_with_prefix(raw: dict[str, str], prefix: str) -> frozenset[Kind]:
    kinds = set()
    for name in raw:
        if name.startswith(prefix):
            try:
                kinds.add(Kind(name[len(prefix) :]))
            except ValueError:
                continue
    return frozenset(kinds)
