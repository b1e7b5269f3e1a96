"""Benchmark: deliveries per second of one delivery worker, against bare POSTs.

Run: ``/work/venv/bin/python bench/bench_delivery.py``. It starts a private
redis-server and the sandbox municipality receiver (which verifies, checks the
id and decrypts every request), then per round:

- baseline: an aiohttp loop POSTs the same number of pre-signed deliveries to
  the receiver, with as many requests in flight as the worker keeps;
- worker: ``DeliveryWorker`` sends queued deliveries to the same receiver,
  timed from its start until the last ``delivered`` event.

It prints the median rate of each and their ratio; the goal is at least 0.7.
With ``--service-client`` the one Redis client of the bench and its worker is
made as the service makes it (``journey.redis_client.connect`` with the
service's timeouts), so redis-py wraps every send in ``asyncio.wait_for``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import secrets
import statistics
import time
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from journey import keys
from journey.events import BOT_GROUP, EventStream, EventType
from journey.municipalities import MunicipalityRegistry
from journey.package import SuiteName, decode_public_key, generate_key_pair, seal
from journey.redis_client import connect
from journey.steps import Event, Step
from pairing_service.app import (
    REDIS_CONNECT_TIMEOUT_SECONDS,
    REDIS_SOCKET_TIMEOUT_SECONDS,
)
from pairing_service.config import Settings
from pairing_service.consent import record_consent
from pairing_service.delivery import DeliveryWorker
from pairing_service.packages import store_sealed
from pairing_service.services import Services
from pairing_service.webhook import signed_headers
from sandbox.municipality_receiver import start_receiver
from sandbox.redis_server import start_redis_server

DELIVERIES = 300
ROUNDS = 5
CONCURRENCY = 8
PACKAGE_BYTES = 16 * 1024
CODE = "GM0193"
SECRET = "whsec_" + base64.b64encode(b"b" * 32).decode()


async def prepare(services: Services, count: int) -> None:
    """Queue ``count`` deliveries, each with a sealed package, as consent does."""
    municipality = services.registry.get(CODE)
    assert municipality is not None
    for index in range(count):
        case, _token = await services.store.create(
            CODE, step=Step.FETCHING, chat_id=500_000 + index
        )
        sealed = seal(
            secrets.token_bytes(PACKAGE_BYTES),
            public_key=municipality.public_key,
            suite=municipality.suite,
            key_id=municipality.key_id,
            case_ref=case.ref,
            municipality_code=CODE,
        )
        await store_sealed(services, case.case_id, sealed)
        await services.store.apply(
            case.case_id,
            Event.PACKAGE_RECEIVED,
            updates={"package_digest": sealed.sha256},
        )
        await record_consent(services, case.case_id, "client", True)


async def worker_round(services: Services, events: EventStream) -> float:
    """Return deliveries per second of one worker over ``DELIVERIES``."""
    await prepare(services, DELIVERIES)
    worker = DeliveryWorker(
        services, schedule=(0.01,), timeout_seconds=15.0, concurrency=CONCURRENCY
    )
    started = time.perf_counter()
    await worker.start()
    delivered = 0
    try:
        while delivered < DELIVERIES:
            batch = await events.read("bench", count=500, block_ms=1000)
            # One XACK per batch, so the bench's own bookkeeping costs the
            # worker's event loop one round trip per read, not per delivery.
            if batch:
                await services.redis.xack(
                    keys.events(), BOT_GROUP, *(event.stream_id for event in batch)
                )
            delivered += sum(event.type is EventType.DELIVERED for event in batch)
    finally:
        elapsed = time.perf_counter() - started
        await worker.stop()
    return DELIVERIES / elapsed


async def baseline_round(url: str, public_key: str) -> float:
    """Return requests per second of a bare POST loop with the same bodies."""
    queue: asyncio.Queue[tuple[bytes, dict[str, str]]] = asyncio.Queue()
    for body in _signed_bodies(public_key):
        queue.put_nowait(body)

    async def send(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            body, headers = queue.get_nowait()
            headers = signed_headers(
                SECRET, headers["webhook-id"], body, now=time.time()
            )
            async with session.post(url, data=body, headers=headers) as response:
                assert response.status == 200, await response.text()

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(send(session) for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    return DELIVERIES / elapsed


def _signed_bodies(public_key_text: str) -> list[tuple[bytes, dict[str, str]]]:
    # Bodies shaped like the service's, sealed in advance: the loop only posts.
    public_key = decode_public_key(public_key_text, SuiteName.X25519)
    bodies = []
    for index in range(DELIVERIES):
        case_ref = f"GV-{index:010d}"
        sealed = seal(
            secrets.token_bytes(PACKAGE_BYTES),
            public_key=public_key,
            suite=SuiteName.X25519,
            key_id="bench",
            case_ref=case_ref,
            municipality_code=CODE,
        )
        body = (
            '{"type":"package.delivered","timestamp":"2026-12-04T10:00:00Z",'
            f'"data":{{"case_ref":"{case_ref}","municipality_code":"{CODE}",'
            '"consent":[],"sources":{},"package":{"format":"gv-package/1",'
            f'"suite":"X25519","key_id":"bench","sha256":"{sealed.sha256}",'
            f'"size":{sealed.size},"ciphertext":'
            f'"{base64.b64encode(sealed.ciphertext).decode()}"}}}}}}'
        ).encode()
        bodies.append((body, {"webhook-id": "msg_" + secrets.token_urlsafe(16)}))
    return bodies


async def main(*, service_client: bool) -> None:
    """Run the rounds and print the medians and their ratio."""
    server = start_redis_server()
    if service_client:
        redis = connect(
            server.url,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS,
            socket_timeout=REDIS_SOCKET_TIMEOUT_SECONDS,
        )
    else:
        redis = Redis.from_url(server.url, decode_responses=True)
    key_pair = generate_key_pair()
    runner, url, _receiver = await start_receiver(
        secret=SECRET, private_key=key_pair.private_key
    )
    registry = MunicipalityRegistry.from_document(
        {
            "municipalities": [
                {
                    "code": CODE,
                    "name": "Zwolle",
                    "participates": True,
                    "webhook_url": url,
                    "signing_secret": SECRET,
                    "hpke": {
                        "suite": key_pair.suite.value,
                        "key_id": "bench",
                        "public_key": key_pair.public_key,
                    },
                }
            ]
        }
    )
    settings = Settings(
        service_token="bench-" + "x" * 32,
        public_base_url="https://koppel.example.test",
        bot_username="gv_bench_bot",
        registry_path=Path("unused.json"),
        delivery_retry_schedule=(0.01,),
    )
    services = Services.build(settings, redis, registry, time.time)
    events = EventStream(redis)
    await events.ensure_group()
    baseline_rates: list[float] = []
    worker_rates: list[float] = []
    try:
        for round_number in range(ROUNDS):
            baseline_rates.append(await baseline_round(url, key_pair.public_key))
            worker_rates.append(await worker_round(services, events))
            print(
                f"round {round_number + 1}: baseline {baseline_rates[-1]:.0f}/s "
                f"worker {worker_rates[-1]:.0f}/s "
                f"ratio {worker_rates[-1] / baseline_rates[-1]:.2f}",
                flush=True,
            )
    finally:
        await runner.cleanup()
        await redis.aclose()
        server.stop()
    baseline = statistics.median(baseline_rates)
    worker = statistics.median(worker_rates)
    client = "the service's client" if service_client else "a plain client"
    print(
        f"{DELIVERIES} deliveries of {PACKAGE_BYTES // 1024} KiB, "
        f"{CONCURRENCY} in flight, median of {ROUNDS} rounds, Redis through {client}"
    )
    print(f"bare aiohttp POST loop (baseline): {baseline:.0f} per second")
    print(f"delivery worker: {worker:.0f} per second")
    print(f"ratio worker / baseline: {worker / baseline:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--service-client",
        action="store_true",
        help="make the Redis client with the service's socket timeouts",
    )
    arguments = parser.parse_args()
    asyncio.run(main(service_client=arguments.service_client))
