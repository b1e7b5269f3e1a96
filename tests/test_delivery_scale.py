"""Two delivery workers, a slow receiver that fails half the time, 1,000 deliveries.

Each delivery must be accepted by the receiver exactly once: no request after
the one that succeeded, and never two requests for one delivery at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from journey import keys
from journey.events import EventStream, EventType
from journey.package import KeyPair, seal
from journey.steps import Event, Step
from pairing_service.consent import record_consent
from pairing_service.delivery import DeliveryWorker
from pairing_service.packages import store_sealed
from pairing_service.services import SERVICES, Services
from sandbox.municipality_receiver import MunicipalityReceiver, start_receiver
from sandbox.redis_server import RedisServer
from tests.test_pairing_service import (
    MUNICIPALITY,
    SIGNING_SECRET,
    assert_every_key_expires,
    make_registry,
    running_service,
)

DELIVERIES = 1000
SCHEDULE = (0.01,) * 20
"""Twenty retries of at most 10 ms: at a failure rate of one half, a delivery
exhausts them with probability 2**-21, and the test stays fast."""

RECEIVER_DELAY_SECONDS = 0.01
FAILURE_RATIO = 0.5
WORKER_CONCURRENCY = 16
SETUP_BATCH = 50
"""Cases prepared concurrently during setup."""

BOT_CONSUMER = "scale-test"


@pytest.fixture
async def receiver(
    key_pair: KeyPair,
) -> AsyncIterator[tuple[str, MunicipalityReceiver]]:
    runner, url, state = await start_receiver(
        secret=SIGNING_SECRET, private_key=key_pair.private_key
    )
    state.slow_seconds = RECEIVER_DELAY_SECONDS
    state.fail_ratio = FAILURE_RATIO
    state.rng = random.Random(20261204)
    yield url, state
    await runner.cleanup()


async def case_waiting_for_consent(services: Services, index: int) -> str:
    """Create a case that has a sealed package and waits for consent."""
    case, _token = await services.store.create(
        MUNICIPALITY, step=Step.FETCHING, chat_id=100_000 + index
    )
    municipality = services.registry.get(MUNICIPALITY)
    assert municipality is not None
    sealed = seal(
        f"package {index} ".encode() * 64,
        public_key=municipality.public_key,
        suite=municipality.suite,
        key_id=municipality.key_id,
        case_ref=case.ref,
        municipality_code=MUNICIPALITY,
    )
    assert await store_sealed(services, case.case_id, sealed) is not None
    await services.store.apply(
        case.case_id,
        Event.PACKAGE_RECEIVED,
        updates={"package_digest": sealed.sha256},
    )
    return case.case_id


async def count_delivered(events: EventStream, expected: int) -> int:
    """Read and delete events until ``expected`` deliveries were confirmed."""
    delivered = 0
    # A hang guard only: the deliveries take about 10 s on two loaded cores.
    async with asyncio.timeout(90):
        while delivered < expected:
            for event in await events.read(BOT_CONSUMER, count=500, block_ms=500):
                await events.ack(event)
                if event.type is EventType.DELIVERED:
                    delivered += 1
    return delivered


async def test_two_workers_deliver_each_once(
    redis: Redis,
    redis_server: RedisServer,
    key_pair: KeyPair,
    receiver: tuple[str, MunicipalityReceiver],
) -> None:
    url, municipality = receiver
    registry = make_registry(key_pair, url)
    events = EventStream(redis)
    await events.ensure_group()
    second_redis = Redis.from_url(redis_server.url, decode_responses=True)

    async with running_service(
        redis, registry, start_worker=False, schedule=SCHEDULE
    ) as service:
        app = service.client.app
        assert app is not None
        services = app[SERVICES]
        # The second worker has its own Redis connection, as a second process would.
        other = Services.build(
            services.settings, second_redis, registry, services.clock
        )
        workers = [
            DeliveryWorker(
                shared,
                schedule=SCHEDULE,
                timeout_seconds=5.0,
                concurrency=WORKER_CONCURRENCY,
            )
            for shared in (services, other)
        ]

        case_ids: list[str] = []
        for start in range(0, DELIVERIES, SETUP_BATCH):
            batch = range(start, min(start + SETUP_BATCH, DELIVERIES))
            case_ids += await asyncio.gather(
                *(case_waiting_for_consent(services, index) for index in batch)
            )
        for worker in workers:
            await worker.start()
        try:
            for start in range(0, DELIVERIES, SETUP_BATCH):
                await asyncio.gather(
                    *(
                        record_consent(services, case_id, "client", True)
                        for case_id in case_ids[start : start + SETUP_BATCH]
                    )
                )
            delivered_events = await count_delivered(events, DELIVERIES)
        finally:
            for worker in workers:
                await worker.stop()
            await second_redis.aclose()
        cases = [await service.store.get(case_id) for case_id in case_ids]

    accepted_ids = [delivery.webhook_id for delivery in municipality.deliveries]
    failed_requests = sum(
        1 for request in municipality.requests if request.status == 500
    )
    sent = [worker.requests_sent for worker in workers]
    assert delivered_events == DELIVERIES
    assert len(accepted_ids) == DELIVERIES
    assert len(set(accepted_ids)) == DELIVERIES
    assert set(accepted_ids) == {case.delivery_id for case in cases}
    assert municipality.duplicates == 0
    assert municipality.overlaps == 0
    assert municipality.rejected == []
    assert all(count > 0 for count in sent)
    assert sum(sent) == len(municipality.attempts)
    assert 0.4 < failed_requests / len(municipality.attempts) < 0.6
    assert all(case.step is Step.DELIVERED for case in cases)
    assert await redis.llen(keys.dead_letters()) == 0
    await assert_every_key_expires(redis)
