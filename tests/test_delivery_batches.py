"""Deliveries that share their round trips: mixed outcomes, a killed worker, the body.

A worker leases the deliveries that are due together in one pipeline, reads
their cases and packages in one pipeline, and finishes the ones its receiver
accepted together. Each delivery must still end on its own: a failure in a
batch touches only that delivery, and a worker that dies in the middle of a
batch leaves nothing that is accepted twice.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from journey import keys
from journey.events import EventStream, EventType
from journey.model import Case
from journey.package import KeyPair
from journey.steps import Event, Step, TransitionRejected
from journey.store import CaseStore
from pairing_service.consent import record_consent
from pairing_service.deliveries import (
    DELIVERED,
    FAILED,
    INTAKE_CLAIM_IDLE_MS,
    DeliveryQueue,
)
from pairing_service.delivery import LEASE_SECONDS, DeliveryWorker
from pairing_service.packages import StoredPackage
from pairing_service.services import SERVICES, Services
from pairing_service.webhook import build_payload
from sandbox.municipality_receiver import MunicipalityReceiver
from sandbox.redis_server import RedisServer, free_port, start_redis_server
from tests.test_delivery import worker_for
from tests.test_delivery_scale import case_waiting_for_consent
from tests.test_pairing_service import (
    MUNICIPALITY,
    PUBLIC_BASE_URL,
    SERVICE_TOKEN,
    SIGNING_SECRET,
    assert_every_key_expires,
    make_registry,
    running_service,
)

BATCH = 6
"""Deliveries queued before the worker starts, so it leases them as one batch."""

SHORT_SCHEDULE = (0.05, 0.05)

WORKER_START_TIMEOUT_SECONDS = 30.0
"""Upper bound for the child's interpreter start, imports and first log line."""

BOT_CONSUMER = "batch-test"


async def queue_deliveries(services: Services, count: int) -> list[str]:
    """Create ``count`` cases with a package and give their consent."""
    case_ids = [
        await case_waiting_for_consent(services, index) for index in range(count)
    ]
    for case_id in case_ids:
        await record_consent(services, case_id, "client", True)
    return case_ids


async def read_events_until(
    events: EventStream, expected: dict[EventType, int]
) -> list[tuple[EventType, str]]:
    """Read and acknowledge events until each type in ``expected`` came that often."""
    seen: list[tuple[EventType, str]] = []

    def missing() -> bool:
        return any(
            sum(event_type is expected_type for event_type, _case in seen) < count
            for expected_type, count in expected.items()
        )

    # A hang guard only: a batch finishes well within a second.
    async with asyncio.timeout(60):
        while missing():
            for event in await events.read(BOT_CONSUMER, count=100, block_ms=500):
                await events.ack(event)
                seen.append((event.type, event.case_id))
    return seen


async def test_batch_failures_spare_the_others(
    redis: Redis, key_pair: KeyPair, receiver: tuple[str, MunicipalityReceiver]
) -> None:
    url, municipality = receiver
    # The first request of the batch fails once and is retried.
    municipality.fail_next(1, status=500)
    events = EventStream(redis)
    await events.ensure_group()
    async with running_service(
        redis, make_registry(key_pair, url), start_worker=False
    ) as service:
        app = service.client.app
        assert app is not None
        services = app[SERVICES]
        case_ids = await queue_deliveries(services, BATCH)
        # One package is gone, so its delivery fails for good without a request.
        missing_package = case_ids[-1]
        await redis.delete(keys.package(missing_package))

        worker = DeliveryWorker(
            services, schedule=SHORT_SCHEDULE, timeout_seconds=2.0, concurrency=8
        )
        await worker.start()
        try:
            seen = await read_events_until(
                events,
                {EventType.DELIVERED: BATCH - 1, EventType.DELIVERY_FAILED: 1},
            )
        finally:
            await worker.stop()
        cases = {case_id: await service.store.get(case_id) for case_id in case_ids}
        queue = DeliveryQueue(redis, clock=time.time)
        records = [
            await queue.record(cases[case_id].delivery_id) for case_id in case_ids
        ]
        dead = await queue.dead_letters()

    delivered_ids = [delivery.webhook_id for delivery in municipality.deliveries]
    statuses = [request.status for request in municipality.requests]
    assert sorted(statuses) == [200] * (BATCH - 1) + [500]
    assert len(delivered_ids) == BATCH - 1
    assert set(delivered_ids) == {
        cases[case_id].delivery_id for case_id in case_ids[:-1]
    }
    assert municipality.duplicates == 0
    assert municipality.overlaps == 0
    assert {case_id for kind, case_id in seen if kind is EventType.DELIVERED} == set(
        case_ids[:-1]
    )
    assert {case_id for kind, case_id in seen if kind is EventType.DELIVERY_FAILED} == {
        missing_package
    }
    assert all(cases[case_id].step is Step.DELIVERED for case_id in case_ids[:-1])
    assert cases[missing_package].step is Step.DELIVERY_FAILED
    assert [record.status for record in records if record is not None] == [
        DELIVERED
    ] * (BATCH - 1) + [FAILED]
    assert [entry["reason"] for entry in dead] == ["package_missing"]
    assert await redis.zcard(keys.delivery_schedule()) == 0
    await assert_every_key_expires(redis)


# --- a worker killed in the middle of a batch ------------------------------


def registry_document(key_pair: KeyPair, webhook_url: str) -> dict[str, object]:
    """Return the registry file's content for the child process."""
    return {
        "municipalities": [
            {
                "code": MUNICIPALITY,
                "name": "Zwolle",
                "participates": True,
                "webhook_url": webhook_url,
                "signing_secret": SIGNING_SECRET,
                "hpke": {
                    "suite": key_pair.suite.value,
                    "key_id": "zwolle-test-01",
                    "public_key": key_pair.public_key,
                },
            }
        ]
    }


@contextlib.asynccontextmanager
async def service_process(
    redis_url: str, registry_path: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run ``python -m pairing_service`` with its delivery worker until killed."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if key in ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV")
    }
    environment.update(
        {
            "SERVICE_TOKEN": SERVICE_TOKEN,
            "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
            "BOT_USERNAME": "gv_test_bot",
            "MUNICIPALITY_REGISTRY": str(registry_path),
            "REDIS_URL": redis_url,
            "HOST": "127.0.0.1",
            "PORT": str(free_port()),
            "DELIVERY_CONCURRENCY": str(BATCH),
            # A short request timeout keeps the child's lease at LEASE_SECONDS,
            # which the test's second worker skips past with its clock.
            "DELIVERY_TIMEOUT_SECONDS": "2",
            "LOG_LEVEL": "INFO",
        }
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pairing_service",
        env=environment,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def wait_for_line(process: asyncio.subprocess.Process, text: str) -> None:
    """Read the child's stderr until a line contains ``text``."""
    assert process.stderr is not None
    async with asyncio.timeout(WORKER_START_TIMEOUT_SECONDS):
        while True:
            line = await process.stderr.readline()
            if not line:
                raise RuntimeError(f"the service exited before it logged {text!r}")
            if text in line.decode(errors="replace"):
                return


@contextlib.asynccontextmanager
async def tombstone_seen(redis: Redis) -> AsyncIterator[asyncio.Event]:
    """Set the event once Redis ran the first tombstone script of a case."""
    seen = asyncio.Event()
    async with redis.monitor() as monitor:

        async def watch() -> None:
            while not seen.is_set():
                command = str((await monitor.next_command())["command"])
                # Every tombstone script sets the tombstone flag with HSET,
                # and MONITOR shows the commands that a script runs.
                if command.upper().startswith("HSET") and " tombstone 1 " in (
                    command + " "
                ):
                    seen.set()

        watcher = asyncio.create_task(watch())
        try:
            yield seen
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)


@pytest.mark.parametrize("kill_after", ["answers", "first_tombstone"])
async def test_killed_worker_sends_nothing_twice(
    redis: Redis,
    redis_server: RedisServer,
    key_pair: KeyPair,
    receiver: tuple[str, MunicipalityReceiver],
    tmp_path: Path,
    kill_after: str,
) -> None:
    url, municipality = receiver
    registry_path = tmp_path / "municipalities.json"
    registry_path.write_text(json.dumps(registry_document(key_pair, url)))
    events = EventStream(redis)
    await events.ensure_group()
    async with running_service(
        redis, make_registry(key_pair, url), start_worker=False
    ) as service:
        app = service.client.app
        assert app is not None
        services = app[SERVICES]
        case_ids = await queue_deliveries(services, BATCH)

        async with (
            tombstone_seen(redis) as first_tombstone,
            service_process(redis_server.url, registry_path) as process,
        ):
            await wait_for_line(process, "delivery worker started")
            # Killed once the receiver responded to every request of the batch,
            # or once the first tombstone is written: the child may have
            # finished none, some or all of the deliveries.
            if kill_after == "answers":
                await municipality.wait_until(
                    lambda: len(municipality.requests) >= BATCH
                )
            else:
                await asyncio.wait_for(first_tombstone.wait(), 30)
            process.send_signal(signal.SIGKILL)
            await process.wait()

        # A second worker whose clock is past the dead worker's leases.
        ahead = Services.build(
            services.settings,
            redis,
            services.registry,
            lambda: time.time() + LEASE_SECONDS + 1,
        )
        worker = DeliveryWorker(ahead, schedule=SHORT_SCHEDULE, timeout_seconds=2.0)
        await worker.start()
        try:
            seen = await read_events_until(events, {EventType.DELIVERED: BATCH})
            cases = [await service.store.get(case_id) for case_id in case_ids]
            await municipality.wait_until(
                lambda: len(municipality.requests) == len(municipality.attempts)
            )
        finally:
            await worker.stop()
        queue = DeliveryQueue(redis, clock=time.time)
        records = [await queue.record(case.delivery_id) for case in cases]

    delivered_ids = [delivery.webhook_id for delivery in municipality.deliveries]
    resent = len(municipality.attempts) - BATCH
    assert sorted(delivered_ids) == sorted(case.delivery_id for case in cases)
    assert municipality.duplicates == resent
    assert municipality.rejected == []
    assert worker.requests_sent == resent
    assert {case_id for _kind, case_id in seen} == set(case_ids)
    assert all(case.step is Step.DELIVERED for case in cases)
    assert [record.status for record in records if record is not None] == [
        DELIVERED
    ] * BATCH
    assert await redis.zcard(keys.delivery_schedule()) == 0
    await assert_every_key_expires(redis)


# --- the request body --------------------------------------------------------


async def test_payload_matches_plain_encoding(redis: Redis) -> None:
    case, _token = await CaseStore(redis).create(MUNICIPALITY, step=Step.FETCHING)
    base64_text = base64.b64encode(os.urandom(3000)).decode()
    for ciphertext in (base64_text, 'not "base64" \\ \x01 é'):
        package = StoredPackage(
            format="gv-package/1",
            suite="X25519",
            key_id="zwolle-test-01",
            sha256="ab" * 32,
            size=3000,
            ciphertext_b64=ciphertext,
            received_at=time.time(),
        )
        body = build_payload(case, package, created_at=1_800_000_000.0)
        document = json.loads(body)
        assert document["data"]["package"]["ciphertext"] == ciphertext
        assert body == json.dumps(document, separators=(",", ":")).encode()


# --- the batched tombstones --------------------------------------------------


async def test_finish_cases_rereads_changed_case(redis: Redis) -> None:
    store = CaseStore(redis)
    cases = [
        (await store.create(MUNICIPALITY, step=Step.DELIVERING, chat_id=700 + index))[0]
        for index in range(3)
    ]
    # The second case gets a new version after it was read.
    changed = await store.modify(cases[1].case_id, lambda _case: {"last_error": "x"})
    # The third one fails in the meantime, so it is no longer delivering.
    await store.apply(
        cases[2].case_id, Event.DELIVERY_FAILED, expected_step=Step.DELIVERING
    )

    async with redis.pipeline(transaction=False) as cleanup:
        results = await store.finish_cases(
            cases, Event.DELIVERED, expected_step=Step.DELIVERING, cleanup=cleanup
        )
        await cleanup.execute()

    first, second, third = results
    assert isinstance(first, Case)
    assert first.step is Step.DELIVERED
    assert isinstance(second, Case)
    assert second.step is Step.DELIVERED
    assert second.version == changed.version + 1
    assert isinstance(third, TransitionRejected)
    for index, case in enumerate(cases[:2]):
        stored = await store.get(case.case_id)
        assert stored.tombstone
        assert not await redis.exists(keys.chat(700 + index))


# --- stopping, outages and slow receivers -----------------------------------


async def raw_records(redis: Redis, case_ids: list[str]) -> dict[str, dict[str, str]]:
    """Return the delivery record hash of each case, by delivery id."""
    records = {}
    for case_id in case_ids:
        case = await CaseStore(redis).get(case_id)
        assert case.delivery_id is not None
        records[case.delivery_id] = await redis.hgetall(keys.delivery(case.delivery_id))
    return records


async def test_stop_gives_back_unsent_deliveries(
    redis: Redis,
    key_pair: KeyPair,
    receiver: tuple[str, MunicipalityReceiver],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pairing_service.delivery")
    url, municipality = receiver
    events = EventStream(redis)
    await events.ensure_group()
    async with running_service(
        redis, make_registry(key_pair, url), start_worker=False
    ) as service:
        services = service.services
        worker = worker_for(service, timeout_seconds=2.0, concurrency=2)
        await worker.start()
        # Two fast deliveries first: the worker measures short requests and
        # leases ahead from then on.
        await queue_deliveries(services, 2)
        await read_events_until(events, {EventType.DELIVERED: 2})
        municipality.gate = asyncio.Event()
        case_ids = await queue_deliveries(services, BATCH)
        # Two requests wait in the receiver, and the worker leased the other
        # attempts ahead, which wait for a request slot.
        await municipality.wait_for_attempts(2 + 2)
        stopping = asyncio.create_task(worker.stop())
        municipality.gate.set()
        await stopping
        sent_by_first = list(municipality.attempts[2:])
        records = await raw_records(redis, case_ids)

        # A second worker sends the rest at once: no lease has to run out.
        second = worker_for(service, timeout_seconds=2.0, concurrency=2)
        await second.start()
        try:
            # Well before another worker could take over intake entries that
            # the first one read and left (INTAKE_CLAIM_IDLE_MS).
            async with asyncio.timeout(INTAKE_CLAIM_IDLE_MS / 1000 / 3):
                await read_events_until(events, {EventType.DELIVERED: BATCH})
        finally:
            await second.stop()
        stop_lines = [
            record.getMessage()
            for record in caplog.records
            if "gave back" in record.getMessage()
        ]

    given_back = [
        record for record in records.values() if record["status"] != DELIVERED
    ]
    assert len(sent_by_first) == 2
    assert len(given_back) == BATCH - 2
    assert all("lease_owner" not in record for record in given_back)
    assert all(record["attempts"] == "0" for record in given_back)
    assert len(municipality.deliveries) == 2 + BATCH
    assert municipality.duplicates == 0
    assert sorted(municipality.attempts) == sorted(
        delivery.webhook_id for delivery in municipality.deliveries
    )
    # Attempts give back their deliveries together, or one by one when their
    # slot freed up as the worker began to stop. The deliveries not leased
    # yet when it stopped were never taken.
    assert stop_lines
    assert all(
        line.startswith("delivery worker gave back ")
        and line.endswith(f" unsent deliveries consumer={worker.consumer}")
        for line in stop_lines
    )


class WarningSeen(logging.Handler):
    """Sets an event once a WARNING line containing ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text = text
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


async def test_bookkeeping_outlasts_redis_restart(
    key_pair: KeyPair, receiver: tuple[str, MunicipalityReceiver]
) -> None:
    url, municipality = receiver
    municipality.gate = asyncio.Event()
    server = start_redis_server(
        append_only=True, extra_args=["--appendfsync", "always"]
    )
    redis = Redis.from_url(server.url, decode_responses=True)
    watcher = WarningSeen("delivery bookkeeping cannot reach redis")
    logging.getLogger("pairing_service.delivery").addHandler(watcher)
    try:
        events = EventStream(redis)
        await events.ensure_group()
        async with running_service(
            redis, make_registry(key_pair, url), start_worker=False
        ) as service:
            services = service.services
            case_ids = await queue_deliveries(services, 2)
            worker = worker_for(service, timeout_seconds=5.0, concurrency=2)
            await worker.start()
            try:
                await municipality.wait_for_attempts(2)
                # Redis goes down while both requests are in flight, so
                # their bookkeeping fails after the receiver accepted them.
                server.stop()
                municipality.gate.set()
                async with asyncio.timeout(10):
                    await watcher.seen.wait()
                server.restart()
                seen = await read_events_until(events, {EventType.DELIVERED: 2})
            finally:
                await worker.stop()
            cases = [await service.store.get(case_id) for case_id in case_ids]
    finally:
        logging.getLogger("pairing_service.delivery").removeHandler(watcher)
        await redis.aclose()
        server.remove()

    assert {case_id for _kind, case_id in seen} == set(case_ids)
    assert all(case.step is Step.DELIVERED for case in cases)
    assert len(municipality.attempts) == 2
    assert municipality.duplicates == 0


async def test_slow_receiver_limits_lease_ahead(
    redis: Redis, key_pair: KeyPair, receiver: tuple[str, MunicipalityReceiver]
) -> None:
    url, municipality = receiver
    # Requests of half a second: the worker leases for its free slots only,
    # not three ahead per slot, and leaves the rest to other workers.
    municipality.slow_seconds = 0.5
    async with running_service(
        redis, make_registry(key_pair, url), start_worker=False
    ) as service:
        services = service.services
        case_ids = await queue_deliveries(services, 12)
        worker = worker_for(service, timeout_seconds=5.0, concurrency=2)
        await worker.start()
        try:
            # The second round of requests starts after the first two ended.
            await municipality.wait_for_attempts(4)
            records = await raw_records(redis, case_ids)
            # Read after the records, so a request that started in between
            # counts as sent.
            sent = set(municipality.attempts)
        finally:
            await worker.stop()

    leased_unsent = [
        delivery_id
        for delivery_id, record in records.items()
        if "lease_owner" in record and delivery_id not in sent
    ]
    # At most one was leased for a slot that had just freed up.
    assert len(leased_unsent) <= 1
