"""Script calls of concurrent requests share one pipeline to Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from journey.package import KeyPair
from journey.steps import Step
from pairing_service.script_pipeline import ScriptPipeline
from sandbox.redis_server import RedisServer, free_port
from tests.test_pairing_security import claim_status, paired_case, serve
from tests.test_pairing_service import assert_every_key_expires, events_of

# KEYS[1] a counter. ARGV[1] the caller's number, or 'fail'. Counts and returns
# the caller's number with the count, so each reply shows whose call it was.
_COUNT_AND_ECHO = """
if ARGV[1] == 'fail' then return redis.error_reply('ERR asked to fail') end
local count = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 60)
return {ARGV[1], count}
"""

CALLS = 30


async def connections_named(redis: Redis, name: str) -> int:
    """Count the connections that Redis has open under the client name ``name``."""
    clients = await redis.client_list()
    return sum(1 for client in clients if client.get("name") == name)


@pytest.fixture
async def named(redis_server: RedisServer, redis: Redis) -> AsyncIterator[Redis]:
    """A client whose connections carry a name of their own, on the test database."""
    client = Redis.from_url(
        redis_server.url, decode_responses=True, client_name="pipeline-under-test"
    )
    yield client
    await client.aclose()
    await assert_every_key_expires(redis)


async def test_pipeline_calls_share_one_connection(redis: Redis, named: Redis) -> None:
    pipeline = ScriptPipeline(named)
    script = named.register_script(_COUNT_AND_ECHO)
    replies = await asyncio.gather(
        *(pipeline.call(script, ["test:count"], [str(n)]) for n in range(CALLS))
    )
    # Every caller gets its own reply, and the script ran once per call.
    assert [reply[0] for reply in replies] == [str(n) for n in range(CALLS)]
    assert sorted(int(reply[1]) for reply in replies) == list(range(1, CALLS + 1))
    assert await connections_named(redis, "pipeline-under-test") == 1


async def test_pipeline_failing_call_fails_alone(named: Redis) -> None:
    pipeline = ScriptPipeline(named)
    script = named.register_script(_COUNT_AND_ECHO)
    arguments = [str(n) for n in range(10)]
    arguments[4] = "fail"
    replies = await asyncio.gather(
        *(pipeline.call(script, ["test:count"], [arg]) for arg in arguments),
        return_exceptions=True,
    )
    assert isinstance(replies[4], ResponseError)
    assert "asked to fail" in str(replies[4])
    others = [reply for index, reply in enumerate(replies) if index != 4]
    assert [reply[0] for reply in others] == [a for a in arguments if a != "fail"]
    assert sorted(int(reply[1]) for reply in others) == list(range(1, 10))


async def test_pipeline_reloads_unknown_script(redis: Redis, named: Redis) -> None:
    pipeline = ScriptPipeline(named)
    script = named.register_script(_COUNT_AND_ECHO)
    await pipeline.call(script, ["test:count"], ["warm"])
    # As after a restart of Redis, the server has no scripts.
    await redis.script_flush()
    assert await redis.script_exists(script.sha) == [False]
    replies = await asyncio.gather(
        *(pipeline.call(script, ["test:count"], [str(n)]) for n in range(CALLS))
    )
    assert [reply[0] for reply in replies] == [str(n) for n in range(CALLS)]
    assert sorted(int(reply[1]) for reply in replies) == list(range(2, CALLS + 2))
    assert await redis.script_exists(script.sha) == [True]


async def test_pipeline_lone_call_after_flush(redis: Redis, named: Redis) -> None:
    pipeline = ScriptPipeline(named)
    script = named.register_script(_COUNT_AND_ECHO)
    await redis.script_flush()
    reply = await pipeline.call(script, ["test:count"], ["alone"])
    assert reply == ["alone", 1]


class ForgetfulRedis(Redis):
    """A client that sends ``SCRIPT FLUSH`` right after each ``SCRIPT LOAD``.

    It plays a flush that lands between the reload of a script and the retry.
    """

    async def script_load(self, script: str) -> str:  # type: ignore[override]
        sha = str(await super().script_load(script))
        await self.script_flush()
        return sha


async def test_pipeline_retry_survives_another_flush(
    redis_server: RedisServer, redis: Redis
) -> None:
    client = ForgetfulRedis.from_url(redis_server.url, decode_responses=True)
    try:
        pipeline = ScriptPipeline(client)
        script = client.register_script(_COUNT_AND_ECHO)
        await redis.script_flush()
        replies = await asyncio.gather(
            *(pipeline.call(script, ["test:count"], [str(n)]) for n in range(CALLS))
        )
    finally:
        await client.aclose()
    assert [reply[0] for reply in replies] == [str(n) for n in range(CALLS)]
    assert sorted(int(reply[1]) for reply in replies) == list(range(1, CALLS + 1))


async def test_pipeline_connection_error_reaches_all() -> None:
    # Nothing listens on this port. Each caller gets the error and none hangs.
    unreachable = Redis(
        host="127.0.0.1",
        port=free_port(),
        decode_responses=True,
        socket_connect_timeout=1,
    )
    pipeline = ScriptPipeline(unreachable)
    script = unreachable.register_script(_COUNT_AND_ECHO)
    try:
        async with asyncio.timeout(10):
            replies = await asyncio.gather(
                *(pipeline.call(script, ["test:count"], [str(n)]) for n in range(5)),
                return_exceptions=True,
            )
    finally:
        await unreachable.aclose()
    assert all(isinstance(reply, RedisConnectionError) for reply in replies)


async def test_service_claims_share_one_connection(
    redis_server: RedisServer, redis: Redis, key_pair: KeyPair
) -> None:
    client = Redis.from_url(
        redis_server.url, decode_responses=True, client_name="service-under-test"
    )
    try:
        async with serve(client, key_pair) as service:
            cases = [await paired_case(service) for _ in range(20)]
            results = await asyncio.gather(
                *(
                    claim_status(service, pairing["app_link"].split("#")[1])
                    for _case_id, pairing in cases
                )
            )
            steps = [(await service.store.get(case_id)).step for case_id, _ in cases]
            events = [await events_of(redis, case_id) for case_id, _ in cases]
            connections = await connections_named(redis, "service-under-test")
    finally:
        await client.aclose()
    assert [status for status, _body in results] == [200] * 20
    assert steps == [Step.FETCHING] * 20
    assert [len(case_events) for case_events in events] == [1] * 20
    # The claims went out over one connection, and the QR page notifier's
    # blocking read holds the other.
    assert connections <= 2
    await assert_every_key_expires(redis)
