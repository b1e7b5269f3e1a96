"""Claim security over real HTTP: single use, expiry, typed codes, rate limits."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from journey import keys
from journey.clock import Clock, system_clock
from journey.events import EventType
from journey.package import KeyPair
from journey.steps import Step
from journey.store import CaseStore
from pairing_service.app import create_app
from pairing_service.claims import CLAIM_FAILURE_WINDOW_SECONDS, CLAIM_WINDOW_SECONDS
from pairing_service.config import DEFAULT_CLAIMS_PER_ADDRESS, Settings
from pairing_service.typed_codes import ALPHABET, MAX_TYPED_ATTEMPTS
from sandbox.app_simulator import AppApiError
from sandbox.redis_server import RedisServer, free_port
from tests.redis_checks import monitor_commands
from tests.test_pairing_service import (
    PUBLIC_BASE_URL,
    SERVICE_TOKEN,
    FakeClock,
    Harness,
    assert_every_key_expires,
    events_of,
    make_registry,
)

FLOOD_ATTEMPTS = 10_000
FLOOD_CONCURRENCY = 64
"""Requests in flight during the flood; enough to finish it in a few seconds."""


@contextlib.asynccontextmanager
async def serve(
    redis: Redis, key_pair: KeyPair, *, clock: Clock = system_clock, **overrides: Any
) -> AsyncIterator[Harness]:
    """Serve the service on 127.0.0.1 with settings changed by ``overrides``."""
    settings = Settings(
        service_token=SERVICE_TOKEN,
        public_base_url=PUBLIC_BASE_URL,
        bot_username="gv_test_bot",
        registry_path=Path("unused-registry.json"),
    )
    settings = dataclasses.replace(settings, **overrides)
    app = create_app(
        settings,
        redis=redis,
        registry=make_registry(key_pair),
        clock=clock,
        start_worker=False,
    )
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield Harness(
            client=client,
            redis=redis,
            store=CaseStore(redis, clock=clock),
            base_url=str(client.make_url("")).rstrip("/"),
        )
    finally:
        await client.close()


@pytest.fixture(autouse=True)
async def every_key_expires(redis: Redis) -> AsyncIterator[None]:
    yield
    await assert_every_key_expires(redis)


@pytest.fixture
async def clocked(
    redis: Redis, key_pair: KeyPair
) -> AsyncIterator[tuple[Harness, FakeClock]]:
    clock = FakeClock()
    async with serve(redis, key_pair, clock=clock) as harness:
        yield harness, clock


async def paired_case(service: Harness) -> tuple[str, dict[str, Any]]:
    case_id = await service.case_in_app_step()
    return case_id, await service.create_pairing(case_id)


def wrong_verifier(typed_code: str) -> str:
    """Return the typed code with a different second half (same selector)."""
    selector, verifier = typed_code.split("-")
    while True:
        other = "".join(secrets.choice(ALPHABET) for _ in verifier)
        if other != verifier:
            return f"{selector}-{other}"


def random_typed_code() -> str:
    letters = "".join(secrets.choice(ALPHABET) for _ in range(8))
    return f"{letters[:4]}-{letters[4:]}"


async def claim_status(service: Harness, code: str) -> tuple[int, dict[str, Any]]:
    response = await service.client.post("/app/v1/claim", json={"code": code})
    return response.status, dict(await response.json())


# --- the typed code -------------------------------------------------------


async def test_pairing_returns_typed_code(clocked: tuple[Harness, FakeClock]) -> None:
    service, _clock = clocked
    _case_id, pairing = await paired_case(service)
    typed = pairing["typed_code"]
    assert len(typed) == 9
    assert typed[4] == "-"
    assert set(typed.replace("-", "")) <= set(ALPHABET)


async def test_typed_code_pairs_the_app(clocked: tuple[Harness, FakeClock]) -> None:
    service, _clock = clocked
    case_id, pairing = await paired_case(service)
    # Typed the way a person types: lower case, a space instead of the dash.
    typed = pairing["typed_code"].lower().replace("-", " ")
    claimed = await service.simulator().claim_typed(typed)
    case = await service.store.get(case_id)
    events = await events_of(service.redis, case_id)
    assert claimed.confirmation_code == pairing["confirmation_code"]
    assert claimed.session_token
    assert case.step is Step.FETCHING
    assert len(events) == 1


async def test_typed_code_stored_only_as_hmac(
    clocked: tuple[Harness, FakeClock],
) -> None:
    service, _clock = clocked
    _case_id, pairing = await paired_case(service)
    letters = pairing["typed_code"].replace("-", "")
    stored: list[str] = []
    async for key in service.redis.scan_iter():
        stored.append(key)
        if await service.redis.type(key) == "hash":
            stored.extend((await service.redis.hgetall(key)).values())
        elif await service.redis.type(key) == "string":
            stored.append(str(await service.redis.get(key)))
    assert not [text for text in stored if letters in text]
    assert not [text for text in stored if letters[:4] in text]
    assert not [text for text in stored if letters[4:] in text]


async def test_typed_code_locks_after_5_wrong(
    clocked: tuple[Harness, FakeClock],
) -> None:
    service, _clock = clocked
    case_id, pairing = await paired_case(service)
    wrong = [
        await claim_status(service, wrong_verifier(pairing["typed_code"]))
        for _ in range(MAX_TYPED_ATTEMPTS)
    ]
    locked_status, locked = await claim_status(service, pairing["typed_code"])
    case = await service.store.get(case_id)
    qr_claim = await service.simulator().claim(pairing["app_link"])

    assert [status for status, _body in wrong] == [404] * MAX_TYPED_ATTEMPTS
    assert {body["code"] for _status, body in wrong} == {"unknown_code"}
    assert locked_status == 403
    assert locked["code"] == "code_locked"
    assert case.step is Step.QR
    # Locking the typed code leaves the QR code usable.
    assert qr_claim.session_token


async def test_typed_code_4_wrong_still_works(
    clocked: tuple[Harness, FakeClock],
) -> None:
    service, _clock = clocked
    _case_id, pairing = await paired_case(service)
    for _ in range(MAX_TYPED_ATTEMPTS - 1):
        await claim_status(service, wrong_verifier(pairing["typed_code"]))
    claimed = await service.simulator().claim_typed(pairing["typed_code"])
    assert claimed.confirmation_code == pairing["confirmation_code"]


async def test_renewal_retires_old_typed_code(
    clocked: tuple[Harness, FakeClock],
) -> None:
    service, _clock = clocked
    case_id, old = await paired_case(service)
    new = await service.create_pairing(case_id)
    old_status, old_body = await claim_status(service, old["typed_code"])
    claimed = await service.simulator().claim_typed(new["typed_code"])
    assert old_status == 404
    assert old_body["code"] == "unknown_code"
    assert claimed.confirmation_code == new["confirmation_code"]


# --- single use and expiry ---------------------------------------------------


async def test_second_typed_claim_is_409(clocked: tuple[Harness, FakeClock]) -> None:
    service, _clock = clocked
    _case_id, pairing = await paired_case(service)
    await service.simulator().claim_typed(pairing["typed_code"])
    status, body = await claim_status(service, pairing["typed_code"])
    assert status == 409
    assert body["code"] == "code_already_used"


async def test_qr_claim_after_typed_claim_is_409(
    clocked: tuple[Harness, FakeClock],
) -> None:
    service, _clock = clocked
    _case_id, pairing = await paired_case(service)
    await service.simulator().claim_typed(pairing["typed_code"])
    with pytest.raises(AppApiError) as second:
        await service.simulator().claim(pairing["app_link"])
    assert second.value.status == 409
    assert second.value.code == "code_already_used"


async def test_expired_typed_code_is_410(clocked: tuple[Harness, FakeClock]) -> None:
    service, clock = clocked
    case_id, pairing = await paired_case(service)
    clock.advance(keys.PAIRING_TTL_SECONDS + 1)
    status, body = await claim_status(service, pairing["typed_code"])
    case = await service.store.get(case_id)
    assert status == 410
    assert body["code"] == "code_expired"
    assert case.step is Step.QR


async def test_code_ttl_is_configurable(redis: Redis, key_pair: KeyPair) -> None:
    clock = FakeClock()
    async with serve(redis, key_pair, clock=clock, pairing_ttl_seconds=120) as service:
        _case_id, pairing = await paired_case(service)
        clock.advance(121)
        status, body = await claim_status(service, pairing["typed_code"])
    assert status == 410
    assert body["code"] == "code_expired"


async def test_two_concurrent_claims_one_wins(
    clocked: tuple[Harness, FakeClock],
) -> None:
    service, _clock = clocked
    case_id, pairing = await paired_case(service)
    version_before = (await service.store.get(case_id)).version
    # The QR code and the typed code of one case race each other.
    results = await asyncio.gather(
        claim_status(service, pairing["app_link"].split("#")[1]),
        claim_status(service, pairing["typed_code"]),
    )
    case = await service.store.get(case_id)
    events = await events_of(service.redis, case_id)
    statuses = sorted(status for status, _body in results)
    assert statuses == [200, 409]
    assert case.step is Step.FETCHING
    assert case.version == version_before + 1
    assert len(events) == 1


async def test_concurrent_typed_claims_one_wins(
    clocked: tuple[Harness, FakeClock],
) -> None:
    service, _clock = clocked
    _case_id, pairing = await paired_case(service)
    results = await asyncio.gather(
        *(claim_status(service, pairing["typed_code"]) for _ in range(8))
    )
    statuses = Counter(status for status, _body in results)
    assert statuses[200] == 1
    assert statuses[409] == 7


async def test_qr_claim_is_one_redis_command(
    redis_server: RedisServer, redis: Redis, key_pair: KeyPair
) -> None:
    async with serve(redis, key_pair) as service:
        # The first claim loads the script into Redis (EVALSHA, SCRIPT LOAD,
        # EVALSHA); every later one sends the EVALSHA alone.
        _warm_case, warm_pairing = await paired_case(service)
        assert (await claim_status(service, warm_pairing["app_link"].split("#")[1]))[
            0
        ] == 200
        case_id, pairing = await paired_case(service)
        code = pairing["app_link"].split("#")[1]
        start, end = "START-" + secrets.token_hex(8), "END-" + secrets.token_hex(8)
        async with monitor_commands(redis_server.url) as commands:
            await redis.echo(start)
            status, _body = await claim_status(service, code)
            await redis.echo(end)
            async with asyncio.timeout(10):
                await commands.wait_for(end)
        case = await service.store.get(case_id)
        events = await events_of(redis, case_id)

    sent = commands.client_commands_between(start, end)
    # The QR page's notifier blocks on the stream and reads again after the
    # claim's event; that read is not part of the claim.
    claim_commands = [line for line in sent if not line.startswith("XREAD")]
    assert status == 200
    assert [line.split()[0] for line in claim_commands] == ["EVALSHA"]
    assert case.step is Step.FETCHING
    assert [event.type for event in events] == [EventType.PAIRING_CLAIMED]


async def test_rate_limited_qr_claim_leaves_the_case_alone(
    redis: Redis, key_pair: KeyPair
) -> None:
    async with serve(redis, key_pair, claims_per_address=2) as service:
        case_id, pairing = await paired_case(service)
        wrong = case_id + secrets.token_urlsafe(16)
        first = [await claim_status(service, wrong) for _ in range(2)]
        status, body = await claim_status(service, pairing["app_link"].split("#")[1])
        case = await service.store.get(case_id)
        events = await events_of(redis, case_id)

    assert [code for code, _body in first] == [404, 404]
    assert (status, body["code"]) == (429, "rate_limited")
    assert case.step is Step.QR
    assert events == []


# --- rate limits ---------------------------------------------------------------


async def test_10000_wrong_claims_are_limited(
    clocked: tuple[Harness, FakeClock],
) -> None:
    service, clock = clocked
    case_id, pairing = await paired_case(service)
    wrong_qr = case_id + secrets.token_urlsafe(16)
    statuses: Counter[int] = Counter()
    retry_after: set[str] = set()
    queue: asyncio.Queue[str] = asyncio.Queue()
    for attempt in range(FLOOD_ATTEMPTS):
        queue.put_nowait(random_typed_code() if attempt % 2 else wrong_qr)

    connector = aiohttp.TCPConnector(limit=FLOOD_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def attack() -> None:
            while not queue.empty():
                code = queue.get_nowait()
                url = service.base_url + "/app/v1/claim"
                async with session.post(url, json={"code": code}) as response:
                    statuses[response.status] += 1
                    if response.status == 429:
                        retry_after.add(response.headers["Retry-After"])

        await asyncio.gather(*(attack() for _ in range(FLOOD_CONCURRENCY)))

    case_during = await service.store.get(case_id)
    clock.advance(CLAIM_WINDOW_SECONDS)
    claimed = await service.simulator().claim_typed(pairing["typed_code"])

    assert sum(statuses.values()) == FLOOD_ATTEMPTS
    assert statuses[200] == 0
    assert statuses[404] + statuses[429] == FLOOD_ATTEMPTS
    # At most one window's worth reaches a code at all; the wrong QR secrets
    # also lock the case's QR claims after MAX_CLAIM_FAILURES_PER_CASE.
    assert statuses[404] <= DEFAULT_CLAIMS_PER_ADDRESS
    assert statuses[429] >= FLOOD_ATTEMPTS - DEFAULT_CLAIMS_PER_ADDRESS
    assert all(0 < int(value) <= CLAIM_FAILURE_WINDOW_SECONDS for value in retry_after)
    assert case_during.step is Step.QR
    # The next window lets the address claim again, with the real code.
    assert claimed.confirmation_code == pairing["confirmation_code"]


async def test_vowel_code_names_the_alphabet(
    clocked: tuple[Harness, FakeClock],
) -> None:
    service, _clock = clocked
    status, body = await claim_status(service, "ABCD-EFGH")
    assert status == 400
    assert body["code"] == "malformed_code"
    assert ALPHABET in body["message"]


async def test_malformed_codes_count_per_address(
    clocked: tuple[Harness, FakeClock],
) -> None:
    service, _clock = clocked
    results = [
        await claim_status(service, "not-a-code")
        for _ in range(DEFAULT_CLAIMS_PER_ADDRESS + 1)
    ]
    assert {status for status, _body in results[:-1]} == {400}
    assert results[-1][0] == 429
    assert results[-1][1]["code"] == "rate_limited"


async def test_global_typed_limit_pauses_typed(redis: Redis, key_pair: KeyPair) -> None:
    clock = FakeClock()
    async with serve(
        redis,
        key_pair,
        clock=clock,
        typed_failures_global=3,
        claims_per_address=1000,
    ) as service:
        _case_id, pairing = await paired_case(service)
        wrong = [await claim_status(service, random_typed_code()) for _ in range(3)]
        paused_status, paused = await claim_status(service, pairing["typed_code"])
        qr_claim = await service.simulator().claim(pairing["app_link"])
    assert [status for status, _body in wrong] == [404, 404, 404]
    assert paused_status == 429
    assert paused["code"] == "rate_limited"
    assert qr_claim.confirmation_code == pairing["confirmation_code"]


# --- limits ----------------------------------------------------------------


async def test_oversized_claim_body_is_413(clocked: tuple[Harness, FakeClock]) -> None:
    service, _clock = clocked
    response = await service.client.post(
        "/app/v1/claim",
        data=b'{"code": "' + b"A" * 20_000 + b'"}',
        headers={"Content-Type": "application/json"},
    )
    body = await response.json()
    assert response.status == 413
    assert body["code"] == "payload_too_large"


async def test_claim_without_redis_is_503(key_pair: KeyPair) -> None:
    unreachable = Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0",
        decode_responses=True,
        socket_connect_timeout=1,
    )
    try:
        async with serve(unreachable, key_pair) as service:
            response = await service.client.post(
                "/app/v1/claim", json={"code": random_typed_code()}
            )
            body = await response.json()
    finally:
        await unreachable.aclose()
    assert response.status == 503
    assert body["code"] == "redis_unavailable"
    assert int(response.headers["Retry-After"]) > 0
