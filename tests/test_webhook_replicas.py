"""Two bot replicas in webhook mode behind one round-robin proxy.

The emulator posts every update, with the secret header, to a small proxy
that hands the posts to two PTB Applications in turn, each with its own
webhook server on loopback. Both replicas share one Redis, so a double tap
whose two updates land on different replicas must still move the case once.
The bot's own probe server is scraped over HTTP for its metrics.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from bot.application import HEALTH_SERVER_KEY, running_webhook_bot
from bot.config import BotMode, BotSettings
from bot.telegram_limits import SendLimits
from journey.municipalities import Municipality, MunicipalityRegistry
from journey.package import generate_key_pair
from journey.steps import Step
from journey.store import CaseStore
from sandbox.redis_server import free_port
from sandbox.telegram_emulator import (
    EmulatorClient,
    RateLimits,
    button_data,
    start_emulator,
)
from sandbox.telegram_emulator.webhook import SECRET_TOKEN_HEADER
from tests.test_bot_conversation import FAST_SEND_LIMITS

BOT_TOKEN = "123456:webhook-replica-token"
SERVICE_TOKEN = "test-service-token-" + "x" * 32
SECRET = "webhook-secret-" + "s" * 32
WEBHOOK_PATH = "telegram/updates"
CHATS = 100
FIRST_USER_ID = 880_000
WAIT_SECONDS = 30.0
"""Upper bound for one expected message; 100 chats at once take a few seconds."""


class RoundRobinProxy:
    """Forwards each webhook post to the next replica, as a load balancer does."""

    def __init__(self, upstreams: list[str]) -> None:
        self.upstreams = upstreams
        self.forwarded = dict.fromkeys(upstreams, 0)
        self._next = itertools.cycle(upstreams)
        self._session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.Response:
        assert self._session is not None
        upstream = next(self._next)
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() in ("content-type", SECRET_TOKEN_HEADER.lower())
        }
        async with self._session.post(
            upstream, data=await request.read(), headers=headers
        ) as response:
            self.forwarded[upstream] += 1
            return web.Response(status=response.status, body=await response.read())

    @contextlib.asynccontextmanager
    async def serving(self, port: int) -> AsyncIterator[str]:
        app = web.Application()
        app.router.add_post(f"/{WEBHOOK_PATH}", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self._session = aiohttp.ClientSession()
        try:
            yield f"http://127.0.0.1:{port}/{WEBHOOK_PATH}"
        finally:
            await self._session.close()
            await runner.cleanup()


@pytest.fixture
def registry() -> MunicipalityRegistry:
    return MunicipalityRegistry(
        [
            Municipality(
                code="GM0193",
                name="Zwolle",
                participates=True,
                webhook_url=f"http://127.0.0.1:{free_port()}/webhook",
                signing_secret="whsec_" + base64.b64encode(b"k" * 32).decode(),
                key_id="zwolle-test",
                public_key_text=generate_key_pair().public_key,
            )
        ]
    )


@pytest.fixture
async def emulator() -> AsyncIterator[str]:
    runner, base_url = await start_emulator(
        "127.0.0.1", 0, rate_limits=RateLimits.disabled()
    )
    yield base_url
    await runner.cleanup()


def replica_settings(
    emulator: str,
    redis_url: str,
    name: str,
    webhook_url: str,
    port: int,
    telegram_limits: SendLimits = FAST_SEND_LIMITS,
) -> BotSettings:
    return BotSettings(
        telegram_token=BOT_TOKEN,
        redis_url=redis_url,
        pairing_service_url=f"http://127.0.0.1:{free_port()}",
        service_token=SERVICE_TOKEN,
        api_base_url=f"{emulator}/bot",
        file_base_url=f"{emulator}/file/bot",
        mode=BotMode.WEBHOOK,
        consumer_name=name,
        webhook_url=webhook_url,
        webhook_secret_token=SECRET,
        webhook_listen="127.0.0.1",
        webhook_port=port,
        health_listen="127.0.0.1",
        health_port=0,
        telegram_limits=telegram_limits,
    )


class Replicas:
    """Both running replicas, the proxy in front and the public webhook URL."""

    def __init__(self, apps: list[Any], proxy: RoundRobinProxy, ports: list[int]):
        self.apps = apps
        self.proxy = proxy
        self.ports = ports

    def health_url(self, index: int) -> str:
        runner = self.apps[index].bot_data[HEALTH_SERVER_KEY]
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def running_replicas(
    emulator: str,
    redis: Redis,
    redis_url: str,
    registry: MunicipalityRegistry,
    telegram_limits: SendLimits = FAST_SEND_LIMITS,
) -> AsyncIterator[Replicas]:
    """Run two webhook replicas behind a round-robin proxy on loopback."""
    ports = [free_port(), free_port()]
    proxy = RoundRobinProxy(
        [f"http://127.0.0.1:{port}/{WEBHOOK_PATH}" for port in ports]
    )
    async with proxy.serving(free_port()) as public_url:
        async with contextlib.AsyncExitStack() as stack:
            apps = []
            for index, port in enumerate(ports):
                settings = replica_settings(
                    emulator,
                    redis_url,
                    f"replica-{index}",
                    public_url,
                    port,
                    telegram_limits,
                )
                # Each replica calls setWebhook with the proxy's URL, as in
                # production, where all of them share WEBHOOK_URL.
                app = await stack.enter_async_context(
                    running_webhook_bot(settings, redis=redis, registry=registry)
                )
                apps.append(app)
            yield Replicas(apps, proxy, ports)


@pytest.fixture
async def replicas(
    emulator: str, redis: Redis, redis_server: Any, registry: MunicipalityRegistry
) -> AsyncIterator[Replicas]:
    async with running_replicas(emulator, redis, redis_server.url, registry) as running:
        yield running


@pytest.fixture
async def client(emulator: str) -> AsyncIterator[EmulatorClient]:
    async with EmulatorClient(emulator) as emulator_client:
        yield emulator_client


def text_of(message: dict[str, Any]) -> str:
    return str(message.get("text") or message.get("caption") or "")


async def next_sent(client: EmulatorClient, user_id: int) -> dict[str, Any]:
    event = await client.wait_for(
        user_id, lambda event: event["kind"] == "sent", timeout=WAIT_SECONDS
    )
    return dict(event["message"])


async def two_sent(
    client: EmulatorClient, user_id: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    # One waiter per chat at a time, so each waiter gets its own message.
    first = await next_sent(client, user_id)
    second = await next_sent(client, user_id)
    return first, second


async def scrape(
    session: aiohttp.ClientSession, url: str
) -> dict[tuple[str, str], float]:
    async with session.get(f"{url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(
                f"{key}={value}" for key, value in sorted(sample.labels.items())
            )
            samples[(sample.name, labels)] = sample.value
    return samples


async def test_replica_double_taps_advance_once(
    replicas: Replicas, client: EmulatorClient, redis: Redis
) -> None:
    store = CaseStore(redis)
    users = [FIRST_USER_ID + index for index in range(CHATS)]
    tokens = [str((await store.create("GM0193"))[1]) for _user in users]

    await asyncio.gather(
        *(
            client.send_text(user, f"/start {token}")
            for user, token in zip(users, tokens, strict=True)
        )
    )
    infos = await asyncio.gather(*(next_sent(client, user) for user in users))
    cases = {}
    for user in users:
        case_id = await redis.get(f"gv:chat:{{{user}}}")
        assert case_id is not None
        cases[user] = await store.get(case_id)
    assert all(case.step is Step.INFO for case in cases.values())

    # Every client taps Start twice at once: 200 callback queries in flight.
    taps = []
    for user, info in zip(users, infos, strict=True):
        data = button_data(info, "Start")
        taps.append(client.tap(user, info["message_id"], data, force=True))
        taps.append(client.tap(user, info["message_id"], data, force=True))
    await asyncio.gather(*taps)

    replies = await asyncio.gather(*(two_sent(client, user) for user in users))
    for user, (first, second) in zip(users, replies, strict=True):
        after = await store.get(cases[user].case_id)
        assert after.step is Step.CHECK_DIGID, user
        assert after.version == cases[user].version + 1, user
        texts = [text_of(first), text_of(second)]
        assert sum("eerdere stap" in text for text in texts) == 1, texts

    forwarded = list(replicas.proxy.forwarded.values())
    assert sum(forwarded) >= 3 * CHATS
    assert min(forwarded) >= CHATS


async def test_post_without_secret_rejected(replicas: Replicas) -> None:
    url = f"http://127.0.0.1:{replicas.ports[0]}/{WEBHOOK_PATH}"
    update = {
        "update_id": 1,
        "message": {
            "message_id": 1,
            "date": 0,
            "chat": {"id": 1, "type": "private"},
            "text": "x",
        },
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=update) as missing:
            assert missing.status == 403
        async with session.post(
            url, json=update, headers={SECRET_TOKEN_HEADER: "wrong-secret"}
        ) as wrong:
            assert wrong.status == 403


async def test_bot_probes_report_ready(replicas: Replicas) -> None:
    base = replicas.health_url(0)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/healthz") as live:
            assert live.status == 200
        async with session.get(f"{base}/readyz") as ready:
            assert ready.status == 200
            assert (await ready.json())["status"] == "ready"


async def test_bot_metrics_count_updates(
    replicas: Replicas, client: EmulatorClient
) -> None:
    base = replicas.health_url(1)
    async with aiohttp.ClientSession() as session:
        before = await scrape(session, base)
        await client.send_text(FIRST_USER_ID + CHATS, "hallo")
        await next_sent(client, FIRST_USER_ID + CHATS)
        after = await scrape(session, base)

    message_key = ("gv_bot_updates_total", "type=message")
    assert after[message_key] == before.get(message_key, 0) + 1
    sends = ("gv_bot_telegram_requests_total", "method=sendMessage,status=200")
    assert after[sends] >= before.get(sends, 0) + 1
    names = {name for name, _labels in after}
    for name in (
        "gv_bot_updates_total",
        "gv_bot_telegram_requests_total",
    ):
        assert name in names
