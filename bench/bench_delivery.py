"""Benchmark: deliveries per second of the delivery worker, against bare POSTs.

Run: ``.venv/bin/python bench/bench_delivery.py``. It starts a private
redis-server. For each sender of each round it starts the sandbox
municipality receiver in a process of its own, which verifies the signature,
checks the id and decrypts every request. Per round:

- baseline: a process of its own runs a bare aiohttp loop that POSTs the same
  number of deliveries, sealed and shaped in advance, to the receiver, with as
  many requests in flight as the worker keeps;
- worker: ``python -m pairing_service`` runs as it does in production, with
  its delivery worker, and sends the deliveries queued beforehand through
  ``record_consent`` to the same receiver. It is timed from its ``delivery
  worker started`` log line until the bench, standing in for the bot, has read
  the last ``delivered`` event.

The bench's process times both senders, and reads each sender's CPU time (user
plus system, from ``/proc``, so Linux only) at the start and at the end. It
prints the medians of the rate and of the CPU per delivery, and their ratios.
The goal is a rate ratio of at least 0.7.

``--one-process`` runs the earlier form of this bench: the receiver, the loop,
the worker and the reading of the events share the bench's event loop. With
``--service-client`` that form makes its one Redis client as the service does
(``journey.redis_client.connect`` with the service's timeouts).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from sandbox.redis_server import free_port, start_redis_server

DELIVERIES = 300
"""Deliveries per round of the one-process form."""

PROCESS_DELIVERIES = 1000
"""Deliveries per round with the senders in their own processes. /proc counts
CPU time in clock ticks (10 ms at the usual 100 Hz), so a round must last
long enough for a tick to be a small part of it."""

ROUNDS = 5
CONCURRENCY = 8

READ_INTERVAL_SECONDS = 0.01
"""Pause between the bench's reads of the event stream. A round of 1000
deliveries lasts about a second, so the end is seen at most 1 % late."""
PACKAGE_BYTES = 16 * 1024
CODE = "GM0193"
SECRET = "whsec_" + base64.b64encode(b"b" * 32).decode()
SERVICE_TOKEN = "bench-" + "x" * 32

START_TIMEOUT_SECONDS = 60.0
"""Upper bound for a child process's interpreter start, imports and first line."""

PRIVATE_KEY_VARIABLE = "BENCH_RECEIVER_PRIVATE_KEY"
"""The environment variable that hands the receiver process its private key."""


@dataclass(frozen=True, slots=True)
class Measurement:
    """One sender's round: deliveries per second and CPU seconds per delivery."""

    rate: float
    cpu_per_delivery: float | None
    """None in the one-process form, where the senders share one process."""
    others: dict[str, float] = field(default_factory=dict)
    """CPU seconds per delivery of the other processes in the same time."""


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time of a process so far, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # proc(5): utime and stime are fields 14 and 15. The fields after the
    # command name in brackets start with field 3.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    """Return ``cpu_seconds`` of each named process."""
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def per_delivery(
    start: dict[str, float], end: dict[str, float], count: int
) -> dict[str, float]:
    """Return the CPU seconds per delivery of each process between two readings."""
    return {name: (end[name] - start[name]) / count for name in start}


def registry_document(url: str, public_key: str) -> dict[str, Any]:
    """Return the registry of the one municipality, which sends to ``url``."""
    return {
        "municipalities": [
            {
                "code": CODE,
                "name": "Zwolle",
                "participates": True,
                "webhook_url": url,
                "signing_secret": SECRET,
                "hpke": {
                    "suite": SuiteName.X25519.value,
                    "key_id": "bench",
                    "public_key": public_key,
                },
            }
        ]
    }


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


async def skip_earlier_events(services: Services) -> None:
    """Move the bot's group past every event so far, such as those of ``prepare``.

    The timed reading then gets only the events of the deliveries, not the
    package and consent events that queued them.
    """
    await services.redis.xgroup_setid(keys.events(), BOT_GROUP, id="$")


async def read_delivered(services: Services, events: EventStream, count: int) -> None:
    """Read the bot's events until ``count`` ``delivered`` events arrived.

    The bench reads every ``READ_INTERVAL_SECONDS`` without blocking, so that a
    read returns the events of many deliveries. A blocking read wakes for
    nearly every delivery: with it, and with the service's log read from a
    pipe, the bench took 180 to 260 µs of CPU per delivery on the same two
    cores as the worker. In production the bot reads these events in a
    process of its own.
    """
    delivered = 0
    while delivered < count:
        response = await services.redis.xreadgroup(
            BOT_GROUP, "bench", {events.stream_key: ">"}, count=1000
        )
        entries = [entry for _stream, batch in response or [] for entry in batch]
        # One XACK per read, so the bench's own bookkeeping costs one round
        # trip per read, not per delivery.
        if entries:
            await services.redis.xack(
                events.stream_key, BOT_GROUP, *(entry_id for entry_id, _ in entries)
            )
        delivered += sum(
            fields.get("type") == EventType.DELIVERED.value for _id, fields in entries
        )
        if delivered < count:
            await asyncio.sleep(READ_INTERVAL_SECONDS)


# --- the one-process form ----------------------------------------------------


async def worker_round(services: Services, events: EventStream) -> Measurement:
    """Return deliveries per second of one worker over ``DELIVERIES``."""
    await prepare(services, DELIVERIES)
    await skip_earlier_events(services)
    worker = DeliveryWorker(
        services, schedule=(0.01,), timeout_seconds=15.0, concurrency=CONCURRENCY
    )
    started = time.perf_counter()
    await worker.start()
    try:
        await read_delivered(services, events, DELIVERIES)
    finally:
        elapsed = time.perf_counter() - started
        await worker.stop()
    return Measurement(DELIVERIES / elapsed, None)


async def baseline_round(url: str, public_key: str, count: int) -> Measurement:
    """Return requests per second of a bare POST loop with the same bodies."""
    queue = _signed_queue(public_key, count)
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await _post_all(session, url, queue)
        elapsed = time.perf_counter() - started
    return Measurement(count / elapsed, None)


def _signed_queue(
    public_key: str, count: int
) -> asyncio.Queue[tuple[bytes, dict[str, str]]]:
    queue: asyncio.Queue[tuple[bytes, dict[str, str]]] = asyncio.Queue()
    for body in _signed_bodies(public_key, count):
        queue.put_nowait(body)
    return queue


async def _post_all(
    session: aiohttp.ClientSession,
    url: str,
    queue: asyncio.Queue[tuple[bytes, dict[str, str]]],
) -> None:
    # CONCURRENCY loops that each sign and POST the next body until none is left.
    async def send() -> None:
        while not queue.empty():
            body, headers = queue.get_nowait()
            headers = signed_headers(
                SECRET, headers["webhook-id"], body, now=time.time()
            )
            async with session.post(url, data=body, headers=headers) as response:
                assert response.status == 200, await response.text()

    await asyncio.gather(*(send() for _ in range(CONCURRENCY)))


def _signed_bodies(
    public_key_text: str, count: int
) -> list[tuple[bytes, dict[str, str]]]:
    # Bodies shaped like the service's, sealed in advance: the loop only posts.
    public_key = decode_public_key(public_key_text, SuiteName.X25519)
    bodies = []
    for index in range(count):
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


# --- the senders in their own processes -------------------------------------


async def _read_line_with(stream: asyncio.StreamReader, text: str) -> str:
    # Return the first line that contains ``text``.
    async with asyncio.timeout(START_TIMEOUT_SECONDS):
        while True:
            line = (await stream.readline()).decode(errors="replace")
            if not line:
                raise RuntimeError(f"the child process exited before {text!r}")
            if text in line:
                return line


async def _wait_for_log_line(
    path: Path, process: asyncio.subprocess.Process, text: str
) -> None:
    # Poll the child's log file until it contains ``text``; only at start-up.
    async with asyncio.timeout(START_TIMEOUT_SECONDS):
        while text not in await asyncio.to_thread(path.read_text, errors="replace"):
            if process.returncode is not None:
                raise RuntimeError(f"the child process exited before {text!r}")
            await asyncio.sleep(0.05)


def _child_environment(extra: dict[str, str]) -> dict[str, str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name in ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV")
    }
    environment.update(extra)
    return environment


async def worker_process_round(
    services: Services,
    events: EventStream,
    service_environment: dict[str, str],
    watched: dict[str, int],
) -> Measurement:
    """Run ``python -m pairing_service`` over ``PROCESS_DELIVERIES`` queued ones.

    ``watched`` names the other processes whose CPU time is read as well.
    """
    await prepare(services, PROCESS_DELIVERIES)
    await skip_earlier_events(services)
    # The service logs a line per delivery. It writes them to a file, which
    # the bench reads only until the start line: reading a pipe would wake
    # the bench for nearly every line, on the same two cores as the worker.
    with tempfile.NamedTemporaryFile(prefix="bench-worker-", suffix=".log") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pairing_service",
            env=_child_environment(service_environment),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )
        try:
            await _wait_for_log_line(Path(log.name), process, "delivery worker started")
            started = time.perf_counter()
            cpu_start = cpu_seconds(process.pid)
            others_start = cpu_of(watched)
            await read_delivered(services, events, PROCESS_DELIVERIES)
            elapsed = time.perf_counter() - started
            cpu = cpu_seconds(process.pid) - cpu_start
            others = per_delivery(others_start, cpu_of(watched), PROCESS_DELIVERIES)
        finally:
            if process.returncode is None:
                process.terminate()
            await process.wait()
    return Measurement(PROCESS_DELIVERIES / elapsed, cpu / PROCESS_DELIVERIES, others)


async def baseline_process_round(
    url: str, public_key: str, watched: dict[str, int]
) -> Measurement:
    """Run the bare POST loop in a process of its own over ``PROCESS_DELIVERIES``.

    ``watched`` names the other processes whose CPU time is read as well.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--post-loop",
        url,
        public_key,
        env=_child_environment({}),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        await _read_line_with(process.stdout, "ready")
        started = time.perf_counter()
        cpu_start = cpu_seconds(process.pid)
        others_start = cpu_of(watched)
        process.stdin.write(b"go\n")
        await process.stdin.drain()
        await _read_line_with(process.stdout, "done")
        elapsed = time.perf_counter() - started
        # The child waits for the end of its input before it exits, so its
        # /proc entry is still there.
        cpu = cpu_seconds(process.pid) - cpu_start
        others = per_delivery(others_start, cpu_of(watched), PROCESS_DELIVERIES)
        process.stdin.close()
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()
    return Measurement(PROCESS_DELIVERIES / elapsed, cpu / PROCESS_DELIVERIES, others)


def run_post_loop(url: str, public_key: str) -> None:
    """Run the baseline's child: seal, print ``ready``, then POST on ``go``."""
    queue = _signed_queue(public_key, PROCESS_DELIVERIES)
    print("ready", flush=True)
    sys.stdin.readline()

    async def post() -> None:
        async with aiohttp.ClientSession() as session:
            await _post_all(session, url, queue)

    asyncio.run(post())
    print("done", flush=True)
    sys.stdin.read()


def run_receiver(port: int) -> None:
    """Run the receiver's child: print the webhook URL, serve until stdin ends."""

    async def serve() -> None:
        runner, url, _receiver = await start_receiver(
            secret=SECRET, private_key=os.environ[PRIVATE_KEY_VARIABLE], port=port
        )
        print(url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()

    asyncio.run(serve())


@contextlib.asynccontextmanager
async def receiver_child(private_key: str, port: int) -> AsyncIterator[int]:
    """Run a new receiver process on ``port`` and yield its process id.

    The sandbox receiver keeps every request and plaintext it received, so
    each round starts a new one: a receiver that had grown over the earlier
    rounds took up to half again as much CPU per request.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--receiver",
        str(port),
        env=_child_environment({PRIVATE_KEY_VARIABLE: private_key}),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        await _read_line_with(process.stdout, "http://")
        yield process.pid
    finally:
        process.stdin.close()
        await process.wait()


# --- the rounds --------------------------------------------------------------


async def main(*, one_process: bool, service_client: bool) -> None:
    """Run the rounds and print the medians and their ratios."""
    load_before = os.getloadavg()
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
    directory = tempfile.TemporaryDirectory(prefix="bench-delivery-")
    receiver_port = free_port()
    if one_process:
        runner, url, _receiver = await start_receiver(
            secret=SECRET, private_key=key_pair.private_key
        )
    else:
        url = f"http://127.0.0.1:{receiver_port}/webhook"

    document = registry_document(url, key_pair.public_key)
    registry_path = Path(directory.name) / "municipalities.json"
    registry_path.write_text(json.dumps(document))
    registry = MunicipalityRegistry.from_document(document)
    settings = Settings(
        service_token=SERVICE_TOKEN,
        public_base_url="https://koppel.example.test",
        bot_username="gv_bench_bot",
        registry_path=registry_path,
        delivery_retry_schedule=(0.01,),
    )
    service_environment = {
        "SERVICE_TOKEN": SERVICE_TOKEN,
        "PUBLIC_BASE_URL": "https://koppel.example.test",
        "BOT_USERNAME": "gv_bench_bot",
        "MUNICIPALITY_REGISTRY": str(registry_path),
        "REDIS_URL": server.url,
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "DELIVERY_CONCURRENCY": str(CONCURRENCY),
        "LOG_LEVEL": "INFO",
    }
    services = Services.build(settings, redis, registry, time.time)
    events = EventStream(redis)
    await events.ensure_group()
    baselines: list[Measurement] = []
    workers: list[Measurement] = []
    try:
        for round_number in range(ROUNDS):
            if one_process:
                baselines.append(
                    await baseline_round(url, key_pair.public_key, DELIVERIES)
                )
                workers.append(await worker_round(services, events))
            else:
                watched = {"redis-server": server.process.pid, "bench": os.getpid()}
                async with receiver_child(
                    key_pair.private_key, receiver_port
                ) as receiver_pid:
                    baselines.append(
                        await baseline_process_round(
                            url,
                            key_pair.public_key,
                            {"receiver": receiver_pid, **watched},
                        )
                    )
                async with receiver_child(
                    key_pair.private_key, receiver_port
                ) as receiver_pid:
                    workers.append(
                        await worker_process_round(
                            services,
                            events,
                            service_environment,
                            {"receiver": receiver_pid, **watched},
                        )
                    )
            print(f"round {round_number + 1}: {_row(baselines[-1], workers[-1])}")
    finally:
        if one_process:
            await runner.cleanup()
        await redis.aclose()
        server.remove()
        directory.cleanup()
    _print_summary(baselines, workers, one_process, service_client, load_before)


def _row(baseline: Measurement, worker: Measurement) -> str:
    text = (
        f"baseline {baseline.rate:.0f}/s worker {worker.rate:.0f}/s "
        f"ratio {worker.rate / baseline.rate:.2f}"
    )
    if baseline.cpu_per_delivery and worker.cpu_per_delivery is not None:
        text += (
            f"; CPU per delivery baseline {baseline.cpu_per_delivery * 1e6:.0f} us "
            f"worker {worker.cpu_per_delivery * 1e6:.0f} us "
            f"ratio {worker.cpu_per_delivery / baseline.cpu_per_delivery:.2f}"
        )
    for label, measurement in (("baseline", baseline), ("worker", worker)):
        if measurement.others:
            text += f"\n  other CPU per delivery in the {label} round: " + ", ".join(
                f"{name} {seconds * 1e6:.0f} us"
                for name, seconds in measurement.others.items()
            )
    return text


def _print_summary(
    baselines: list[Measurement],
    workers: list[Measurement],
    one_process: bool,
    service_client: bool,
    load_before: tuple[float, float, float],
) -> None:
    baseline = statistics.median(item.rate for item in baselines)
    worker = statistics.median(item.rate for item in workers)
    if one_process:
        client = "the service's client" if service_client else "a plain client"
        print(
            f"{DELIVERIES} deliveries of {PACKAGE_BYTES // 1024} KiB, "
            f"{CONCURRENCY} in flight, median of {ROUNDS} rounds, one process, "
            f"Redis through {client}"
        )
    else:
        print(
            f"{PROCESS_DELIVERIES} deliveries of {PACKAGE_BYTES // 1024} KiB, "
            f"{CONCURRENCY} in flight, median of {ROUNDS} rounds, "
            "each sender and the receiver in a process of its own"
        )
    print(f"bare aiohttp POST loop (baseline): {baseline:.0f} per second")
    print(f"delivery worker: {worker:.0f} per second")
    print(f"ratio worker / baseline: {worker / baseline:.2f}")
    if not one_process:
        baseline_cpu = statistics.median(
            item.cpu_per_delivery or 0.0 for item in baselines
        )
        worker_cpu = statistics.median(item.cpu_per_delivery or 0.0 for item in workers)
        print(
            f"CPU per delivery: baseline {baseline_cpu * 1e6:.0f} us, "
            f"worker {worker_cpu * 1e6:.0f} us, "
            f"ratio {worker_cpu / baseline_cpu:.2f}"
        )
    load_after = os.getloadavg()
    print(
        f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--one-process",
        action="store_true",
        help="run the receiver, both senders and the event reading in one process",
    )
    parser.add_argument(
        "--service-client",
        action="store_true",
        help="with --one-process: make the Redis client with the service's timeouts",
    )
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--post-loop", nargs=2, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.receiver is not None:
        run_receiver(arguments.receiver)
    elif arguments.post_loop:
        run_post_loop(*arguments.post_loop)
    else:
        asyncio.run(
            main(
                one_process=arguments.one_process,
                service_client=arguments.service_client,
            )
        )
