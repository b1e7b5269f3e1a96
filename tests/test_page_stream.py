"""The QR page's status stream and the reader of the event stream behind it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import ClientResponse
from redis.asyncio import Redis

from journey import keys
from journey.events import EventStream, EventType
from journey.package import KeyPair
from sandbox.redis_server import RedisServer
from tests.redis_proxy import RedisProxy, redis_proxy
from tests.test_pairing_service import Harness, make_registry, running_service

STREAM_WAIT_SECONDS = 8.0
"""Longer than one blocking read of the reader (2 s), shorter than the
streams' own check without an event (10 s)."""


async def stream_readers(redis: Redis) -> int:
    """Return how many clients of the server wait in a read of the event stream.

    ``cmd`` is a client's last command, and the flag ``b`` marks a client
    that waits in a blocking command.
    """
    clients = await redis.client_list()
    return sum(
        client.get("cmd") == "xread" and "b" in client.get("flags", "")
        for client in clients
    )


async def wait_for_readers(redis: Redis, expected: int) -> None:
    """Wait until ``expected`` clients wait in a read of the event stream.

    Redis sends no notice when a client starts or stops waiting, so this
    reads the client list again until the count matches.
    """
    async with asyncio.timeout(STREAM_WAIT_SECONDS):
        while await stream_readers(redis) != expected:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def next_status(response: ClientResponse) -> dict[str, Any]:
    """Return the data of the next ``status`` message of an open stream."""
    event = ""
    async with asyncio.timeout(STREAM_WAIT_SECONDS):
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "status":
                return dict(json.loads(line.removeprefix("data: ")))
    raise AssertionError("the stream ended without a status")


@contextlib.asynccontextmanager
async def page_stream(service: Harness, page_id: str) -> AsyncIterator[ClientResponse]:
    """Open the status stream of a QR page for the duration of a ``with`` block."""
    response = await service.client.get(f"/koppel/{page_id}/events")
    assert response.status == 200, await response.text()
    try:
        yield response
    finally:
        response.close()


@contextlib.asynccontextmanager
async def proxied_pages(
    redis: Redis, redis_server: RedisServer, key_pair: KeyPair
) -> AsyncIterator[tuple[Harness, Harness, RedisProxy]]:
    """Run two services on one Redis: one direct, one whose pages go through a proxy.

    The test sets up cases and claims through the first, opens pages through
    the second and delays that one's Redis commands and replies with the proxy.
    """
    registry = make_registry(key_pair)
    async with (
        running_service(redis, registry) as service,
        redis_proxy(redis_server.port) as proxy,
    ):
        proxied = Redis.from_url(proxy.url, decode_responses=True)
        try:
            async with running_service(proxied, registry) as pages:
                yield service, pages, proxy
        finally:
            await proxied.aclose()


async def test_reader_runs_only_while_a_page_listens(
    redis: Redis, key_pair: KeyPair
) -> None:
    async with running_service(redis, make_registry(key_pair)) as service:
        case_id = await service.case_in_app_step()
        pairing = await service.create_pairing(case_id)
        # Without an open page, events come and go without a read.
        await EventStream(redis).publish(EventType.PROGRESS, case_id, step="fetching")
        assert await stream_readers(redis) == 0

        async with page_stream(service, pairing["page_id"]) as stream:
            assert (await next_status(stream))["status"] == "waiting"
            await wait_for_readers(redis, 1)
            await service.simulator().claim(pairing["app_link"])
            assert (await next_status(stream))["status"] == "paired"
            # The client stops. The next event about the case wakes the page,
            # whose last status ends its stream.
            cancelled = await service.client.delete(
                f"/v1/cases/{case_id}", headers=service.auth()
            )
            assert cancelled.status == 200, await cancelled.text()
            await EventStream(redis).publish(EventType.PROGRESS, case_id, step="x")
            assert (await next_status(stream))["status"] == "closed"

        # No page listens any more: the reader stops after its current read.
        await wait_for_readers(redis, 0)
        await EventStream(redis).publish(EventType.PROGRESS, case_id, step="fetching")
        assert await stream_readers(redis) == 0


async def test_event_before_the_reader_starts_reaches_the_page(
    redis: Redis, key_pair: KeyPair
) -> None:
    async with running_service(redis, make_registry(key_pair)) as service:
        case_id = await service.case_in_app_step()
        pairing = await service.create_pairing(case_id)
        async with page_stream(service, pairing["page_id"]) as stream:
            assert (await next_status(stream))["status"] == "waiting"
            # The claim comes at once, before or while the reader starts. The
            # page still learns of it well within the check without an event.
            await service.simulator().claim(pairing["app_link"])
            assert (await next_status(stream))["status"] == "paired"
        assert await redis.exists(keys.events())


async def test_event_during_first_read_reaches_page(
    redis: Redis, redis_server: RedisServer, key_pair: KeyPair
) -> None:
    async with proxied_pages(redis, redis_server, key_pair) as (
        service,
        pages,
        proxy,
    ):
        other_case_id = await service.case_in_app_step()
        other = await service.create_pairing(other_case_id)
        case_id = await service.case_in_app_step()
        pairing = await service.create_pairing(case_id)
        # Another open page keeps the reader running, so the new
        # stream gets no wake-up from the reader's start.
        async with page_stream(pages, other["page_id"]) as other_stream:
            assert (await next_status(other_stream))["status"] == "waiting"
            await wait_for_readers(redis, 1)

            # The claim and its event come after Redis has run the
            # stream's first read, before the stream has its result.
            hold = proxy.hold_reply(keys.case(case_id))
            opening = asyncio.create_task(
                pages.client.get(f"/koppel/{pairing['page_id']}/events")
            )
            async with asyncio.timeout(STREAM_WAIT_SECONDS):
                await hold.arrived.wait()
            await service.simulator().claim(pairing["app_link"])
            newest = await redis.xrevrange(keys.events(), count=1)
            # The reader asks for what follows an event once it has
            # woken the streams of that event's case.
            async with asyncio.timeout(STREAM_WAIT_SECONDS):
                await proxy.wait_for_sent(newest[0][0])
            hold.release()

            response = await opening
            try:
                assert response.status == 200, await response.text()
                assert (await next_status(response))["status"] == "waiting"
                assert (await next_status(response))["status"] == "paired"
            finally:
                response.close()


async def test_reader_start_wakes_opening_stream(
    redis: Redis, redis_server: RedisServer, key_pair: KeyPair
) -> None:
    async with proxied_pages(redis, redis_server, key_pair) as (
        service,
        pages,
        proxy,
    ):
        case_id = await service.case_in_app_step()
        pairing = await service.create_pairing(case_id)

        # No other page is open, so the new stream starts the reader.
        # The claim comes after the stream's first read and before
        # the reader looks up where the event stream ends, so the
        # reader starts after the claim's event.
        first_read = proxy.hold_reply(keys.case(case_id))
        stream_end = proxy.hold_command("XREVRANGE")
        opening = asyncio.create_task(
            pages.client.get(f"/koppel/{pairing['page_id']}/events")
        )
        async with asyncio.timeout(STREAM_WAIT_SECONDS):
            await first_read.arrived.wait()
        await service.simulator().claim(pairing["app_link"])
        first_read.release()
        async with asyncio.timeout(STREAM_WAIT_SECONDS):
            await stream_end.arrived.wait()
        stream_end.release()

        response = await opening
        try:
            assert response.status == 200, await response.text()
            assert (await next_status(response))["status"] == "waiting"
            assert (await next_status(response))["status"] == "paired"
        finally:
            response.close()
