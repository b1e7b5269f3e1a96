"""Events from the pairing service to the bot, through a Redis Stream.

The stream has one consumer group for the bot, so any number of bot processes
share the events and an event that a process read but never acknowledged (it
crashed) is claimed again by another after ``CLAIM_IDLE_MS``. Events carry ids
and step names only, never personal data.
"""

from __future__ import annotations

import enum
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from journey import keys

logger = logging.getLogger(__name__)

BOT_GROUP = "bot"
"""The consumer group that the bot processes share."""

CLAIM_IDLE_MS = 30_000
"""An event read but not acknowledged for this long is taken over by another
consumer; well above the time a bot needs to send one message."""


class EventType(enum.StrEnum):
    """What the pairing service tells the bot."""

    PAIRING_CLAIMED = "pairing_claimed"
    PROGRESS = "progress"
    REVIEW_READY = "review_ready"
    CONSENT_NEEDED = "consent_needed"
    DELIVERED = "delivered"
    DELIVERY_FAILED = "delivery_failed"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class ServiceEvent:
    """One event as read from the stream."""

    type: EventType
    case_id: str
    data: dict[str, Any] = field(default_factory=dict)
    stream_id: str = ""


def encode_event(event_type: EventType, case_id: str, **data: Any) -> dict[str, str]:
    """Return the stream fields of one event, as ``EventStream.read`` decodes them."""
    return {
        "type": event_type.value,
        "case_id": case_id,
        "data": json.dumps(data, separators=(",", ":")),
    }


# KEYS[1] the stream. ARGV[1] the group, ARGV[2] the TTL in seconds. Creates
# the group, and the stream when it is missing, and gives a stream without a
# TTL its TTL, in one step. A caller cancelled between two round trips would
# leave a stream that never expires.
_ENSURE_GROUP = """
local created = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
redis.call('EXPIRE', KEYS[1], ARGV[2], 'NX')
if type(created) == 'table' and created.err
    and not string.find(created.err, 'BUSYGROUP', 1, true) then
  return redis.error_reply(created.err)
end
return 1
"""


async def ensure_stream_group(
    redis: Redis, stream: str, group: str, ttl_seconds: int
) -> None:
    """Create ``group`` on ``stream`` (and the stream) unless it exists.

    The stream gets ``ttl_seconds`` as its TTL when it has none.
    """
    await redis.register_script(_ENSURE_GROUP)(keys=[stream], args=[group, ttl_seconds])


class EventStream:
    """Publishes and consumes service events."""

    def __init__(self, redis: Redis, *, stream: str | None = None) -> None:
        self._redis = redis
        self._stream = stream or keys.events()

    async def publish(self, event_type: EventType, case_id: str, **data: Any) -> str:
        """Append an event and refresh the stream's TTL in one transaction."""
        async with self._redis.pipeline(transaction=True) as pipe:
            self.queue_publish(pipe, event_type, case_id, **data)
            stream_id, _ = await pipe.execute()
        return str(stream_id)

    def queue_publish(
        self, pipe: Pipeline, event_type: EventType, case_id: str, **data: Any
    ) -> None:
        """Queue the commands of ``publish`` on ``pipe``, which the caller executes.

        They are two replies of the pipeline: the event's stream id, then the
        result of refreshing the TTL. In a pipeline without a transaction
        another client may write between the two, which does no harm here.
        """
        # redis-py types the fields as a dict of its own value types.
        fields: dict[Any, Any] = encode_event(event_type, case_id, **data)
        pipe.xadd(
            self._stream,
            fields,
            maxlen=keys.EVENT_STREAM_MAX_LENGTH,
            approximate=True,
        )
        pipe.expire(self._stream, keys.EVENT_STREAM_TTL_SECONDS)

    @property
    def stream_key(self) -> str:
        """The Redis key of the stream, for a Lua script that appends to it."""
        return self._stream

    async def ensure_group(self, group: str = BOT_GROUP) -> None:
        """Create the consumer group (and the stream) if it does not exist yet."""
        await ensure_stream_group(
            self._redis, self._stream, group, keys.EVENT_STREAM_TTL_SECONDS
        )

    async def read(
        self,
        consumer: str,
        *,
        group: str = BOT_GROUP,
        count: int = 100,
        block_ms: int = 1000,
    ) -> list[ServiceEvent]:
        """Return events for ``consumer``: abandoned ones first, then new ones.

        Blocks up to ``block_ms`` when there is nothing to read. The caller
        acknowledges each event with ``ack`` after handling it.
        """
        _next, claimed, _deleted = await self._redis.xautoclaim(
            self._stream, group, consumer, min_idle_time=CLAIM_IDLE_MS, count=count
        )
        if claimed:
            return [
                self._parse(entry_id, entry) for entry_id, entry in claimed if entry
            ]
        response = await self._redis.xreadgroup(
            group, consumer, {self._stream: ">"}, count=count, block=block_ms
        )
        events: list[ServiceEvent] = []
        for _stream, entries in response or []:
            for entry_id, entry in entries:
                events.append(self._parse(entry_id, entry))
        return events

    async def ack(self, event: ServiceEvent, *, group: str = BOT_GROUP) -> None:
        """Acknowledge and delete a handled event."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self._stream, group, event.stream_id)
            pipe.xdel(self._stream, event.stream_id)
            await pipe.execute()

    @staticmethod
    def _parse(entry_id: str, entry: dict[str, str]) -> ServiceEvent:
        return ServiceEvent(
            type=EventType(entry["type"]),
            case_id=entry["case_id"],
            data=json.loads(entry.get("data") or "{}"),
            stream_id=entry_id,
        )
