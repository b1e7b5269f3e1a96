"""The delivery worker on one Redis server: one script per step of a delivery.

On one server the worker leases a delivery and reads its case, its package
and its endpoint flag in one script, and finishes it (tombstone, indexes,
``delivered`` event, close) in another. MONITOR shows every command that the
worker's own client sends while it delivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from journey import keys
from journey.events import EventStream, EventType
from journey.municipalities import MunicipalityRegistry
from journey.package import KeyPair
from journey.steps import Step
from journey.store import CaseStore
from pairing_service.config import Settings
from pairing_service.deliveries import DELIVERED, PENDING, DeliveryQueue, DeliveryRecord
from pairing_service.delivery import DeliveryWorker
from pairing_service.delivery_scripts import NOT_APPLIED, OneServerSteps
from pairing_service.services import Services
from sandbox.municipality_receiver import MunicipalityReceiver
from sandbox.redis_server import RedisServer
from tests.test_delivery_batches import (
    SHORT_SCHEDULE,
    queue_deliveries,
    read_events_until,
)
from tests.test_pairing_service import (
    MUNICIPALITY,
    PUBLIC_BASE_URL,
    SERVICE_TOKEN,
    assert_every_key_expires,
    make_registry,
)

WORKER_CLIENT = "delivery-worker-under-test"
"""The client name of the worker's Redis connections, to tell them apart."""

INTAKE_COMMANDS = frozenset({"XGROUP", "XAUTOCLAIM", "XREADGROUP"})
"""Commands of the intake loop's read of the stream, which blocks and so
cannot be part of a script."""

CONNECTION_COMMANDS = frozenset({"CLIENT"})
"""Commands that redis-py sends when it opens a connection (``CLIENT SETNAME``)."""


@dataclass(frozen=True, slots=True)
class MonitoredCommand:
    """One command as MONITOR reports it."""

    port: int | None
    """The client's port, or None for a command that a Lua script ran."""
    text: str

    @property
    def name(self) -> str:
        """The command's name in upper case."""
        return self.text.split()[0].upper()


@contextlib.asynccontextmanager
async def monitored(redis: Redis) -> AsyncIterator[list[MonitoredCommand]]:
    """Collect every command the server runs until the block ends.

    An ECHO of a random marker, sent last, shows that every earlier command
    has been collected.
    """
    seen: list[MonitoredCommand] = []
    marker = "END-" + secrets.token_hex(8)
    ended = asyncio.Event()
    async with redis.monitor() as monitor:

        async def collect() -> None:
            while not ended.is_set():
                entry = await monitor.next_command()
                text = str(entry["command"])
                if marker in text:
                    ended.set()
                    return
                port = entry.get("client_port")
                lua = entry.get("client_type") == "lua"
                seen.append(MonitoredCommand(None if lua else int(port), text))

        collector = asyncio.create_task(collect())
        try:
            yield seen
        finally:
            await redis.echo(marker)
            async with asyncio.timeout(10):
                await collector


def build_services(redis: Redis, registry: MunicipalityRegistry) -> Services:
    """Return the service's objects on ``redis``, as the service builds them."""
    settings = Settings(
        service_token=SERVICE_TOKEN,
        public_base_url=PUBLIC_BASE_URL,
        bot_username="gv_test_bot",
        registry_path=Path("unused-registry.json"),
        delivery_retry_schedule=SHORT_SCHEDULE,
    )
    return Services.build(settings, redis, registry, time.time)


async def deliver_with_new_worker(services: Services, events: EventStream) -> None:
    """Run a worker until one ``delivered`` event arrives, then stop it."""
    worker = DeliveryWorker(services, schedule=SHORT_SCHEDULE, timeout_seconds=2.0)
    await worker.start()
    try:
        await read_events_until(events, {EventType.DELIVERED: 1})
    finally:
        await worker.stop()


async def client_ports(redis: Redis, name: str) -> set[int]:
    """Return the ports of the server's clients named ``name``."""
    clients = await redis.client_list()
    return {
        int(client["addr"].rsplit(":", 1)[1])
        for client in clients
        if client.get("name") == name
    }


async def test_delivery_sends_scripts_and_package_reads(
    redis_server: RedisServer,
    redis: Redis,
    key_pair: KeyPair,
    receiver: tuple[str, MunicipalityReceiver],
) -> None:
    url, municipality = receiver
    registry = make_registry(key_pair, url)
    # The test queues the deliveries through its own client, so the worker's
    # client sends only the worker's commands.
    queuing = build_services(redis, registry)
    worker_redis = Redis.from_url(
        redis_server.url, decode_responses=True, client_name=WORKER_CLIENT
    )
    working = build_services(worker_redis, registry)
    events = EventStream(redis)
    await events.ensure_group()
    try:
        # The first delivery loads the scripts into the server.
        await queue_deliveries(queuing, 1)
        await deliver_with_new_worker(working, events)

        # The second one enters the schedule before the worker starts, so
        # the worker's intake reads nothing of it.
        [case_id] = await queue_deliveries(queuing, 1)
        await DeliveryQueue(redis, clock=time.time).take_new("test", block_ms=100)
        case = await CaseStore(redis).get(case_id)
        assert case.delivery_id is not None
        ports = await client_ports(redis, WORKER_CLIENT)
        async with monitored(redis) as commands:
            await deliver_with_new_worker(working, events)
        # The worker's connections: those open before, and those it opened.
        ports |= {
            command.port
            for command in commands
            if command.text == f"CLIENT SETNAME {WORKER_CLIENT}"
            and command.port is not None
        }
        tombstone = await CaseStore(redis).get(case_id)
        record = await DeliveryQueue(redis, clock=time.time).record(case.delivery_id)
    finally:
        await worker_redis.aclose()

    # The intake refreshes the TTL of its stream when the worker starts.
    intake_expiry = f"EXPIRE {keys.deliveries()} {keys.DELIVERY_QUEUE_TTL_SECONDS} NX"
    sent = [
        command
        for command in commands
        if command.port in ports
        and command.name not in INTAKE_COMMANDS | CONNECTION_COMMANDS
        and command.text != intake_expiry
    ]
    record_key = keys.delivery(case.delivery_id)
    finishing = [command for command in sent if record_key in command.text]
    from_scripts = [command.text for command in commands if command.port is None]
    assert ports
    # Apart from reading the intake stream, the worker sends three kinds of
    # command. The lease scripts of its dispatch loop run, some finding
    # nothing due. One finishing script names the delivery's record. The
    # package is read outside any script.
    assert {command.name for command in sent} == {"EVALSHA", "HGETALL"}
    assert len(finishing) == 1
    assert [command.text for command in sent if command.name == "HGETALL"] == [
        f"HGETALL {keys.package(case_id)}"
    ]
    leases = [
        text
        for text in from_scripts
        if text.startswith(f"HSET {record_key} lease_owner ")
    ]
    assert len(leases) == 1
    assert leases[0].endswith(" attempts 1")
    assert f"HGETALL {keys.case(case_id)}" in from_scripts
    assert f"HGETALL {keys.package(case_id)}" not in from_scripts
    assert any(text.startswith(f"XADD {keys.events()}") for text in from_scripts)
    assert tombstone.step is Step.DELIVERED
    assert tombstone.tombstone
    assert record is not None
    assert record.status == DELIVERED
    assert len(municipality.deliveries) == 2
    assert await redis.zcard(keys.delivery_schedule()) == 0
    await assert_every_key_expires(redis)


async def test_flushed_scripts_are_loaded_again(
    redis: Redis, key_pair: KeyPair, receiver: tuple[str, MunicipalityReceiver]
) -> None:
    url, municipality = receiver
    services = build_services(redis, make_registry(key_pair, url))
    events = EventStream(redis)
    await events.ensure_group()
    await queue_deliveries(services, 1)
    await deliver_with_new_worker(services, events)

    # A restarted server has an empty script cache, so every EVALSHA of the
    # worker first gets NOSCRIPT.
    await redis.script_flush()
    [case_id] = await queue_deliveries(services, 1)
    await deliver_with_new_worker(services, events)
    tombstone = await CaseStore(redis).get(case_id)

    assert tombstone.step is Step.DELIVERED
    assert len(municipality.deliveries) == 2
    assert municipality.duplicates == 0
    await assert_every_key_expires(redis)


async def test_finish_leaves_changed_case_alone(redis: Redis) -> None:
    store = CaseStore(redis)
    case, _token = await store.create(MUNICIPALITY, step=Step.DELIVERING, chat_id=810)
    # The case gets a new version after the worker read it.
    await store.modify(case.case_id, lambda _case: {"last_error": "x"})
    now = time.time()
    record = DeliveryRecord(
        delivery_id="msg_" + secrets.token_urlsafe(16),
        case_id=case.case_id,
        case_ref=case.ref,
        municipality_code=MUNICIPALITY,
        status=PENDING,
        attempts=1,
        created_at=now,
        next_at=now,
    )
    steps = OneServerSteps(store, event_stream=keys.events())

    [outcome] = await steps.finish_delivered(
        [(record, case, True)], "worker-a", delivered_at=now
    )
    stored = await store.get(case.case_id)

    assert outcome is NOT_APPLIED
    assert stored.step is Step.DELIVERING
    assert not stored.tombstone
    assert await redis.exists(keys.chat(810))
    assert await redis.exists(keys.events()) == 0
    await assert_every_key_expires(redis)
