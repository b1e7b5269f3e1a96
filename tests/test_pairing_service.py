"""The pairing service over real HTTP on loopback, with a private redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import segno
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from journey import keys
from journey.clock import Clock, system_clock
from journey.events import EventStream, EventType, ServiceEvent
from journey.municipalities import MunicipalityRegistry
from journey.package import MAX_PACKAGE_BYTES, KeyPair
from journey.steps import Event, Step
from journey.store import CaseStore
from pairing_service.app import create_app, load_openapi
from pairing_service.claims import MAX_CLAIM_FAILURES_PER_CASE
from pairing_service.config import ConfigError, Settings
from pairing_service.qr_page import QR_ERROR_LEVEL
from pairing_service.services import SERVICES, Services
from sandbox.app_simulator import AppApiError, OcktoAppSimulator, synthetic_package
from sandbox.redis_server import RedisServer, free_port
from tests.redis_proxy import redis_proxy

SERVICE_TOKEN = "test-service-token-" + "x" * 24
PUBLIC_BASE_URL = "https://koppel.gezondverzekerd.test"
SIGNING_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MUNICIPALITY = "GM0193"
NOT_PARTICIPATING = "GM0363"


class FakeClock:
    """A clock that starts at the real time and moves only by ``advance``."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_registry(
    key_pair: KeyPair, webhook_url: str = "http://127.0.0.1:9/webhook"
) -> MunicipalityRegistry:
    """Return a registry with one participating and one absent municipality."""
    return MunicipalityRegistry.from_document(
        {
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
                },
                {"code": NOT_PARTICIPATING, "name": "Amsterdam", "participates": False},
            ]
        }
    )


@dataclass
class Harness:
    """A running service and what a test needs to talk to it."""

    client: TestClient[Any, Any]
    redis: Redis
    store: CaseStore
    base_url: str

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {SERVICE_TOKEN}"}

    @property
    def services(self) -> Services:
        """The service's shared objects, as its handlers use them."""
        app = self.client.app
        assert app is not None
        return app[SERVICES]

    async def create_case(self) -> dict[str, Any]:
        response = await self.client.post(
            "/v1/cases", json={"municipality_code": MUNICIPALITY}, headers=self.auth()
        )
        assert response.status == 201, await response.text()
        return dict(await response.json())

    async def case_in_app_step(self, *, partner: bool = False) -> str:
        """Create a case and walk it, as the bot would, to the app step."""
        case_id = str((await self.create_case())["case_id"])
        store = self.store
        case = await store.get(case_id)
        await store.link_chat(case, 4242)
        await store.apply(case_id, Event.START)
        for _item in range(4):
            await store.apply(case_id, Event.CONFIRM)
        if partner:
            await store.apply(case_id, Event.PARTNER_YES, updates={"has_partner": True})
            await store.apply(case_id, Event.CONFIRM)
            await store.apply(case_id, Event.CONFIRM)
        else:
            await store.apply(case_id, Event.PARTNER_NO, updates={"has_partner": False})
        return case_id

    async def create_pairing(self, case_id: str) -> dict[str, Any]:
        response = await self.client.post(
            f"/v1/cases/{case_id}/pairings", json={}, headers=self.auth()
        )
        assert response.status == 201, await response.text()
        return dict(await response.json())

    async def consent(self, case_id: str, role: str, consent: bool) -> ClientResponse:
        return await self.client.post(
            f"/v1/cases/{case_id}/consent",
            json={"role": role, "consent": consent},
            headers=self.auth(),
        )

    def simulator(self) -> OcktoAppSimulator:
        return OcktoAppSimulator(self.base_url, session=self.client.session)


@contextlib.asynccontextmanager
async def running_service(
    redis: Redis,
    registry: MunicipalityRegistry,
    *,
    clock: Clock = system_clock,
    start_worker: bool = False,
    schedule: tuple[float, ...] = (0.05, 0.05),
    timeout_seconds: float = 2.0,
) -> AsyncIterator[Harness]:
    """Serve the service on 127.0.0.1 for the duration of a ``with`` block."""
    settings = Settings(
        service_token=SERVICE_TOKEN,
        public_base_url=PUBLIC_BASE_URL,
        bot_username="gv_test_bot",
        registry_path=Path("unused-registry.json"),
        delivery_retry_schedule=schedule,
        delivery_timeout_seconds=timeout_seconds,
    )
    app = create_app(
        settings,
        redis=redis,
        registry=registry,
        clock=clock,
        start_worker=start_worker,
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


async def events_of(redis: Redis, case_id: str) -> list[ServiceEvent]:
    """Return the events published for a case, oldest first."""
    entries = await redis.xrange(keys.events())
    return [
        ServiceEvent(
            type=EventType(fields["type"]),
            case_id=fields["case_id"],
            data=json.loads(fields["data"]),
            stream_id=entry_id,
        )
        for entry_id, fields in entries
        if fields["case_id"] == case_id
    ]


async def assert_every_key_expires(redis: Redis) -> None:
    """Fail when any key in Redis has no TTL."""
    without_ttl = []
    async for key in redis.scan_iter(count=500):
        if await redis.ttl(key) <= 0:
            without_ttl.append(key)
    assert without_ttl == []


@contextlib.asynccontextmanager
async def watch_redis_commands(redis: Redis) -> AsyncIterator[list[str]]:
    """Collect every command Redis executes while the block runs."""
    seen: list[str] = []
    ending = asyncio.Event()
    ended = asyncio.Event()
    async with redis.monitor() as monitor:

        async def collect() -> None:
            while True:
                command = str((await monitor.next_command())["command"])
                seen.append(command)
                if ending.is_set() and command.upper() == "PING":
                    ended.set()
                    return

        collector = asyncio.create_task(collect())
        try:
            yield seen
        finally:
            # A PING after the block marks the end: every command sent before
            # it has been seen once the PING shows up.
            ending.set()
            await redis.ping()
            async with asyncio.timeout(10):
                await ended.wait()
            await collector


@pytest.fixture(autouse=True)
async def every_key_expires(redis: Redis) -> AsyncIterator[None]:
    yield
    await assert_every_key_expires(redis)


@pytest.fixture
async def service(redis: Redis, key_pair: KeyPair) -> AsyncIterator[Harness]:
    async with running_service(redis, make_registry(key_pair)) as harness:
        yield harness


@pytest.fixture
async def clocked_service(
    redis: Redis, key_pair: KeyPair
) -> AsyncIterator[tuple[Harness, FakeClock]]:
    clock = FakeClock()
    async with running_service(redis, make_registry(key_pair), clock=clock) as harness:
        yield harness, clock


# --- internal API: cases ---------------------------------------------------


async def test_create_case_without_token_is_401(service: Harness) -> None:
    response = await service.client.post(
        "/v1/cases", json={"municipality_code": MUNICIPALITY}
    )
    body = await response.json()
    assert response.status == 401
    assert body["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_create_case_with_wrong_token_is_401(service: Harness) -> None:
    response = await service.client.post(
        "/v1/cases",
        json={"municipality_code": MUNICIPALITY},
        headers={"Authorization": "Bearer " + "y" * 43},
    )
    assert response.status == 401
    assert (await response.json())["code"] == "unauthorized"


async def raw_post(service: Harness, path: str, authorization: bytes) -> bytes:
    """POST an empty JSON body with a raw ``Authorization`` header and return the reply.

    aiohttp's client sends header values as UTF-8 only, so bytes that are not
    UTF-8 need a plain socket.
    """
    port = service.client.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: " + authorization + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\n{}"
    )
    await writer.drain()
    reply = await reader.read()
    writer.close()
    await writer.wait_closed()
    return reply


@pytest.mark.parametrize(
    ("path", "code"),
    [("/v1/cases", b"unauthorized"), ("/app/v1/events", b"invalid_session")],
    ids=["internal", "app"],
)
async def test_non_utf8_bearer_is_401(service: Harness, path: str, code: bytes) -> None:
    reply = await raw_post(service, path, b"Bearer \xe9\xe9-latin-1-\xff")

    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 401 Unauthorized"
    assert b'"code": "' + code + b'"' in rest


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("XX0193", "invalid_municipality_code"),
        ("GM19", "invalid_municipality_code"),
        ("GM9999", "unknown_municipality"),
        (NOT_PARTICIPATING, "municipality_not_participating"),
    ],
)
async def test_create_case_bad_municipality_is_422(
    service: Harness, code: str, expected: str
) -> None:
    response = await service.client.post(
        "/v1/cases", json={"municipality_code": code}, headers=service.auth()
    )
    body = await response.json()
    assert response.status == 422
    assert body["code"] == expected
    assert body["message"]


async def test_create_case_bad_json_is_400(service: Harness) -> None:
    response = await service.client.post(
        "/v1/cases",
        data=b'{"municipality_code": ',
        headers={**service.auth(), "Content-Type": "application/json"},
    )
    assert response.status == 400
    assert (await response.json())["code"] == "invalid_json"


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json; charset=latin-1",
    ],
)
async def test_json_body_of_other_type_is_415(
    service: Harness, content_type: str | None
) -> None:
    headers = dict(service.auth())
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await service.client.post(
        "/v1/cases", data=b'{"municipality_code": "GM0193"}', headers=headers
    )
    body = await response.json()
    cases = [key async for key in service.redis.scan_iter(match="*:case")]

    assert response.status == 415
    assert body["code"] == "unsupported_media_type"
    assert body["message"]
    assert cases == []


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=UTF-8", "application/merge-patch+json"]
)
async def test_json_body_types_accepted(service: Harness, content_type: str) -> None:
    response = await service.client.post(
        "/v1/cases",
        data=b'{"municipality_code": "GM0193"}',
        headers={**service.auth(), "Content-Type": content_type},
    )
    assert response.status == 201


async def test_create_case_bad_email_is_422(service: Harness) -> None:
    response = await service.client.post(
        "/v1/cases",
        json={"municipality_code": MUNICIPALITY, "email": "geen adres"},
        headers=service.auth(),
    )
    assert response.status == 422
    assert (await response.json())["code"] == "invalid_field"


async def test_create_case_returns_invitation(service: Harness) -> None:
    body = await service.create_case()
    token = body["invitation_token"]
    assert len(token) == 44
    assert token.startswith(body["case_id"])
    assert body["deep_link"] == f"https://t.me/gv_test_bot?start={token}"
    assert re.fullmatch(r"GV-[0-9A-F]{10}", body["case_ref"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["expires_at"])


async def test_get_case_shows_step(service: Harness) -> None:
    case_id = (await service.create_case())["case_id"]
    response = await service.client.get(f"/v1/cases/{case_id}", headers=service.auth())
    body = await response.json()
    assert response.status == 200
    assert body["step"] == "invited"
    assert body["municipality_code"] == MUNICIPALITY
    assert "case_id" not in body


async def test_get_unknown_case_is_404(service: Harness) -> None:
    response = await service.client.get("/v1/cases/" + "A" * 22, headers=service.auth())
    assert response.status == 404
    assert (await response.json())["code"] == "case_not_found"


async def test_unknown_route_is_json_404(service: Harness) -> None:
    response = await service.client.get("/nergens")
    assert response.status == 404
    assert response.content_type == "application/json"
    assert (await response.json())["code"] == "not_found"


async def test_wrong_method_is_json_405(service: Harness) -> None:
    response = await service.client.get("/app/v1/claim")
    assert response.status == 405
    assert (await response.json())["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


async def test_cancel_erases_and_repeats(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    pairing = await service.create_pairing(case_id)
    first = await service.client.delete(f"/v1/cases/{case_id}", headers=service.auth())
    second = await service.client.delete(f"/v1/cases/{case_id}", headers=service.auth())
    case = await service.store.get(case_id)
    assert first.status == 200
    assert (await first.json())["step"] == "cancelled"
    assert second.status == 200
    assert case.tombstone
    assert not await service.redis.exists(keys.pairing(case_id))
    assert (await service.client.get(f"/koppel/{pairing['page_id']}")).status == 404


# --- pairing and claim -----------------------------------------------------


async def test_pairing_moves_case_to_qr(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    pairing = await service.create_pairing(case_id)
    case = await service.store.get(case_id)
    assert case.step is Step.QR
    assert pairing["app_link"].startswith(f"{PUBLIC_BASE_URL}/app/open#{case_id}")
    assert pairing["page_url"] == f"{PUBLIC_BASE_URL}/koppel/{pairing['page_id']}"
    assert re.fullmatch(r"\d{6}", pairing["confirmation_code"])


async def test_pairing_code_is_stored_hashed(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    pairing = await service.create_pairing(case_id)
    code = pairing["app_link"].split("#", 1)[1]
    secret = code[22:]
    stored: list[str] = []
    async for key in service.redis.scan_iter():
        stored.append(key)
        if await service.redis.type(key) == "hash":
            stored.extend((await service.redis.hgetall(key)).values())
        elif await service.redis.type(key) == "string":
            stored.append(str(await service.redis.get(key)))
    assert not any(secret in value for value in stored)
    assert not any(pairing["page_id"] in value for value in stored)


async def test_pairing_before_app_step_is_409(service: Harness) -> None:
    case_id = (await service.create_case())["case_id"]
    response = await service.client.post(
        f"/v1/cases/{case_id}/pairings", json={}, headers=service.auth()
    )
    assert response.status == 409
    assert (await response.json())["code"] == "step_conflict"


async def test_claim_pairs_the_app(service: Harness) -> None:
    case_id = await service.case_in_app_step(partner=True)
    pairing = await service.create_pairing(case_id)
    claimed = await service.simulator().claim(pairing["app_link"])
    case = await service.store.get(case_id)
    events = await events_of(service.redis, case_id)
    assert claimed.confirmation_code == pairing["confirmation_code"]
    assert claimed.has_partner is True
    assert claimed.municipality_name == "Zwolle"
    assert claimed.expires_in == keys.APP_SESSION_TTL_SECONDS
    assert case.step is Step.FETCHING
    assert [event.type for event in events] == [EventType.PAIRING_CLAIMED]


async def test_claim_twice_is_409(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    pairing = await service.create_pairing(case_id)
    await service.simulator().claim(pairing["app_link"])
    with pytest.raises(AppApiError) as second:
        await service.simulator().claim(pairing["app_link"])
    assert second.value.status == 409
    assert second.value.code == "code_already_used"


async def test_expired_code_is_410(
    clocked_service: tuple[Harness, FakeClock],
) -> None:
    service, clock = clocked_service
    case_id = await service.case_in_app_step()
    pairing = await service.create_pairing(case_id)
    clock.advance(keys.PAIRING_TTL_SECONDS + 1)
    with pytest.raises(AppApiError) as expired:
        await service.simulator().claim(pairing["app_link"])
    case = await service.store.get(case_id)
    assert expired.value.status == 410
    assert expired.value.code == "code_expired"
    assert case.step is Step.QR


async def test_code_just_before_expiry_works(
    clocked_service: tuple[Harness, FakeClock],
) -> None:
    service, clock = clocked_service
    case_id = await service.case_in_app_step()
    pairing = await service.create_pairing(case_id)
    clock.advance(keys.PAIRING_TTL_SECONDS - 1)
    claimed = await service.simulator().claim(pairing["app_link"])
    assert claimed.session_token


async def test_malformed_code_is_400(service: Harness) -> None:
    with pytest.raises(AppApiError) as malformed:
        await service.simulator().claim("https://x.test/app/open#te-kort")
    assert malformed.value.status == 400
    assert malformed.value.code == "malformed_code"


async def test_wrong_secret_is_404(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    await service.create_pairing(case_id)
    with pytest.raises(AppApiError) as unknown:
        await service.simulator().claim(case_id + "B" * 22)
    assert unknown.value.status == 404
    assert unknown.value.code == "unknown_code"


async def test_wrong_secrets_get_rate_limited(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    pairing = await service.create_pairing(case_id)
    for _attempt in range(MAX_CLAIM_FAILURES_PER_CASE):
        with pytest.raises(AppApiError):
            await service.simulator().claim(case_id + "C" * 22)
    with pytest.raises(AppApiError) as limited:
        await service.simulator().claim(pairing["app_link"])
    assert limited.value.status == 429
    assert limited.value.code == "rate_limited"


async def test_renewed_pairing_replaces_old_code(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    old = await service.create_pairing(case_id)
    new = await service.create_pairing(case_id)
    with pytest.raises(AppApiError) as replaced:
        await service.simulator().claim(old["app_link"])
    claimed = await service.simulator().claim(new["app_link"])
    assert replaced.value.code == "unknown_code"
    assert claimed.confirmation_code == new["confirmation_code"]


async def test_concurrent_claims_one_wins(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    pairing = await service.create_pairing(case_id)
    version_before = (await service.store.get(case_id)).version

    async def claim() -> int:
        try:
            await service.simulator().claim(pairing["app_link"])
        except AppApiError as error:
            assert error.code == "code_already_used"
            return error.status
        return 200

    statuses = await asyncio.gather(*(claim() for _ in range(10)))
    case = await service.store.get(case_id)
    events = await events_of(service.redis, case_id)
    assert statuses.count(200) == 1
    assert statuses.count(409) == 9
    assert case.step is Step.FETCHING
    assert case.version == version_before + 1
    assert len(events) == 1


# --- app events ------------------------------------------------------------


async def test_events_update_progress(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    app = service.simulator()
    await app.claim((await service.create_pairing(case_id))["app_link"])
    await app.digid_login()
    await app.fetch_source("uwv")
    step = await app.fail_source("belastingdienst")
    response = await service.client.get(f"/v1/cases/{case_id}", headers=service.auth())
    progress = (await response.json())["progress"]
    assert step == "fetching"
    assert progress == {
        "client": {
            "digid": True,
            "sources": {"uwv": "done", "belastingdienst": "failed"},
        }
    }


async def test_events_publish_progress(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    app = service.simulator()
    await app.claim((await service.create_pairing(case_id))["app_link"])
    await app.digid_login()
    await app.fetch_source("uwv")
    events = await events_of(service.redis, case_id)
    progress_events = [event for event in events if event.type is EventType.PROGRESS]
    assert len(progress_events) == 2
    assert progress_events[-1].data["progress"] == {
        "client": {"digid": True, "sources": {"uwv": "done"}}
    }


async def test_review_ready_moves_to_review(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    app = service.simulator()
    await app.claim((await service.create_pairing(case_id))["app_link"])
    first = await app.review_ready()
    again = await app.review_ready()
    events = await events_of(service.redis, case_id)
    assert first == "review"
    assert again == "review"
    assert [event.type for event in events].count(EventType.REVIEW_READY) == 1


async def test_review_before_partner_done_is_409(service: Harness) -> None:
    case_id = await service.case_in_app_step(partner=True)
    app = service.simulator()
    await app.claim((await service.create_pairing(case_id))["app_link"])
    await app.digid_login("client")
    with pytest.raises(AppApiError) as rejected:
        await app.review_ready()
    before = await service.store.get(case_id)
    await app.partner_done()
    after = await app.review_ready()

    assert rejected.value.status == 409
    assert rejected.value.code == "partner_not_done"
    assert before.step is Step.FETCHING
    assert after == "review"


async def test_package_before_partner_done_is_409(service: Harness) -> None:
    case_id = await service.case_in_app_step(partner=True)
    app = service.simulator()
    await app.claim((await service.create_pairing(case_id))["app_link"])
    with pytest.raises(AppApiError) as rejected:
        await app.upload_package(b'{"client": {}}')
    stored = await service.redis.exists(keys.package(case_id))
    await app.partner_done()
    uploaded = await app.upload_package(b'{"client": {}, "partner": {}}')
    case = await service.store.get(case_id)

    assert rejected.value.status == 409
    assert rejected.value.code == "partner_not_done"
    assert not stored
    assert uploaded.size > 0
    assert case.step is Step.CONSENT


async def test_partner_event_without_partner_is_422(service: Harness) -> None:
    case_id = await service.case_in_app_step(partner=False)
    app = service.simulator()
    await app.claim((await service.create_pairing(case_id))["app_link"])
    with pytest.raises(AppApiError) as rejected:
        await app.digid_login("partner")
    assert rejected.value.status == 422
    assert rejected.value.code == "no_partner"


async def test_unknown_source_is_422(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    app = service.simulator()
    await app.claim((await service.create_pairing(case_id))["app_link"])
    with pytest.raises(AppApiError) as rejected:
        await app.fetch_source("duo")
    assert rejected.value.status == 422
    assert rejected.value.code == "invalid_field"


async def test_events_without_session_are_401(service: Harness) -> None:
    response = await service.client.post(
        "/app/v1/events", json={"type": "review_ready"}
    )
    assert response.status == 401
    assert (await response.json())["code"] == "invalid_session"


# --- package ---------------------------------------------------------------


async def test_package_too_large_is_413(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    app = service.simulator()
    await app.claim((await service.create_pairing(case_id))["app_link"])
    with pytest.raises(AppApiError) as too_large:
        await app.upload_package(b"x" * (MAX_PACKAGE_BYTES + 1))
    assert too_large.value.status == 413
    assert too_large.value.code == "package_too_large"
    assert not await service.redis.exists(keys.package(case_id))


async def test_package_wrong_content_type_is_415(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    app = service.simulator()
    claimed = await app.claim((await service.create_pairing(case_id))["app_link"])
    response = await service.client.put(
        "/app/v1/package",
        data=b"{}",
        headers={
            "Authorization": f"Bearer {claimed.session_token}",
            "Content-Type": "text/plain",
        },
    )
    assert response.status == 415
    assert (await response.json())["code"] == "unsupported_media_type"


async def test_upload_keeps_only_ciphertext(
    service: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    marker = "MARKER-7c1e9b04"
    package = synthetic_package(marker)
    case_id = await service.case_in_app_step()
    app = service.simulator()
    caplog.set_level(logging.DEBUG)
    async with watch_redis_commands(service.redis) as commands:
        await app.claim((await service.create_pairing(case_id))["app_link"])
        uploaded = await app.upload_package(package)
    stored = await service.redis.hgetall(keys.package(case_id))
    case = await service.store.get(case_id)
    events = await events_of(service.redis, case_id)
    assert marker.encode() in package
    assert marker not in json.dumps(stored)
    assert stored["ciphertext"]
    assert not any(marker in command for command in commands)
    assert any("HSET" in command.upper() for command in commands)
    assert marker not in caplog.text
    assert case.step is Step.CONSENT
    assert case.package_digest == uploaded.sha256
    assert uploaded.size == len(package)
    assert events[-1].type is EventType.CONSENT_NEEDED
    assert (
        0 < await service.redis.ttl(keys.package(case_id)) <= keys.PACKAGE_TTL_SECONDS
    )


async def test_second_upload_is_409(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    app = service.simulator()
    await app.claim((await service.create_pairing(case_id))["app_link"])
    first = await app.upload_package(synthetic_package("first"))
    with pytest.raises(AppApiError) as second:
        await app.upload_package(synthetic_package("second"))
    case = await service.store.get(case_id)
    assert second.value.status == 409
    assert second.value.code == "package_already_received"
    assert case.package_digest == first.sha256


async def test_progress_after_package_is_409(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    app = service.simulator()
    await app.claim((await service.create_pairing(case_id))["app_link"])
    await app.upload_package(synthetic_package("progress-after"))

    with pytest.raises(AppApiError) as late:
        await app.fetch_source("uwv")

    assert late.value.status == 409
    assert late.value.code == "step_conflict"
    assert "'source_fetched'" in late.value.message
    assert "'consent'" in late.value.message


# --- consent ---------------------------------------------------------------


async def test_refuse_deletes_package(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    await service.simulator().run_journey(
        (await service.create_pairing(case_id))["app_link"],
        package=synthetic_package("refused"),
    )
    response = await service.consent(case_id, "client", False)
    case = await service.store.get(case_id)
    raw = await service.redis.hgetall(keys.case(case_id))
    events = await events_of(service.redis, case_id)
    assert response.status == 200
    assert (await response.json())["step"] == "refused"
    assert not await service.redis.exists(keys.package(case_id))
    assert not await service.redis.exists(keys.app_session(case_id))
    assert case.tombstone
    assert "progress" not in raw
    assert events[-1].type is EventType.REFUSED


async def test_consent_before_package_is_409(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    response = await service.consent(case_id, "client", True)
    assert response.status == 409
    assert (await response.json())["code"] == "step_conflict"


async def test_partner_consent_without_partner_is_422(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    response = await service.consent(case_id, "partner", True)
    assert response.status == 422
    assert (await response.json())["code"] == "no_partner"


async def test_consent_bad_role_is_422(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    response = await service.client.post(
        f"/v1/cases/{case_id}/consent",
        json={"role": "buurman", "consent": True},
        headers=service.auth(),
    )
    assert response.status == 422
    assert (await response.json())["code"] == "invalid_field"


# --- QR page ---------------------------------------------------------------


async def test_qr_page_shows_code_and_headers(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    pairing = await service.create_pairing(case_id)
    response = await service.client.get(f"/koppel/{pairing['page_id']}")
    page = await response.text()
    policy = response.headers["Content-Security-Policy"]
    assert response.status == 200
    assert "<svg" in page
    assert pairing["confirmation_code"] in page
    assert "default-src 'none'" in policy
    assert "'unsafe-inline'" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"
    assert "Zwolle" not in page


async def test_qr_page_encodes_app_link(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    pairing = await service.create_pairing(case_id)
    page = await (await service.client.get(f"/koppel/{pairing['page_id']}")).text()
    expected = segno.make(pairing["app_link"], error=QR_ERROR_LEVEL).svg_inline()
    # The longest path draws the dark modules; a light background may precede it.
    expected_modules = max(re.findall(r' d="([^"]+)"', expected), key=len)
    page_modules = max(re.findall(r' d="([^"]+)"', page), key=len)
    assert page_modules == expected_modules


async def test_qr_page_status_follows_claim(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    pairing = await service.create_pairing(case_id)
    status_url = f"/koppel/{pairing['page_id']}/status"
    before = await (await service.client.get(status_url)).json()
    await service.simulator().claim(pairing["app_link"])
    after = await (await service.client.get(status_url)).json()
    page = await (await service.client.get(f"/koppel/{pairing['page_id']}")).text()
    assert before["status"] == "waiting"
    assert 0 < before["expires_in"] <= keys.PAIRING_TTL_SECONDS
    assert after["status"] == "paired"
    assert "<svg" not in page


async def test_qr_page_status_during_claim(
    service: Harness, redis_server: RedisServer, key_pair: KeyPair
) -> None:
    case_id = await service.case_in_app_step()
    pairing = await service.create_pairing(case_id)
    status_url = f"/koppel/{pairing['page_id']}/status"
    async with redis_proxy(redis_server.port) as proxy:
        proxied = Redis.from_url(proxy.url, decode_responses=True)
        try:
            async with running_service(proxied, make_registry(key_pair)) as pages:
                # The first read loads the page's script, so the reply held
                # below is the script's result and not a NOSCRIPT error.
                first = await (await pages.client.get(status_url)).json()
                # The claim runs after Redis has run the page's first command
                # on the case's keys and before the page sends another one.
                hold = proxy.hold_reply(keys.case(case_id))
                reading = asyncio.create_task(pages.client.get(status_url))
                async with asyncio.timeout(10):
                    await hold.arrived.wait()
                await service.simulator().claim(pairing["app_link"])
                hold.release()
                during = await (await reading).json()
                after = await (await pages.client.get(status_url)).json()
        finally:
            await proxied.aclose()
    assert first["status"] == "waiting"
    assert during["status"] == "waiting"
    assert after["status"] == "paired"


async def test_old_qr_page_gone_after_renewal(service: Harness) -> None:
    case_id = await service.case_in_app_step()
    old = await service.create_pairing(case_id)
    await service.create_pairing(case_id)
    response = await service.client.get(f"/koppel/{old['page_id']}/status")
    assert response.status == 404


async def test_qr_page_expired_status(
    clocked_service: tuple[Harness, FakeClock],
) -> None:
    service, clock = clocked_service
    case_id = await service.case_in_app_step()
    pairing = await service.create_pairing(case_id)
    clock.advance(keys.PAIRING_TTL_SECONDS + 1)
    body = await (
        await service.client.get(f"/koppel/{pairing['page_id']}/status")
    ).json()
    assert body["status"] == "expired"


async def test_unknown_qr_page_is_404(service: Harness) -> None:
    page = await service.client.get("/koppel/" + "Z" * 22)
    status = await service.client.get("/koppel/" + "Z" * 22 + "/status")
    assert page.status == 404
    assert page.content_type == "text/html"
    assert status.status == 404
    assert (await status.json())["code"] == "page_not_found"


async def test_app_open_page(service: Harness) -> None:
    response = await service.client.get("/app/open")
    page = await response.text()
    assert response.status == 200
    assert "Ockto" in page
    assert "script" not in page


# --- operations ------------------------------------------------------------


async def test_health_and_readiness(service: Harness) -> None:
    health = await service.client.get("/healthz")
    ready = await service.client.get("/readyz")
    assert health.status == 200
    assert ready.status == 200
    assert (await ready.json())["status"] == "ready"


async def test_redis_down_is_503_json(key_pair: KeyPair) -> None:
    unreachable = Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0",
        decode_responses=True,
        socket_connect_timeout=1,
    )
    try:
        async with running_service(unreachable, make_registry(key_pair)) as service:
            ready = await service.client.get("/readyz")
            case = await service.client.get(
                "/v1/cases/" + "A" * 22, headers=service.auth()
            )
            ready_body = await ready.json()
            case_body = await case.json()
    finally:
        await unreachable.aclose()
    assert ready.status == 503
    assert ready_body["code"] == "redis_unavailable"
    assert int(ready.headers["Retry-After"]) > 0
    assert case.status == 503
    assert case_body["code"] == "redis_unavailable"


async def test_openapi_lists_every_route(service: Harness) -> None:
    response = await service.client.get("/openapi.json")
    document = await response.json()
    app = service.client.app
    assert app is not None
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    documented = {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert response.status == 200
    assert document["openapi"].startswith("3.1")
    assert routes == documented
    assert document == load_openapi()


# --- configuration ---------------------------------------------------------


def _environment(**overrides: str) -> dict[str, str]:
    environ = {
        "SERVICE_TOKEN": SERVICE_TOKEN,
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL + "/",
        "BOT_USERNAME": "@gv_test_bot",
        "MUNICIPALITY_REGISTRY": "/etc/gv/registry.json",
    }
    environ.update(overrides)
    return {name: value for name, value in environ.items() if value != "-"}


def test_settings_from_env_defaults() -> None:
    settings = Settings.from_env(_environment())
    assert settings.public_base_url == PUBLIC_BASE_URL
    assert settings.bot_username == "gv_test_bot"
    assert settings.pairing_ttl_seconds == keys.PAIRING_TTL_SECONDS
    assert settings.port == 8080


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SERVICE_TOKEN", "-"),
        ("SERVICE_TOKEN", "kort"),
        ("PUBLIC_BASE_URL", "ftp://example.test"),
        ("BOT_USERNAME", "a b"),
        ("MUNICIPALITY_REGISTRY", "-"),
        ("PORT", "tachtig"),
        ("PAIRING_TTL_SECONDS", "5"),
        ("DELIVERY_RETRY_SCHEDULE", "5,nooit"),
        ("REDIS_URL", "http://127.0.0.1"),
    ],
)
def test_settings_error_names_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env(_environment(**{name: value}))
    assert error.value.variable == name
    assert name in str(error.value)


def test_settings_retry_schedule() -> None:
    settings = Settings.from_env(_environment(DELIVERY_RETRY_SCHEDULE="1, 2.5,10"))
    assert settings.delivery_retry_schedule == (1.0, 2.5, 10.0)


async def test_bot_group_reads_claim_event(service: Harness, redis: Redis) -> None:
    case_id = await service.case_in_app_step()
    await service.simulator().claim((await service.create_pairing(case_id))["app_link"])
    stream = EventStream(redis)
    await stream.ensure_group()
    read = await stream.read("test-consumer", block_ms=10)
    assert [event.type for event in read] == [EventType.PAIRING_CLAIMED]
    assert read[0].case_id == case_id
