"""Shared fixtures: a private redis-server for the whole test session.

The module-scoped fixtures below (``module_*``, ``application``,
``emulator_client``) give a test module one bot, emulator and pairing
service; a module that walks many short conversations uses them, so the
components start once per module, and each test plays a new user.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from redis.asyncio import Redis

from bot.application import BotApplication, running_bot
from bot.i18n import set_strict
from journey.municipalities import Municipality, MunicipalityRegistry
from journey.package import KeyPair, generate_key_pair
from sandbox.municipality_receiver import MunicipalityReceiver, start_receiver
from sandbox.redis_server import RedisServer, free_port, start_redis_server
from sandbox.telegram_emulator import EmulatorClient, RateLimits, start_emulator
from tests.test_bot_conversation import SERVICE_TOKEN, bot_settings
from tests.test_pairing_service import SIGNING_SECRET


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server started by the test suite on a free loopback port."""
    server = start_redis_server()
    yield server
    server.remove()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client of the private server, on an empty database."""
    client = Redis.from_url(redis_server.url, decode_responses=True)
    await client.flushdb()
    yield client
    await client.aclose()


# One bot, emulator and pairing service per test module.


@pytest.fixture(scope="module")
def strict_translations_module() -> Iterator[None]:
    set_strict(True)
    yield
    set_strict(False)


@pytest.fixture(scope="module")
async def module_redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def module_registry() -> MunicipalityRegistry:
    return MunicipalityRegistry(
        [
            Municipality(
                code="GM0193",
                name="Zwolle",
                participates=True,
                # Nothing listens here; the delivery worker does not run.
                webhook_url=f"http://127.0.0.1:{free_port()}/webhook",
                signing_secret="whsec_" + "b3" * 22,
                key_id="zwolle-test",
                public_key_text=generate_key_pair().public_key,
            ),
            Municipality(code="GM0518", name="'s-Gravenhage", participates=False),
        ]
    )


@pytest.fixture(scope="module")
def key_pair() -> KeyPair:
    """An X25519 key pair of the test municipality, one per test module."""
    return generate_key_pair()


@pytest.fixture
async def receiver(
    key_pair: KeyPair,
) -> AsyncIterator[tuple[str, MunicipalityReceiver]]:
    """A municipality receiver that verifies with SIGNING_SECRET and decrypts."""
    runner, url, state = await start_receiver(
        secret=SIGNING_SECRET, private_key=key_pair.private_key
    )
    yield url, state
    await runner.cleanup()


@pytest.fixture(scope="module")
async def module_emulator() -> AsyncIterator[str]:
    runner, base_url = await start_emulator(
        "127.0.0.1", 0, rate_limits=RateLimits.disabled()
    )
    yield base_url
    await runner.cleanup()


@pytest.fixture(scope="module")
async def module_service(
    module_redis: Redis,
    module_registry: MunicipalityRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[str]:
    from pairing_service import app as app_module
    from pairing_service import config

    port = free_port()
    service_settings = config.Settings(
        service_token=SERVICE_TOKEN,
        public_base_url=f"http://127.0.0.1:{port}",
        bot_username="gv_test_bot",
        registry_path=Path(tmp_path_factory.mktemp("registry")) / "unused.json",
        host="127.0.0.1",
        port=port,
    )
    application = app_module.create_app(
        service_settings,
        redis=module_redis,
        registry=module_registry,
        start_worker=False,
    )
    runner = web.AppRunner(application)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture(scope="module")
async def application(
    strict_translations_module: None,
    module_emulator: str,
    module_redis: Redis,
    redis_server: RedisServer,
    module_registry: MunicipalityRegistry,
    module_service: str,
) -> AsyncIterator[BotApplication]:
    bot_config = bot_settings(module_emulator, redis_server.url, module_service)
    async with running_bot(
        bot_config, redis=module_redis, registry=module_registry
    ) as running:
        yield running


@pytest.fixture(scope="module")
async def emulator_client(module_emulator: str) -> AsyncIterator[EmulatorClient]:
    async with EmulatorClient(module_emulator) as client:
        yield client
