"""Webhook delivery to a municipality: signing, encryption, retries, dead letters."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from email.utils import format_datetime
from typing import Any

import pytest
from aiohttp import ClientSession
from redis.asyncio import Redis
from standardwebhooks import Webhook

from journey import keys
from journey.events import EventType
from journey.municipalities import MunicipalityRegistry
from journey.package import (
    KeyPair,
    SuiteName,
    decode_private_key,
    open_sealed,
)
from journey.steps import Step
from journey.store import CaseStore
from pairing_service.admin import AdminError, DeliveryAdmin
from pairing_service.config import DEFAULT_DELIVERY_TIMEOUT_SECONDS
from pairing_service.deliveries import DeliveryQueue
from pairing_service.delivery import (
    LEASED_AHEAD_PER_REQUEST,
    DeliveryWorker,
    FailedDelivery,
)
from pairing_service.retry import (
    DEFAULT_RETRY_SCHEDULE,
    MAX_RETRY_AFTER_SECONDS,
    parse_retry_after,
    retry_delay,
)
from pairing_service.services import SERVICES
from pairing_service.timefmt import as_datetime
from sandbox.app_simulator import synthetic_package
from sandbox.municipality_receiver import MunicipalityReceiver, start_receiver
from sandbox.redis_server import free_port
from tests.test_pairing_service import (
    MUNICIPALITY,
    SIGNING_SECRET,
    FakeClock,
    Harness,
    assert_every_key_expires,
    events_of,
    make_registry,
    running_service,
)

SHORT_SCHEDULE = (0.05, 0.05)
"""Two retries within a tenth of a second, so failure paths finish quickly."""


@pytest.fixture(autouse=True)
async def every_key_expires(redis: Redis) -> AsyncIterator[None]:
    yield
    await assert_every_key_expires(redis)


@pytest.fixture
async def service(
    redis: Redis,
    key_pair: KeyPair,
    receiver: tuple[str, MunicipalityReceiver],
) -> AsyncIterator[Harness]:
    url, _state = receiver
    async with running_service(
        redis,
        make_registry(key_pair, url),
        start_worker=True,
        schedule=SHORT_SCHEDULE,
    ) as harness:
        yield harness


async def consent_needed(
    service: Harness, marker: str, *, partner: bool = False
) -> tuple[str, bytes]:
    """Walk a case through the app until it waits for consent."""
    case_id = await service.case_in_app_step(partner=partner)
    package = synthetic_package(marker)
    pairing = await service.create_pairing(case_id)
    await service.simulator().run_journey(
        pairing["app_link"], partner=partner, package=package
    )
    return case_id, package


async def wait_for_event(service: Harness, case_id: str, event_type: EventType) -> None:
    """Wait until the service published ``event_type`` for the case."""
    last_id = "0-0"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response = await service.redis.xread(
            {keys.events(): last_id}, count=100, block=500
        )
        for _stream, entries in response or []:
            for entry_id, fields in entries:
                last_id = entry_id
                if fields["case_id"] == case_id and fields["type"] == event_type:
                    return
    raise AssertionError(f"no {event_type} event for the case")


# --- delivery --------------------------------------------------------------


async def test_consent_delivers_exact_bytes(
    service: Harness, receiver: tuple[str, MunicipalityReceiver]
) -> None:
    _url, municipality = receiver
    case_id, package = await consent_needed(service, "MARKER-delivered")
    response = await service.consent(case_id, "client", True)
    delivered = await municipality.wait_for(1)
    await wait_for_event(service, case_id, EventType.DELIVERED)
    case = await service.store.get(case_id)
    assert response.status == 200
    assert (await response.json())["step"] == "delivering"
    assert delivered[0].plaintext == package
    assert delivered[0].municipality_code == MUNICIPALITY
    assert delivered[0].case_ref == case.ref
    assert [record["role"] for record in delivered[0].consent] == ["client"]
    assert delivered[0].sources["client"][0] == "belastingdienst"
    assert delivered[0].payload["type"] == "package.delivered"
    assert case.step is Step.DELIVERED
    assert case.tombstone
    assert not await service.redis.exists(keys.package(case_id))


async def test_partner_consent_completes_delivery(
    service: Harness, receiver: tuple[str, MunicipalityReceiver]
) -> None:
    _url, municipality = receiver
    case_id, package = await consent_needed(service, "MARKER-partner", partner=True)
    client = await service.consent(case_id, "client", True)
    partner = await service.consent(case_id, "partner", True)
    delivered = await municipality.wait_for(1)
    assert (await client.json())["step"] == "consent_partner"
    assert (await partner.json())["step"] == "delivering"
    assert delivered[0].plaintext == package
    assert [record["role"] for record in delivered[0].consent] == [
        "client",
        "partner",
    ]
    assert set(delivered[0].sources) == {"client", "partner"}


async def test_double_consent_queues_one_delivery(
    service: Harness, receiver: tuple[str, MunicipalityReceiver]
) -> None:
    _url, municipality = receiver
    case_id, _package = await consent_needed(service, "MARKER-double")
    answers = await asyncio.gather(
        *(service.consent(case_id, "client", True) for _ in range(5))
    )
    await municipality.wait_for(1)
    await wait_for_event(service, case_id, EventType.DELIVERED)
    statuses = sorted(answer.status for answer in answers)
    assert statuses == [200, 409, 409, 409, 409]
    assert len(set(municipality.attempts)) == 1


async def test_failing_receiver_retried_same_id(
    service: Harness, receiver: tuple[str, MunicipalityReceiver]
) -> None:
    _url, municipality = receiver
    municipality.fail_next(2, status=500)
    case_id, package = await consent_needed(service, "MARKER-retry")
    await service.consent(case_id, "client", True)
    delivered = await municipality.wait_for(1)
    await wait_for_event(service, case_id, EventType.DELIVERED)
    case = await service.store.get(case_id)
    assert len(municipality.attempts) == 3
    assert len(set(municipality.attempts)) == 1
    assert municipality.attempts[0] == case.delivery_id
    assert len(delivered) == 1
    assert municipality.duplicates == 0
    assert delivered[0].plaintext == package


async def test_receiver_down_goes_to_dead_letters(
    redis: Redis, key_pair: KeyPair
) -> None:
    closed_url = f"http://127.0.0.1:{free_port()}/webhook"
    async with running_service(
        redis,
        make_registry(key_pair, closed_url),
        start_worker=True,
        schedule=SHORT_SCHEDULE,
    ) as service:
        case_id, _package = await consent_needed(service, "MARKER-down")
        await service.consent(case_id, "client", True)
        await wait_for_event(service, case_id, EventType.DELIVERY_FAILED)
        case = await service.store.get(case_id)
        dead = [
            json.loads(entry)
            for entry in await redis.lrange(keys.dead_letters(), 0, -1)
        ]
        events = await events_of(redis, case_id)
    assert case.step is Step.DELIVERY_FAILED
    assert len(dead) == 1
    assert dead[0]["attempts"] == len(SHORT_SCHEDULE) + 1
    assert dead[0]["case_ref"] == case.ref
    assert "case_id" not in dead[0]
    assert events[-1].data["attempts"] == len(SHORT_SCHEDULE) + 1
    assert 0 < await redis.ttl(keys.dead_letters()) <= keys.DEAD_LETTER_TTL_SECONDS


async def test_gone_receiver_fails_at_once(
    service: Harness, receiver: tuple[str, MunicipalityReceiver]
) -> None:
    _url, municipality = receiver
    municipality.fail_next(5, status=410)
    case_id, _package = await consent_needed(service, "MARKER-gone")
    await service.consent(case_id, "client", True)
    await wait_for_event(service, case_id, EventType.DELIVERY_FAILED)
    dead = json.loads(str(await service.redis.lindex(keys.dead_letters(), 0)))
    assert len(municipality.attempts) == 1
    assert dead["reason"] == "endpoint_gone"


async def test_timeout_then_retry_counts_duplicate(
    redis: Redis,
    key_pair: KeyPair,
    receiver: tuple[str, MunicipalityReceiver],
) -> None:
    url, municipality = receiver
    municipality.slow_seconds = 1.0
    async with running_service(
        redis,
        make_registry(key_pair, url),
        start_worker=True,
        schedule=SHORT_SCHEDULE,
        timeout_seconds=0.3,
    ) as service:
        case_id, package = await consent_needed(service, "MARKER-slow")
        await service.consent(case_id, "client", True)
        await municipality.wait_for_attempts(1)
        municipality.slow_seconds = 0.0
        delivered = await municipality.wait_for(1)
        # The first request, cut off by the sender, still completes at the
        # receiver, which must recognise it by its webhook-id.
        await municipality.wait_until(lambda: municipality.duplicates == 1)
        await wait_for_event(service, case_id, EventType.DELIVERED)
    assert len(delivered) == 1
    assert len(set(municipality.attempts)) == 1
    assert delivered[0].plaintext == package


async def test_queue_survives_worker_downtime(
    redis: Redis,
    key_pair: KeyPair,
    receiver: tuple[str, MunicipalityReceiver],
) -> None:
    url, municipality = receiver
    async with running_service(
        redis, make_registry(key_pair, url), start_worker=False
    ) as service:
        case_id, package = await consent_needed(service, "MARKER-restart")
        await service.consent(case_id, "client", True)
        assert municipality.attempts == []

        app = service.client.app
        assert app is not None
        worker = DeliveryWorker(
            app[SERVICES], schedule=SHORT_SCHEDULE, timeout_seconds=2.0
        )
        await worker.start()
        try:
            delivered = await municipality.wait_for(1)
            await wait_for_event(service, case_id, EventType.DELIVERED)
        finally:
            await worker.stop()
    assert delivered[0].plaintext == package


async def test_two_workers_send_once(
    redis: Redis,
    key_pair: KeyPair,
    receiver: tuple[str, MunicipalityReceiver],
) -> None:
    url, municipality = receiver
    municipality.slow_seconds = 0.3
    async with running_service(
        redis, make_registry(key_pair, url), start_worker=True
    ) as service:
        app = service.client.app
        assert app is not None
        second = DeliveryWorker(
            app[SERVICES], schedule=SHORT_SCHEDULE, timeout_seconds=2.0
        )
        await second.start()
        try:
            cases = [
                (await consent_needed(service, f"MARKER-two-{index}"))[0]
                for index in range(3)
            ]
            for case_id in cases:
                await service.consent(case_id, "client", True)
            await municipality.wait_for(3)
            for case_id in cases:
                await wait_for_event(service, case_id, EventType.DELIVERED)
        finally:
            await second.stop()
    assert len(municipality.attempts) == 3
    assert len(set(municipality.attempts)) == 3
    assert municipality.duplicates == 0


async def test_lease_is_exclusive(redis: Redis) -> None:
    clock = FakeClock()
    store = CaseStore(redis, clock=clock)
    case, _token = await store.create(MUNICIPALITY)
    queue = DeliveryQueue(redis, clock=clock)
    await queue.enqueue("msg_lease", case)
    first, second = await asyncio.gather(
        queue.lease("msg_lease", "worker-a", seconds=60),
        queue.lease("msg_lease", "worker-b", seconds=60),
    )
    leased = [record for record in (first, second) if record is not None]
    assert len(leased) == 1
    assert leased[0].attempts == 1
    assert await queue.due(limit=10) == []


async def test_expired_lease_is_taken_over(redis: Redis) -> None:
    clock = FakeClock()
    store = CaseStore(redis, clock=clock)
    case, _token = await store.create(MUNICIPALITY)
    queue = DeliveryQueue(redis, clock=clock)
    await queue.enqueue("msg_takeover", case)
    stale = await queue.lease("msg_takeover", "worker-a", seconds=60)
    clock.advance(61)
    fresh = await queue.lease("msg_takeover", "worker-b", seconds=60)
    assert stale is not None
    assert fresh is not None
    assert fresh.attempts == 2
    assert not await queue.release(stale, "worker-a", status="delivered")
    assert await queue.release(fresh, "worker-b", status="delivered")


# --- the reference receiver ------------------------------------------------


def _signed_request(body: bytes, delivery_id: str) -> dict[str, str]:
    moment = as_datetime(time.time())
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": Webhook(SIGNING_SECRET).sign(delivery_id, moment, body),
        "Content-Type": "application/json",
    }


async def test_receiver_rejects_bad_signature(
    receiver: tuple[str, MunicipalityReceiver],
) -> None:
    url, municipality = receiver
    body = b'{"type":"package.delivered","data":{}}'
    headers = _signed_request(body, "msg_forged")
    headers["webhook-signature"] = "v1," + base64.b64encode(b"x" * 32).decode()
    async with (
        ClientSession() as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        status = response.status
    assert status == 401
    assert municipality.rejected == ["invalid_signature"]
    assert municipality.deliveries == []


async def test_receiver_rejects_old_timestamp(
    receiver: tuple[str, MunicipalityReceiver],
) -> None:
    url, municipality = receiver
    body = b"{}"
    moment = as_datetime(time.time() - 600)
    headers = {
        "webhook-id": "msg_old",
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": Webhook(SIGNING_SECRET).sign("msg_old", moment, body),
    }
    async with (
        ClientSession() as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        status = response.status
    assert status == 401
    assert municipality.rejected == ["timestamp_out_of_range"]


async def test_receiver_drops_replayed_id(
    service: Harness, receiver: tuple[str, MunicipalityReceiver]
) -> None:
    url, municipality = receiver
    case_id, _package = await consent_needed(service, "MARKER-replay")
    await service.consent(case_id, "client", True)
    first = (await municipality.wait_for(1))[0]
    await wait_for_event(service, case_id, EventType.DELIVERED)

    body = json.dumps(first.payload).encode()
    async with (
        ClientSession() as session,
        session.post(
            url, data=body, headers=_signed_request(body, first.webhook_id)
        ) as response,
    ):
        status = response.status
    assert status == 200
    assert municipality.duplicates == 1
    assert len(municipality.deliveries) == 1


async def test_receiver_rejects_tampered_binding(
    service: Harness, receiver: tuple[str, MunicipalityReceiver]
) -> None:
    url, municipality = receiver
    case_id, _package = await consent_needed(service, "MARKER-tamper")
    await service.consent(case_id, "client", True)
    first = (await municipality.wait_for(1))[0]
    await wait_for_event(service, case_id, EventType.DELIVERED)

    payload: dict[str, Any] = json.loads(json.dumps(first.payload))
    payload["data"]["case_ref"] = "GV-0000000000"
    body = json.dumps(payload).encode()
    async with (
        ClientSession() as session,
        session.post(
            url, data=body, headers=_signed_request(body, "msg_tampered")
        ) as response,
    ):
        status = response.status
    assert status == 422
    assert municipality.rejected == ["decryption_failed"]


# --- retry arithmetic ------------------------------------------------------


def test_retry_delay_stays_below_schedule() -> None:
    schedule = (5.0, 30.0, 120.0)
    for attempt, maximum in enumerate(schedule, start=1):
        for _draw in range(50):
            delay = retry_delay(attempt, schedule)
            assert delay is not None
            assert 0 <= delay <= maximum


def test_retry_delay_ends_after_schedule() -> None:
    assert retry_delay(3, (5.0, 30.0)) is None


def test_retry_after_raises_delay() -> None:
    delay = retry_delay(1, (5.0,), retry_after=120, jitter=lambda _maximum: 1.0)
    assert delay == 120


def test_retry_after_is_capped() -> None:
    delay = retry_delay(1, (5.0,), retry_after=10**6, jitter=lambda _maximum: 1.0)
    assert delay == MAX_RETRY_AFTER_SECONDS


def test_retry_after_never_shortens() -> None:
    delay = retry_delay(1, (5.0,), retry_after=0, jitter=lambda _maximum: 4.0)
    assert delay == 4.0


def test_parse_retry_after_forms() -> None:
    now = 1_800_000_000.0
    in_a_minute = format_datetime(as_datetime(now + 60), usegmt=True)
    assert parse_retry_after("30", now=now) == 30
    assert parse_retry_after(in_a_minute, now=now) == 60
    assert parse_retry_after("morgen", now=now) is None
    assert parse_retry_after(None, now=now) is None


# --- must-show cases: verification, final failure, 410, Retry-After ---------


class LogSignal(logging.Handler):
    """Sets an event when a log record's message contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__(level=logging.DEBUG)
        self.text = text
        self.seen = asyncio.Event()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.records.append(record)
            self.seen.set()


@contextlib.contextmanager
def log_signal(text: str) -> Iterator[LogSignal]:
    """Attach a ``LogSignal`` to the root logger for the block."""
    handler = LogSignal(text)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def worker_for(service: Harness, **options: Any) -> DeliveryWorker:
    """Return a delivery worker on the harness's services, not yet started."""
    options.setdefault("schedule", SHORT_SCHEDULE)
    options.setdefault("timeout_seconds", 2.0)
    return DeliveryWorker(service.services, **options)


async def test_two_failures_then_delivered_once(
    service: Harness, receiver: tuple[str, MunicipalityReceiver], key_pair: KeyPair
) -> None:
    _url, municipality = receiver
    municipality.fail_next(2, status=500)
    case_id, package = await consent_needed(service, "MARKER-500-500-200")
    await service.consent(case_id, "client", True)
    await municipality.wait_for(1)
    await wait_for_event(service, case_id, EventType.DELIVERED)
    case = await service.store.get(case_id)

    statuses = [request.status for request in municipality.requests]
    accepted = [request for request in municipality.requests if request.status == 200]
    assert statuses == [500, 500, 200]
    assert {request.webhook_id for request in municipality.requests} == {
        case.delivery_id
    }
    assert len(accepted) == 1
    # The library's own verify, independent of the kit the receiver uses.
    payload = Webhook(SIGNING_SECRET).verify(accepted[0].body, accepted[0].headers)
    sealed = payload["data"]["package"]
    plaintext = open_sealed(
        base64.b64decode(sealed["ciphertext"]),
        private_key=decode_private_key(key_pair.private_key, key_pair.suite),
        suite=SuiteName(sealed["suite"]),
        case_ref=payload["data"]["case_ref"],
        municipality_code=payload["data"]["municipality_code"],
    )
    assert plaintext == package
    assert sealed["key_id"] == "zwolle-test-01"
    assert payload["data"]["consent"][0]["role"] == "client"
    assert sealed["sha256"] == hashlib.sha256(package).hexdigest()


async def test_final_failure_tells_client_and_support(
    redis: Redis, key_pair: KeyPair
) -> None:
    closed_url = f"http://127.0.0.1:{free_port()}/webhook"
    notified: list[FailedDelivery] = []

    async def notify_support(failed: FailedDelivery) -> None:
        notified.append(failed)

    async with running_service(
        redis, make_registry(key_pair, closed_url), start_worker=False
    ) as service:
        worker = worker_for(service, notify_support=notify_support)
        await worker.start()
        try:
            with log_signal("delivery failed for good") as support_line:
                case_id, _package = await consent_needed(service, "MARKER-final")
                await service.consent(case_id, "client", True)
                await wait_for_event(service, case_id, EventType.DELIVERY_FAILED)
                await asyncio.wait_for(support_line.seen.wait(), 10)
        finally:
            await worker.stop()
        case = await service.store.get(case_id)
        events = await events_of(redis, case_id)
        dead = await DeliveryQueue(redis, clock=time.time).dead_letters()

    assert case.step is Step.DELIVERY_FAILED
    assert events[-1].type is EventType.DELIVERY_FAILED
    assert events[-1].data["reason"] == "ClientConnectorError"
    assert support_line.records[0].levelno == logging.ERROR
    assert case.ref in support_line.records[0].getMessage()
    assert [entry["delivery_id"] for entry in dead] == [case.delivery_id]
    assert [failed.case_ref for failed in notified] == [case.ref]
    assert notified[0].attempts == len(SHORT_SCHEDULE) + 1


async def test_gone_disables_endpoint_until_enabled(
    service: Harness, receiver: tuple[str, MunicipalityReceiver]
) -> None:
    _url, municipality = receiver
    municipality.fail_next(1, status=410)
    first_id, _package = await consent_needed(service, "MARKER-gone-1")
    await service.consent(first_id, "client", True)
    await wait_for_event(service, first_id, EventType.DELIVERY_FAILED)
    flag_ttl = await service.redis.ttl(keys.endpoint_disabled(MUNICIPALITY))

    second_id, package = await consent_needed(service, "MARKER-gone-2")
    await service.consent(second_id, "client", True)
    await wait_for_event(service, second_id, EventType.DELIVERY_FAILED)
    second = await service.store.get(second_id)
    dead = await DeliveryQueue(service.redis, clock=time.time).dead_letters()
    requests_while_disabled = len(municipality.attempts)

    admin = DeliveryAdmin(service.redis, schedule=SHORT_SCHEDULE)
    with pytest.raises(AdminError, match="enable-endpoint"):
        await admin.redeliver(second.delivery_id)
    await admin.enable_endpoint(MUNICIPALITY)
    await admin.redeliver(second.delivery_id)
    delivered = await municipality.wait_for(1)
    await wait_for_event(service, second_id, EventType.DELIVERED)

    assert 0 < flag_ttl <= keys.ENDPOINT_DISABLED_TTL_SECONDS
    assert requests_while_disabled == 1
    assert dead[0]["reason"] == "endpoint_disabled"
    assert dead[1]["reason"] == "endpoint_gone"
    assert not await service.redis.exists(keys.endpoint_disabled(MUNICIPALITY))
    assert delivered[0].plaintext == package
    assert delivered[0].webhook_id == second.delivery_id


async def test_redeliver_reuses_webhook_id(
    service: Harness, receiver: tuple[str, MunicipalityReceiver]
) -> None:
    _url, municipality = receiver
    municipality.fail_next(len(SHORT_SCHEDULE) + 1, status=503)
    case_id, package = await consent_needed(service, "MARKER-redeliver")
    await service.consent(case_id, "client", True)
    await wait_for_event(service, case_id, EventType.DELIVERY_FAILED)
    failed = await service.store.get(case_id)
    admin = DeliveryAdmin(service.redis, schedule=SHORT_SCHEDULE)
    listed = await admin.dead_letters()

    record = await admin.redeliver(failed.delivery_id)
    delivered = await municipality.wait_for(1)
    await wait_for_event(service, case_id, EventType.DELIVERED)
    case = await service.store.get(case_id)

    assert [entry["delivery_id"] for entry in listed] == [failed.delivery_id]
    assert record.attempts == 0
    assert set(municipality.attempts) == {failed.delivery_id}
    assert len(municipality.attempts) == len(SHORT_SCHEDULE) + 2
    assert delivered[0].plaintext == package
    assert case.tombstone
    assert await admin.dead_letters() == []
    with pytest.raises(AdminError, match="only a failed delivery"):
        await admin.redeliver(failed.delivery_id)


async def test_redeliver_unknown_id_is_rejected(redis: Redis) -> None:
    admin = DeliveryAdmin(redis, schedule=SHORT_SCHEDULE)
    with pytest.raises(AdminError, match="not found"):
        await admin.redeliver("msg_unknown")


async def test_retry_after_sets_next_attempt(
    redis: Redis, key_pair: KeyPair, receiver: tuple[str, MunicipalityReceiver]
) -> None:
    url, municipality = receiver
    municipality.fail_next(1, status=503, headers={"Retry-After": "120"})
    clock = FakeClock()
    async with running_service(
        redis, make_registry(key_pair, url), clock=clock, start_worker=False
    ) as service:
        worker = worker_for(service)
        await worker.start()
        try:
            with log_signal("delivery attempt failed") as retry_line:
                case_id, package = await consent_needed(service, "MARKER-after")
                await service.consent(case_id, "client", True)
                await asyncio.wait_for(retry_line.seen.wait(), 10)
            case = await service.store.get(case_id)
            next_at = await redis.zscore(keys.delivery_schedule(), case.delivery_id)
            waited_until = clock.now
            clock.advance(120)
            delivered = await municipality.wait_for(1)
        finally:
            await worker.stop()
    assert next_at is not None
    assert next_at - waited_until == pytest.approx(120, abs=0.01)
    assert len(municipality.attempts) == 2
    assert delivered[0].plaintext == package


async def test_rotation_sends_two_signatures(redis: Redis, key_pair: KeyPair) -> None:
    new_secret = "whsec_" + base64.b64encode(b"n" * 32).decode()
    runner, url, municipality = await start_receiver(
        secret=SIGNING_SECRET, private_key=key_pair.private_key
    )
    document = make_registry(key_pair, url)
    zwolle = document.get(MUNICIPALITY)
    assert zwolle is not None
    rotating = dataclasses.replace(
        zwolle, signing_secret=new_secret, previous_signing_secret=SIGNING_SECRET
    )
    try:
        async with running_service(
            redis, MunicipalityRegistry([rotating]), start_worker=True
        ) as service:
            case_id, package = await consent_needed(service, "MARKER-rotation")
            await service.consent(case_id, "client", True)
            delivered = await municipality.wait_for(1)
            await wait_for_event(service, case_id, EventType.DELIVERED)
    finally:
        await runner.cleanup()
    request = municipality.requests[0]
    signatures = request.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    assert Webhook(new_secret).verify(request.body, request.headers)
    assert Webhook(SIGNING_SECRET).verify(request.body, request.headers)
    assert delivered[0].plaintext == package


def test_default_request_timeout_is_15_seconds() -> None:
    assert DEFAULT_DELIVERY_TIMEOUT_SECONDS == 15.0


def test_default_schedule_is_documented() -> None:
    assert DEFAULT_RETRY_SCHEDULE == (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800)


@pytest.mark.parametrize(
    ("timeout_seconds", "lease_seconds"), [(2.0, 60.0), (15.0, 75.0), (45.0, 225.0)]
)
async def test_lease_outlasts_queued_requests(
    service: Harness, timeout_seconds: float, lease_seconds: float
) -> None:
    # An attempt leased ahead waits for up to LEASED_AHEAD_PER_REQUEST
    # requests per slot before it sends its own. A shorter lease lets a
    # second worker send the same delivery while the first one still waits.
    worker = worker_for(service, timeout_seconds=timeout_seconds)
    assert worker.lease_seconds == lease_seconds
    assert worker.lease_seconds > (LEASED_AHEAD_PER_REQUEST + 1) * timeout_seconds
