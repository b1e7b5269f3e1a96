"""Benchmark: claim requests per second against a one-Redis-call baseline.

Run: ``.venv/bin/python bench/bench_claim.py [--rounds 5] [--requests 2000]``

Starts a private redis-server and, in separate processes, the pairing service
and three copies of a minimal aiohttp application whose only handler does one
Redis GET: one with a plain redis-py client, one with the client settings of
the service (``journey.redis_client.connect`` with the service's socket
timeout), and one that also sends its GET, as a script, through the service's
``ScriptPipeline``, which shares one pipeline among concurrent requests. In
each round the same aiohttp client sends the same number of requests with the
same concurrency to each: successful claims of fresh codes to the service,
and the same JSON bodies to the baselines. It prints a table of the rounds
with the medians and the ratios claim/baseline, and one of the servers' CPU
time per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from journey.package import generate_key_pair  # noqa: E402
from journey.steps import Event  # noqa: E402
from journey.store import CaseStore  # noqa: E402
from sandbox.redis_server import free_port, start_redis_server  # noqa: E402

SERVICE_TOKEN = "bench-service-token-" + "x" * 24
MUNICIPALITY = "GM0193"
START_TIMEOUT_SECONDS = 15.0

SERVERS = ("bare", "client", "pipelined", "service")
"""The servers of each round, in the order they are loaded: the baseline with
a plain redis-py client, the baseline with the client settings of the service
(socket timeout and retries), the baseline that also sends its call through
the service's ``ScriptPipeline``, and the pairing service."""

BASELINE_KEY = "bench:baseline"

_GET_SCRIPT = "return redis.call('GET', KEYS[1])"
"""The pipelined baseline's one Redis call: a GET, as a script, so that it can
share pipelines the way the service's scripts do."""


def registry_document() -> dict[str, Any]:
    key_pair = generate_key_pair()
    return {
        "municipalities": [
            {
                "code": MUNICIPALITY,
                "name": "Zwolle",
                "participates": True,
                "webhook_url": "http://127.0.0.1:9/webhook",
                "signing_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "hpke": {
                    "suite": key_pair.suite.value,
                    "key_id": "bench-01",
                    "public_key": key_pair.public_key,
                },
            }
        ]
    }


def serve_service(port: int, redis_url: str, registry_path: str) -> None:
    from pairing_service.app import create_app
    from pairing_service.config import Settings

    settings = Settings(
        service_token=SERVICE_TOKEN,
        public_base_url="https://koppel.bench.test",
        bot_username="gv_bench_bot",
        registry_path=Path(registry_path),
        redis_url=redis_url,
        # One client address sends every request of the benchmark.
        claims_per_address=10_000_000,
    )
    web.run_app(
        create_app(settings, start_worker=False),
        host="127.0.0.1",
        port=port,
        access_log=None,
        print=None,
    )


def serve_baseline(port: int, redis_url: str, kind: str) -> None:
    if kind in ("client", "pipelined"):
        from journey.redis_client import connect
        from pairing_service.app import (
            REDIS_CONNECT_TIMEOUT_SECONDS,
            REDIS_SOCKET_TIMEOUT_SECONDS,
        )

        redis = connect(
            redis_url,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS,
            socket_timeout=REDIS_SOCKET_TIMEOUT_SECONDS,
        )
    else:
        redis = Redis.from_url(redis_url, decode_responses=True)

    if kind == "pipelined":
        from pairing_service.script_pipeline import ScriptPipeline

        pipeline = ScriptPipeline(redis)
        script = redis.register_script(_GET_SCRIPT)

        async def get_value() -> str | None:
            value: str | None = await pipeline.call(script, [BASELINE_KEY], [])
            return value
    else:

        async def get_value() -> str | None:
            value: str | None = await redis.get(BASELINE_KEY)
            return value

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"value": await get_value()})

    app = web.Application()
    app.router.add_post("/claim", handler)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def start_server(
    kind: str, port: int, redis_url: str, registry: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            kind,
            "--port",
            str(port),
            "--redis",
            redis_url,
            "--registry",
            registry,
        ],
    )


async def wait_until_up(url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.post(url, json={}) as response:
                    await response.read()
                    return
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)


async def prepare_codes(base_url: str, redis: Redis, count: int) -> list[str]:
    """Create ``count`` cases in the ``qr`` step and return their QR codes."""
    store = CaseStore(redis)
    auth = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(connector=connector, headers=auth) as session:

        async def one() -> str:
            async with session.post(
                f"{base_url}/v1/cases", json={"municipality_code": MUNICIPALITY}
            ) as response:
                case_id = (await response.json())["case_id"]
            case = await store.get(case_id)
            await store.link_chat(case, 4242)
            await store.apply(case_id, Event.START)
            for _item in range(4):
                await store.apply(case_id, Event.CONFIRM)
            await store.apply(case_id, Event.PARTNER_NO, updates={"has_partner": False})
            async with session.post(
                f"{base_url}/v1/cases/{case_id}/pairings", json={}
            ) as response:
                link = (await response.json())["app_link"]
            return str(link.split("#", 1)[1])

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def load(url: str, bodies: list[bytes], concurrency: int) -> tuple[float, int]:
    """Send every body once with ``concurrency`` in flight; return (rps, 2xx)."""
    queue = list(reversed(bodies))
    ok = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal ok
            while queue:
                body = queue.pop()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status < 300:
                        ok += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return len(bodies) / elapsed, ok


async def run(
    rounds: int, requests: int, concurrency: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    redis_server = start_redis_server()
    registry = Path("/tmp") / f"gv-bench-registry-{free_port()}.json"
    registry.write_text(json.dumps(registry_document()), encoding="utf-8")
    ports = {kind: free_port() for kind in SERVERS}
    servers = {
        kind: start_server(kind, port, redis_server.url, str(registry))
        for kind, port in ports.items()
    }
    processes = list(servers.values())
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    service_url = f"http://127.0.0.1:{ports['service']}"
    urls = {
        "bare": f"http://127.0.0.1:{ports['bare']}/claim",
        "client": f"http://127.0.0.1:{ports['client']}/claim",
        "pipelined": f"http://127.0.0.1:{ports['pipelined']}/claim",
        "service": f"{service_url}/app/v1/claim",
    }
    results: dict[str, list[float]] = {kind: [] for kind in SERVERS}
    cpu: dict[str, list[float]] = {kind: [] for kind in SERVERS}
    try:
        await wait_until_up(f"{service_url}/healthz")
        await wait_until_up(urls["bare"])
        await wait_until_up(urls["client"])
        await wait_until_up(urls["pipelined"])
        await redis.set(BASELINE_KEY, "1", ex=3600)
        for round_number in range(rounds):
            codes = await prepare_codes(service_url, redis, requests)
            bodies = [json.dumps({"code": code}).encode() for code in codes]
            # Each round starts with another server, so a change in the
            # machine's load during a round does not always hit the same one.
            shift = round_number % len(SERVERS)
            for kind in SERVERS[shift:] + SERVERS[:shift]:
                cpu_before = process_cpu_seconds(servers[kind].pid)
                rps, succeeded = await load(urls[kind], bodies, concurrency)
                cpu_used = process_cpu_seconds(servers[kind].pid) - cpu_before
                cpu[kind].append(cpu_used / requests * 1e6)
                if kind == "service" and succeeded != requests:
                    raise RuntimeError(
                        f"only {succeeded} of {requests} claims succeeded"
                    )
                results[kind].append(rps)
            rates = " ".join(f"{kind} {results[kind][-1]:.0f}/s" for kind in SERVERS)
            print(f"round {round_number + 1}: {rates}", flush=True)
    finally:
        await redis.aclose()
        for process in processes:
            process.terminate()
            process.wait(timeout=10)
        redis_server.remove()
        registry.unlink(missing_ok=True)
    return results, cpu


def process_cpu_seconds(pid: int) -> float:
    """Return the user and system CPU time that process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the line, in clock ticks; the
    # split above starts at field 3.
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


BASELINE_LABELS = {
    "bare": "bare client",
    "client": "service's client",
    "pipelined": "shared pipeline",
}
"""Column names of the three baselines in the printed tables."""


def print_cpu_table(cpu: dict[str, list[float]]) -> None:
    """Print the server CPU per request, which the machine's load hardly moves."""
    baselines = [f"{label} (µs)" for label in BASELINE_LABELS.values()]
    ratios = [f"{kind} / claim" for kind in BASELINE_LABELS]
    print_row(["round", *baselines, "claim (µs)", *ratios])
    print_row(["---"] * (2 + 2 * len(BASELINE_LABELS)))
    for index in range(len(cpu["service"])):
        claim = cpu["service"][index]
        values = [cpu[kind][index] for kind in BASELINE_LABELS]
        print_row(
            [
                str(index + 1),
                *(f"{value:.0f}" for value in values),
                f"{claim:.0f}",
                *(f"{value / claim:.2f}" for value in values),
            ]
        )
    claim = statistics.median(cpu["service"])
    medians = [statistics.median(cpu[kind]) for kind in BASELINE_LABELS]
    print_row(
        [
            "median",
            *(f"{value:.0f}" for value in medians),
            f"{claim:.0f}",
            *(f"{value / claim:.2f}" for value in medians),
        ]
    )


def print_table(results: dict[str, list[float]]) -> None:
    """Print the rounds and their medians as the Markdown table of the docs.

    The median ratio is the median of the rounds' ratios, not the ratio of
    the medians, because each round measures all servers close together.
    """
    baselines = [f"{label} (req/s)" for label in BASELINE_LABELS.values()]
    ratios = [f"claim / {kind}" for kind in BASELINE_LABELS]
    print_row(["round", *baselines, "claim (req/s)", *ratios])
    print_row(["---"] * (2 + 2 * len(BASELINE_LABELS)))
    for index in range(len(results["service"])):
        claim = results["service"][index]
        values = [results[kind][index] for kind in BASELINE_LABELS]
        print_row(
            [
                str(index + 1),
                *(f"{value:.0f}" for value in values),
                f"{claim:.0f}",
                *(f"{claim / value:.2f}" for value in values),
            ]
        )
    medians = [statistics.median(results[kind]) for kind in BASELINE_LABELS]
    median_ratios = [
        statistics.median(
            claim / value
            for claim, value in zip(results["service"], results[kind], strict=True)
        )
        for kind in BASELINE_LABELS
    ]
    print_row(
        [
            "median",
            *(f"{value:.0f}" for value in medians),
            f"{statistics.median(results['service']):.0f}",
            *(f"{ratio:.2f}" for ratio in median_ratios),
        ]
    )


def print_row(cells: list[str]) -> None:
    """Print one row of a Markdown table."""
    print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument(
        "--requests", type=int, default=2000, help="requests per round and server"
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="requests in flight (default 32)"
    )
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    parser.add_argument("--registry", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve == "service":
        serve_service(args.port, args.redis, args.registry)
        return
    if args.serve is not None:
        serve_baseline(args.port, args.redis, args.serve)
        return

    results, cpu = asyncio.run(run(args.rounds, args.requests, args.concurrency))
    print(
        f"{args.rounds} rounds, {args.requests} requests each, concurrency "
        f"{args.concurrency} (goal: ratio >= 0.8)"
    )
    print_table(results)
    print()
    print_cpu_table(cpu)


if __name__ == "__main__":
    main()
