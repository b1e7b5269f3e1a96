"""The Redis store of cases, with every transition applied atomically.

A write is a compare-and-set on the case's ``version`` in one Lua script, so
two bot processes, or a double tap, cannot both apply the same step: the
second writer sees a newer version, reads the case again and asks the state
machine once more with the new step.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from journey import keys
from journey.clock import Clock, system_clock
from journey.model import PERSONAL_FIELDS, Case, encode_fields
from journey.steps import TERMINAL_STEPS, Event, Step, TransitionRejected, next_step
from journey.tokens import (
    MalformedToken,
    Token,
    new_case_id,
    new_token,
    parse_token,
    secret_matches,
)

logger = logging.getLogger(__name__)

MAX_WRITE_ATTEMPTS = 8
"""Compare-and-set retries before a write gives up; contention on one case is
at most a few writers, so eight rounds only run out under a bug."""

# KEYS[1] case hash. ARGV[1] expected version, ARGV[2] new step or "",
# ARGV[3] new TTL in seconds or "0" to keep, ARGV[4] count of fields to delete,
# then those names, then field/value pairs to set.
# Returns {1, version} on success, {0, version} on a version conflict and
# {-1} when the case does not exist.
_COMPARE_AND_SET = """
local current = redis.call('HGET', KEYS[1], 'version')
if not current then return {-1} end
if current ~= ARGV[1] then return {0, tonumber(current)} end
local deletions = tonumber(ARGV[4])
local index = 5
for _ = 1, deletions do
  redis.call('HDEL', KEYS[1], ARGV[index])
  index = index + 1
end
while index < #ARGV do
  redis.call('HSET', KEYS[1], ARGV[index], ARGV[index + 1])
  index = index + 2
end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'step', ARGV[2]) end
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
if ARGV[3] ~= '0' then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
end
return {1, version}
"""

TOMBSTONE_LUA = """
local function write_tombstone(case_keys, expected, ttl, fields)
  local current = redis.call('HGET', case_keys[1], 'version')
  if not current then return {-1} end
  if current ~= expected then return {0, tonumber(current)} end
  redis.call('DEL', unpack(case_keys))
  local version = tonumber(current) + 1
  -- One HSET for all fields: each call from a script costs Redis about as
  -- much as the work of a small command. The version comes last, so it wins.
  local values = {unpack(fields)}
  values[#values + 1] = 'version'
  values[#values + 1] = version
  redis.call('HSET', case_keys[1], unpack(values))
  redis.call('EXPIRE', case_keys[1], ttl)
  return {1, version}
end
"""
"""A Lua function that replaces a case by its tombstone, for scripts to embed.

``write_tombstone(case_keys, expected, ttl, fields)`` takes the case hash
first in ``case_keys`` and deletes the other keys, but only while the case's
``version`` is still ``expected`` (a string). ``fields`` is a flat list of the
tombstone's field/value pairs. It returns ``{1, version}`` when written,
``{0, version}`` on a version conflict and ``{-1}`` when the case is gone.
"""

# KEYS[1] case hash, KEYS[2..] the case's other keys to delete.
# ARGV[1] expected version, ARGV[2] TTL, then field/value pairs of the tombstone.
_TOMBSTONE = (
    TOMBSTONE_LUA
    + """
return write_tombstone(KEYS, ARGV[1], tonumber(ARGV[2]), {unpack(ARGV, 3)})
"""
)

# KEYS[1] an index key. ARGV[1] the value it must hold to be deleted.
_DELETE_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_TOMBSTONE_KEYS = (
    keys.case,
    keys.pairing,
    keys.app_session,
    keys.package,
    # A finished case gets no more reminders; its queued ones are dropped
    # when they fall due and find the tombstone.
    keys.reminder_state,
)
"""The keys of a case that ``_TOMBSTONE`` replaces or deletes, the case first."""

TOMBSTONE_FIELDS: tuple[str, ...] = (
    "step",
    "municipality_code",
    "invite_hash",
    "created_at",
    "expires_at",
    "finished_at",
    "delivery_id",
    "package_digest",
)
"""The fields a tombstone keeps: enough to stop reminders and duplicate deliveries."""

assert PERSONAL_FIELDS.isdisjoint(TOMBSTONE_FIELDS)


@dataclass(frozen=True, slots=True)
class TombstoneWrite:
    """The arguments of ``write_tombstone`` (see ``TOMBSTONE_LUA``) for one case."""

    case: Case
    """The case as read, whose version the write expects."""
    case_keys: list[str]
    """The case hash first, then the keys of the case deleted with it."""
    fields: list[str]
    """The tombstone's fields as a flat field/value list."""

    @property
    def expected_version(self) -> str:
        """The version the case must still have, as Redis stores it."""
        return str(self.case.version)


class CaseNotFound(LookupError):
    """Raised when a case does not exist (never created, expired or erased)."""


class StaleCase(RuntimeError):
    """Raised when a case kept changing under a writer for every retry."""


class InvitationInvalid(ValueError):
    """Raised when an invitation token cannot start a journey.

    ``reason`` is one of ``"malformed"``, ``"unknown"``, ``"expired"`` and
    ``"finished"``. A case whose keys ran out of time without an explicit
    expiry is ``"unknown"``, because nothing of it is left to tell.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"invitation rejected: {reason}")
        self.reason = reason


class CaseStore:
    """Reads and writes cases in Redis.

    Args:
        redis: a ``redis.asyncio`` client created with ``decode_responses=True``.
        clock: the time source, injectable for tests.
    """

    def __init__(self, redis: Redis, *, clock: Clock = system_clock) -> None:
        self._redis = redis
        self._clock = clock
        self._compare_and_set = redis.register_script(_COMPARE_AND_SET)
        self._tombstone = redis.register_script(_TOMBSTONE)
        self._delete_if_equal = redis.register_script(_DELETE_IF_EQUAL)

    @property
    def redis(self) -> Redis:
        """The Redis client the store writes through."""
        return self._redis

    async def create(
        self,
        municipality_code: str,
        *,
        email: str | None = None,
        language: str = "nl",
        lifetime: int = keys.INVITATION_TTL_SECONDS,
        step: Step = Step.INVITED,
        chat_id: int | None = None,
    ) -> tuple[Case, Token]:
        """Create a case and its invitation token.

        ``step`` and ``chat_id`` let the bot create a case for a client who
        started without an invitation and is therefore already in a chat.
        """
        case_id = new_case_id()
        token = new_token(case_id)
        now = self._clock()
        values: dict[str, Any] = {
            "step": step,
            "version": 1,
            "municipality_code": municipality_code,
            "created_at": now,
            "expires_at": now + lifetime,
            "invite_hash": token.secret_hash,
            "language": language,
            "email": email,
            "chat_id": chat_id,
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.case(case_id), mapping=encode_fields(values))
            pipe.expire(keys.case(case_id), lifetime)
            await pipe.execute()
        if chat_id is not None:
            # The chat index lives in the chat's hash slot, so it cannot share
            # the case's MULTI on Redis Cluster. Written after the case, it
            # never points at a case that does not exist yet.
            await self._redis.set(keys.chat(chat_id), case_id, ex=lifetime)
        case = await self.get(case_id)
        logger.info("case created case=%s step=%s", case.ref, case.step)
        return case, token

    async def find(self, case_id: str) -> Case | None:
        """Return the case, or None when it does not exist."""
        raw: dict[str, str] = await self._redis.hgetall(keys.case(case_id))  # type: ignore[misc]
        if not raw:
            return None
        return Case.from_hash(case_id, raw)

    async def get(self, case_id: str) -> Case:
        """Return the case.

        Raises:
            CaseNotFound: no such case.
        """
        case = await self.find(case_id)
        if case is None:
            raise CaseNotFound(case_id)
        return case

    async def resolve_invitation(self, text: str) -> Case:
        """Return the case that an invitation token belongs to.

        Raises:
            InvitationInvalid: the token is malformed, unknown or its case finished.
        """
        try:
            token = parse_token(text)
        except MalformedToken:
            raise InvitationInvalid("malformed") from None

        case = await self.find(token.case_id)
        if case is None or not secret_matches(token.secret, case.invite_hash):
            raise InvitationInvalid("unknown")
        if case.tombstone:
            raise InvitationInvalid(
                "expired" if case.step is Step.EXPIRED else "finished"
            )
        return case

    async def find_by_chat(self, chat_id: int) -> Case | None:
        """Return the open case linked to a chat, or None."""
        case_id = await self._redis.get(keys.chat(chat_id))
        if case_id is None:
            return None
        case = await self.find(case_id)
        if case is None or case.tombstone:
            return None
        return case

    async def apply(
        self,
        case_id: str,
        event: Event,
        *,
        expected_step: Step | None = None,
        updates: Mapping[str, Any] | None = None,
        deletions: Iterable[str] = (),
        lifetime: int | None = None,
    ) -> Case:
        """Apply an event to a case atomically and return the case after it.

        ``expected_step`` pins the step the caller saw, which is how a button
        of one step cannot move the case on from the next step: the event is
        rejected when the case has moved meanwhile. ``updates`` are written in
        the same atomic step; ``lifetime`` replaces the case's TTL.

        Raises:
            CaseNotFound: no such case.
            TransitionRejected: the event is not allowed in the current step,
                or the case is no longer in ``expected_step``.
            StaleCase: the case changed under every retry.
        """
        for _attempt in range(MAX_WRITE_ATTEMPTS):
            case = await self.get(case_id)
            if case.tombstone or (
                expected_step is not None and case.step != expected_step
            ):
                raise TransitionRejected(case.step, event)
            target = next_step(case.step, event, has_partner=bool(case.has_partner))
            written = await self._write(
                case, target, updates or {}, deletions, lifetime
            )
            if written is not None:
                logger.debug(
                    "case transition case=%s event=%s from=%s to=%s",
                    case.ref,
                    event,
                    case.step,
                    target,
                )
                return written
        raise StaleCase(case_id)

    async def update(
        self,
        case_id: str,
        updates: Mapping[str, Any],
        *,
        allowed_steps: Iterable[Step] | None = None,
        deletions: Iterable[str] = (),
    ) -> Case:
        """Write fields of a case without changing its step.

        Raises:
            CaseNotFound: no such case.
            TransitionRejected: the case is not in one of ``allowed_steps``.
            StaleCase: the case changed under every retry.
        """
        allowed = frozenset(allowed_steps) if allowed_steps is not None else None
        for _attempt in range(MAX_WRITE_ATTEMPTS):
            case = await self.get(case_id)
            if case.tombstone or (allowed is not None and case.step not in allowed):
                raise TransitionRejected(case.step, Event.CONFIRM)
            written = await self._write(case, None, updates, deletions, None)
            if written is not None:
                return written
        raise StaleCase(case_id)

    async def modify(
        self,
        case_id: str,
        change: Any,
        *,
        allowed_steps: Iterable[Step] | None = None,
    ) -> Case:
        """Read a case, compute updates from it with ``change(case)`` and write them.

        ``change`` returns a mapping of fields; it runs again on a retry, with
        the newer case, so a read-modify-write of a JSON field loses nothing.
        """
        allowed = frozenset(allowed_steps) if allowed_steps is not None else None
        for _attempt in range(MAX_WRITE_ATTEMPTS):
            case = await self.get(case_id)
            if case.tombstone or (allowed is not None and case.step not in allowed):
                raise TransitionRejected(case.step, Event.CONFIRM)
            written = await self._write(case, None, change(case), (), None)
            if written is not None:
                return written
        raise StaleCase(case_id)

    async def link_chat(self, case: Case, chat_id: int) -> Case:
        """Link a chat to an invited case and move it to the information step."""
        linked = await self.apply(
            case.case_id,
            Event.LINK_CHAT,
            expected_step=Step.INVITED,
            updates={"chat_id": chat_id},
        )
        await self._redis.set(
            keys.chat(chat_id), case.case_id, ex=self._remaining(linked)
        )
        return linked

    async def finish(
        self, case_id: str, event: Event, *, expected_step: Step | None = None
    ) -> Case:
        """Apply a final event and reduce the case to a tombstone.

        The tombstone keeps only ``TOMBSTONE_FIELDS``; the pairing, the app
        session and the package are deleted in the same atomic step.
        """
        case = await self.apply(case_id, event, expected_step=expected_step)
        if case.step not in TERMINAL_STEPS:
            return case
        return await self.reduce_to_tombstone(case)

    async def reduce_to_tombstone(self, case: Case) -> Case:
        """Replace a case in a final step by a tombstone without personal data."""
        for _attempt in range(MAX_WRITE_ATTEMPTS):
            result = await self._write_tombstone(
                case, self._tombstone_values(case, case.step)
            )
            if result[0] == 1:
                if case.chat_id is not None:
                    await self._delete_if_equal(
                        keys=[keys.chat(case.chat_id)], args=[case.case_id]
                    )
                if case.pairing_page_id:
                    await self._redis.delete(keys.pairing_page(case.pairing_page_id))
                logger.info("case closed case=%s outcome=%s", case.ref, case.step)
                return await self.get(case.case_id)
            if result[0] == -1:
                raise CaseNotFound(case.case_id)
            case = await self.get(case.case_id)
            if case.tombstone:
                return case
        raise StaleCase(case.case_id)

    async def finish_case(
        self,
        case: Case,
        event: Event,
        *,
        expected_step: Step | None = None,
        cleanup: Pipeline | None = None,
    ) -> Case:
        """Apply a final event to a case as read and reduce it to a tombstone.

        Does what ``finish`` does, but the step change and the tombstone are
        one script that checks the version of ``case``, so an unchanged case
        costs one round trip. A changed case is read again and checked again.
        The chat index and the QR page key are in other hash slots. Their
        deletions are queued on ``cleanup`` when given, and the caller then
        executes it; otherwise they are sent here in one pipeline.

        Raises:
            CaseNotFound: no such case.
            TransitionRejected: the case is a tombstone, is not in
                ``expected_step``, or ``event`` is not allowed in its step.
            ValueError: ``event`` leads to a step that is not final.
            StaleCase: the case changed under every retry.
        """
        for _attempt in range(MAX_WRITE_ATTEMPTS):
            values = self._final_values(case, event, expected_step)
            result = await self._write_tombstone(case, values)
            if result[0] == 1:
                if cleanup is not None:
                    return self._closed_case(case, values, result[1], cleanup)
                async with self._redis.pipeline(transaction=False) as pipe:
                    finished = self._closed_case(case, values, result[1], pipe)
                    await pipe.execute()
                return finished
            if result[0] == -1:
                raise CaseNotFound(case.case_id)
            case = await self.get(case.case_id)
        raise StaleCase(case.case_id)

    async def finish_cases(
        self,
        cases: Sequence[Case],
        event: Event,
        *,
        cleanup: Pipeline,
        expected_step: Step | None = None,
    ) -> list[Case | Exception]:
        """Finish several cases as read, each as ``finish_case`` does.

        The tombstone scripts of all cases go out in one pipeline. Each script
        touches the keys of one case only, so the pipeline works on Redis
        Cluster. A case that changed since it was read goes through
        ``finish_case`` alone. The deletions of the index keys are queued on
        ``cleanup``, which the caller executes.

        Returns:
            Per case, in order, its tombstone or the exception that
            ``finish_case`` would raise for it (``CaseNotFound``,
            ``TransitionRejected``, ``ValueError``, ``StaleCase``, or the
            ``ResponseError`` of its script). A lost connection raises for all.
        """
        results: list[Case | Exception | None] = [None] * len(cases)
        writes: list[tuple[int, Case, dict[str, Any]]] = []
        for index, case in enumerate(cases):
            try:
                writes.append(
                    (index, case, self._final_values(case, event, expected_step))
                )
            except (TransitionRejected, ValueError) as error:
                results[index] = error

        replies: list[Any] = []
        if writes:
            async with self._redis.pipeline(transaction=False) as pipe:
                for _index, case, values in writes:
                    # EVAL, not EVALSHA: a pipeline cannot load a missing
                    # script and run the command again.
                    case_keys = self._tombstone_keys(case)
                    pipe.eval(
                        _TOMBSTONE,
                        len(case_keys),
                        *case_keys,
                        *self._tombstone_args(case, values),
                    )
                replies = await pipe.execute(raise_on_error=False)

        for (index, case, values), reply in zip(writes, replies, strict=True):
            if isinstance(reply, Exception):
                results[index] = reply
            elif reply[0] == 1:
                results[index] = self._closed_case(case, values, reply[1], cleanup)
            elif reply[0] == -1:
                results[index] = CaseNotFound(case.case_id)
            else:
                results[index] = await self._finish_again(
                    case.case_id, event, expected_step, cleanup
                )
        finished: list[Case | Exception] = []
        for result in results:
            assert result is not None, "every case has a result"
            finished.append(result)
        return finished

    async def _finish_again(
        self,
        case_id: str,
        event: Event,
        expected_step: Step | None,
        cleanup: Pipeline,
    ) -> Case | Exception:
        # A case that changed between its read and its tombstone script.
        try:
            case = await self.get(case_id)
            return await self.finish_case(
                case, event, expected_step=expected_step, cleanup=cleanup
            )
        except (CaseNotFound, TransitionRejected, ValueError, StaleCase) as error:
            return error

    def _final_values(
        self, case: Case, event: Event, expected_step: Step | None
    ) -> dict[str, Any]:
        # The tombstone's fields, after checking that ``event`` finishes the
        # case in the step it was read in.
        if case.tombstone or (expected_step is not None and case.step != expected_step):
            raise TransitionRejected(case.step, event)
        target = next_step(case.step, event, has_partner=bool(case.has_partner))
        if target not in TERMINAL_STEPS:
            raise ValueError(f"event {event} leads to {target}, not a final step")
        return self._tombstone_values(case, target)

    def plan_tombstone(
        self, case: Case, event: Event, *, expected_step: Step | None = None
    ) -> TombstoneWrite:
        """Check that ``event`` finishes ``case`` as read; return its tombstone write.

        For a script that embeds ``TOMBSTONE_LUA``. The script must also
        delete the chat index (if it still contains the case id) and the QR page
        key, as ``finish_case`` does.

        Raises:
            TransitionRejected: the case is a tombstone, is not in
                ``expected_step``, or ``event`` is not allowed in its step.
            ValueError: ``event`` leads to a step that is not final.
        """
        values = self._final_values(case, event, expected_step)
        fields = [item for pair in encode_fields(values).items() for item in pair]
        return TombstoneWrite(case, self._tombstone_keys(case), fields)

    def _closed_case(
        self, case: Case, values: dict[str, Any], version: int, cleanup: Pipeline
    ) -> Case:
        # Queue the index deletions of a case whose tombstone was written and
        # return the tombstone as written.
        if case.chat_id is not None:
            cleanup.eval(_DELETE_IF_EQUAL, 1, keys.chat(case.chat_id), case.case_id)
        if case.pairing_page_id:
            cleanup.delete(keys.pairing_page(case.pairing_page_id))
        logger.info("case closed case=%s outcome=%s", case.ref, values["step"])
        raw = encode_fields(values)
        raw["version"] = str(version)
        return Case.from_hash(case.case_id, raw)

    async def _write_tombstone(self, case: Case, values: dict[str, Any]) -> list[Any]:
        # Returns the tombstone script's reply: {1, version}, {0, version} on
        # a version conflict or {-1} when the case is gone.
        result: list[Any] = await self._tombstone(
            keys=self._tombstone_keys(case), args=self._tombstone_args(case, values)
        )
        return result

    @staticmethod
    def _tombstone_keys(case: Case) -> list[str]:
        return [key(case.case_id) for key in _TOMBSTONE_KEYS]

    @staticmethod
    def _tombstone_args(case: Case, values: dict[str, Any]) -> list[Any]:
        pairs = [item for pair in encode_fields(values).items() for item in pair]
        return [case.version, keys.TOMBSTONE_TTL_SECONDS, *pairs]

    def _tombstone_values(self, case: Case, step: Step) -> dict[str, Any]:
        return {
            "step": step,
            "municipality_code": case.municipality_code,
            "invite_hash": case.invite_hash,
            "created_at": case.created_at,
            "expires_at": case.expires_at,
            "finished_at": self._clock(),
            "delivery_id": case.delivery_id,
            "package_digest": case.package_digest,
            "tombstone": True,
        }

    async def unlink_chat(self, chat_id: int, case_id: str) -> None:
        """Forget the link between a chat and a case, if it still points there."""
        await self._delete_if_equal(keys=[keys.chat(chat_id)], args=[case_id])

    async def _write(
        self,
        case: Case,
        target: Step | None,
        updates: Mapping[str, Any],
        deletions: Iterable[str],
        lifetime: int | None,
    ) -> Case | None:
        names = list(deletions)
        pairs = [item for pair in encode_fields(dict(updates)).items() for item in pair]
        result = await self._compare_and_set(
            keys=[keys.case(case.case_id)],
            args=[
                case.version,
                target.value if target is not None else "",
                lifetime or 0,
                len(names),
                *names,
                *pairs,
            ],
        )
        if result[0] == -1:
            raise CaseNotFound(case.case_id)
        if result[0] == 0:
            return None
        return await self.get(case.case_id)

    def _remaining(self, case: Case) -> int:
        return max(1, int(case.expires_at - self._clock()))
