"""Nothing of the package's plaintext reaches Redis or a log, and nothing stays.

The package path runs for real: the pairing service with its delivery worker,
the app simulator uploading a package that contains a unique marker, consent
through the internal API, and the sandbox municipality, which decrypts it.
Redis MONITOR records every command the server executes meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets

import pytest
from redis.asyncio import Redis

from journey import keys
from journey.events import EventStream, EventType
from journey.model import PERSONAL_FIELDS
from journey.package import KeyPair
from journey.steps import Event, Step
from journey.store import TOMBSTONE_FIELDS
from sandbox.app_simulator import synthetic_package
from sandbox.municipality_receiver import MunicipalityReceiver
from sandbox.redis_server import RedisServer
from tests.redis_checks import dump_values, keys_without_ttl, monitor_commands
from tests.test_pairing_service import (
    MUNICIPALITY,
    Harness,
    make_registry,
    running_service,
)

CHAT_ID = 7_391_046_218
"""A chat id distinctive enough to search for in a dump of Redis."""

EMAIL = "privacy-check-4d1c@example.test"
"""The client's e-mail address given at the application."""

BOT_CONSUMER = "privacy-test-bot"


async def case_in_app_step(service: Harness) -> str:
    """Create a case with an e-mail address and walk it to the app step."""
    response = await service.client.post(
        "/v1/cases",
        json={"municipality_code": MUNICIPALITY, "email": EMAIL},
        headers=service.auth(),
    )
    assert response.status == 201, await response.text()
    case_id = str((await response.json())["case_id"])
    case = await service.store.get(case_id)
    await service.store.link_chat(case, CHAT_ID)
    await service.store.apply(case_id, Event.START)
    for _item in range(4):
        await service.store.apply(case_id, Event.CONFIRM)
    await service.store.apply(case_id, Event.PARTNER_NO, updates={"has_partner": False})
    return case_id


async def consume_until_delivered(events: EventStream, case_id: str) -> None:
    """Read and delete the service's events as the bot does, until ``delivered``."""
    for _read in range(60):
        for event in await events.read(BOT_CONSUMER, block_ms=500):
            await events.ack(event)
            if event.case_id == case_id and event.type is EventType.DELIVERED:
                return
    raise AssertionError("no delivered event for the case")


async def test_marker_never_reaches_redis_or_logs(
    redis: Redis,
    redis_server: RedisServer,
    key_pair: KeyPair,
    receiver: tuple[str, MunicipalityReceiver],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url, municipality = receiver
    marker = "MARKER-" + secrets.token_hex(16)
    package = synthetic_package(marker)
    events = EventStream(redis)
    await events.ensure_group()

    async with (
        monitor_commands(redis_server.url) as commands,
        running_service(
            redis, make_registry(key_pair, url), start_worker=True
        ) as service,
    ):
        case_id = await case_in_app_step(service)
        pairing = await service.create_pairing(case_id)
        await service.simulator().run_journey(pairing["app_link"], package=package)
        held = await redis.hgetall(keys.package(case_id))
        consent = await service.consent(case_id, "client", True)
        await consume_until_delivered(events, case_id)
        delivered = await municipality.wait_for(1)
        case = await service.store.get(case_id)
        # MONITOR shows this ECHO once every earlier command has been recorded.
        end_mark = "END-" + secrets.token_hex(8)
        await redis.echo(end_mark)
        async with asyncio.timeout(10):
            await commands.wait_for(end_mark)

    monitored = commands.text()
    stored = await dump_values(redis)
    remaining = [key async for key in redis.scan_iter(count=1000)]
    ciphertext = held["ciphertext"]

    assert consent.status == 200
    assert delivered[0].plaintext == package
    assert ciphertext
    # The recorder saw the package being stored, so its silence below counts.
    assert ciphertext[:64] in monitored
    assert base64.b64encode(package).decode() not in monitored
    assert marker not in monitored
    assert "Test Persoon" not in monitored
    assert marker not in caplog.text
    assert "Test Persoon" not in caplog.text
    assert marker not in stored
    assert ciphertext[:64] not in stored
    assert EMAIL not in stored
    assert str(CHAT_ID) not in stored
    assert case.tombstone
    assert case.step is Step.DELIVERED
    tombstone_fields = set(await redis.hkeys(keys.case(case_id)))
    assert set(TOMBSTONE_FIELDS) <= tombstone_fields
    assert tombstone_fields.isdisjoint(PERSONAL_FIELDS)
    assert not await redis.exists(keys.package(case_id))
    assert not await redis.exists(keys.app_session(case_id))
    assert not await redis.exists(keys.pairing(case_id))
    assert not await redis.exists(keys.chat(CHAT_ID))
    assert remaining
    assert await keys_without_ttl(redis) == []
