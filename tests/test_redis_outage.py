"""Redis crashes and outages in the middle of a journey.

Each test runs its own redis-server with the append-only file and
``appendfsync always``, so a SIGKILL loses no acknowledged write, and kills
and restarts it while the whole stack runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from redis.asyncio import Redis

from bot.i18n import translate
from handlers.callback_data import Action
from journey.steps import Step
from journey.store import CaseStore
from sandbox.redis_server import RedisServer, start_redis_server
from sandbox.stack import SandboxStack, running_stack
from sandbox.telegram_emulator import EmulatorClient, RateLimits
from tests.chat_driver import Chat, Message, walk_journey
from tests.test_bot_conversation import FAST_SEND_LIMITS

USER_ID = 838383

OUTAGE_SECONDS = 10.0
"""How long Redis stays down: the outage the service must ride out. The test
waits out the rest of it on purpose, because its length is what is tested."""


async def _snapshot(redis: Redis) -> dict[str, str]:
    """Return every key with its type and value, hashes and sets sorted.

    Scan order and hash field order differ after a restart.
    """
    values: dict[str, str] = {}
    async for key in redis.scan_iter(count=1000):
        kind = await redis.type(key)
        if kind == "string":
            value: object = await redis.get(key)
        elif kind == "hash":
            value = sorted((await redis.hgetall(key)).items())  # type: ignore[misc]
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = await redis.xrange(key)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)  # type: ignore[misc]
        else:
            value = sorted(await redis.smembers(key))  # type: ignore[misc]
        values[key] = f"{kind} {value}"
    return values


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    server = start_redis_server(
        append_only=True, extra_args=["--appendfsync", "always"]
    )
    yield server
    server.remove()


@pytest.fixture
async def stack(durable_redis: RedisServer) -> AsyncIterator[SandboxStack]:
    async with running_stack(
        redis_url=durable_redis.url,
        rate_limits=RateLimits.disabled(),
        send_limits=FAST_SEND_LIMITS,
    ) as running:
        yield running


async def test_redis_crash_mid_journey_loses_nothing(
    stack: SandboxStack, durable_redis: RedisServer
) -> None:
    invitation = await stack.invite()
    store = CaseStore(stack.redis)
    snapshots: dict[Step, tuple[dict[str, str], dict[str, str]]] = {}

    async def crash_redis(step: Step, _message: Message | None) -> None:
        # Once with the conversation steps written, once with the pairing,
        # the app session and the encrypted package in Redis.
        if step not in (Step.CHECK_SMS, Step.CONSENT):
            return
        before = await _snapshot(stack.redis)
        durable_redis.kill()
        durable_redis.restart()
        after = await _snapshot(stack.redis)
        snapshots[step] = (before, after)
        assert (await store.get(invitation.case_id)).step is step

    assert stack.emulator_url is not None
    async with EmulatorClient(stack.emulator_url) as emulator:
        await walk_journey(
            stack, Chat(emulator, USER_ID), invitation, before=crash_redis
        )

    assert sorted(snapshots) == sorted([Step.CHECK_SMS, Step.CONSENT])
    for step, (before, after) in snapshots.items():
        assert after == before, f"Redis lost data in a crash at {step}"
    # The second crash had the package and the app session in Redis.
    consent_keys = snapshots[Step.CONSENT][1]
    assert any(key.endswith(":package") for key in consent_keys)
    assert any(key.endswith(":session") for key in consent_keys)
    receiver = stack.receiver(invitation.municipality_code)
    assert len(receiver.deliveries) == 1
    assert (await store.get(invitation.case_id)).step is Step.DELIVERED


async def test_redis_outage_answers_try_again_and_recovers(
    stack: SandboxStack, durable_redis: RedisServer
) -> None:
    invitation = await stack.invite()
    store = CaseStore(stack.redis)
    headers = {"Authorization": f"Bearer {stack.service_token}"}
    case_url = f"{stack.service_url}/v1/cases/{invitation.case_id}"
    seen: dict[str, object] = {}
    assert stack.emulator_url is not None

    async with (
        EmulatorClient(stack.emulator_url) as emulator,
        aiohttp.ClientSession(headers=headers) as http,
    ):
        chat = Chat(emulator, USER_ID)

        async def outage(step: Step, message: Message | None) -> None:
            if step is not Step.CHECK_DIGID:
                return
            assert message is not None
            loop = asyncio.get_running_loop()
            started = loop.time()
            durable_redis.kill()

            await chat.tap(message, Step.CHECK_DIGID, Action.YES)
            await chat.text_message(translate("error.try_again_soon"))

            async with http.get(case_url) as response:
                seen["case_status"] = response.status
                seen["case_body"] = await response.json()
                seen["retry_after"] = response.headers.get("Retry-After")
            async with http.get(f"{stack.service_url}/readyz") as response:
                seen["ready_status"] = response.status

            await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (loop.time() - started)))
            durable_redis.restart()
            seen["outage_seconds"] = loop.time() - started

            async with http.get(case_url) as response:
                seen["case_status_after"] = response.status
            # The tap during the outage moved nothing; the walk taps again.
            assert (await store.get(invitation.case_id)).step is Step.CHECK_DIGID

        await walk_journey(stack, chat, invitation, before=outage)

    assert seen["case_status"] == 503
    assert seen["case_body"] == {
        "code": "redis_unavailable",
        "message": "the service cannot reach its database; try again later",
    }
    assert seen["retry_after"] is not None
    assert seen["ready_status"] == 503
    assert float(seen["outage_seconds"]) >= OUTAGE_SECONDS  # type: ignore[arg-type]
    assert seen["case_status_after"] == 200
    # The event consumer came back too: the rest of the journey needed it.
    assert len(stack.receiver(invitation.municipality_code).deliveries) == 1
    assert (await store.get(invitation.case_id)).step is Step.DELIVERED
