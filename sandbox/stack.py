"""The whole product on one machine: Redis, service, emulator, receivers, bot.

``running_stack`` starts every part in the current event loop on loopback
ports and returns what a person, a test or a benchmark needs to drive it.
The sandbox municipalities get fresh keys and signing secrets on every start;
nothing of them is written outside the run's own temporary folder.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from bot.application import running_bot
from bot.config import DEFAULT_API_BASE_URL, DEFAULT_FILE_BASE_URL, BotSettings
from bot.telegram_limits import SendLimits
from journey.municipalities import MunicipalityRegistry
from journey.package import KeyPair, SuiteName, generate_key_pair
from journey.redis_client import connect
from pairing_service.access_log import RouteAccessLogger
from pairing_service.app import create_app
from pairing_service.config import Settings
from sandbox.municipality_receiver import MunicipalityReceiver, start_receiver
from sandbox.redis_server import RedisServer, start_redis_server
from sandbox.telegram_emulator import RateLimits, start_emulator

logger = logging.getLogger(__name__)

EMULATOR_BOT_TOKEN = "1000001:sandbox-emulator-token"
"""Any token of Telegram's shape works against the emulator."""

EMULATOR_BOT_USERNAME = "gezondverzekerd_sandbox_bot"


@dataclass(frozen=True)
class SandboxMunicipality:
    """A municipality of the sandbox registry."""

    code: str
    name: str
    participates: bool
    suite: SuiteName = SuiteName.X25519


SANDBOX_MUNICIPALITIES: tuple[SandboxMunicipality, ...] = (
    SandboxMunicipality("GM0193", "Zwolle", True),
    SandboxMunicipality("GM0363", "Amsterdam", True, SuiteName.MLKEM768_X25519),
    SandboxMunicipality("GM0796", "'s-Hertogenbosch", False),
)
"""Zwolle with the classical suite, Amsterdam with the post-quantum hybrid,
and a municipality that does not take part."""

DEFAULT_MUNICIPALITY = "GM0193"


@dataclass
class Invitation:
    """The response the website gets when it creates a case."""

    case_id: str
    case_ref: str
    token: str
    deep_link: str
    municipality_code: str


@dataclass
class MunicipalityEndpoint:
    """A running receiver with the keys it holds."""

    code: str
    name: str
    url: str
    receiver: MunicipalityReceiver
    key_pair: KeyPair
    signing_secret: str


@dataclass
class SandboxStack:
    """Addresses and handles of a running sandbox."""

    redis_url: str
    redis: Redis
    service_url: str
    """The service as this machine reaches it; the bot and tests call it."""
    service_token: str
    metrics_token: str
    """Bearer token of the service's ``GET /metrics``."""
    emulator_url: str | None
    bot_username: str
    registry: MunicipalityRegistry
    registry_path: Path
    municipalities: dict[str, MunicipalityEndpoint] = field(default_factory=dict)
    bot: Any = None
    emulator_app: web.Application | None = None
    """The emulator's aiohttp app, for tests that inspect its state directly."""
    public_host: str | None = None
    """Host name in the addresses for a person, such as the one the ports of a
    container are published on; None uses the host of ``service_url``."""

    @property
    def public_service_url(self) -> str:
        """The service as a person's browser and phone simulator reach it; the
        origin of the QR page and the app links."""
        return _with_host(self.service_url, self.public_host)

    @property
    def chat_page_url(self) -> str | None:
        """The emulator's chat page, for a person; None against real Telegram."""
        if self.emulator_url is None:
            return None
        return f"{_with_host(self.emulator_url, self.public_host)}/chat"

    def receiver(self, code: str = DEFAULT_MUNICIPALITY) -> MunicipalityReceiver:
        """Return the receiver of one municipality."""
        return self.municipalities[code].receiver

    async def invite(
        self, municipality_code: str = DEFAULT_MUNICIPALITY, *, email: str | None = None
    ) -> Invitation:
        """Create a case as the website does, through the internal API."""
        body = {"municipality_code": municipality_code, "email": email}
        headers = {"Authorization": f"Bearer {self.service_token}"}
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{self.service_url}/v1/cases", json=body, headers=headers
            ) as response:
                document = await response.json()
                if response.status != 201:
                    raise RuntimeError(
                        f"case creation failed: {response.status} {document}"
                    )
        return Invitation(
            case_id=document["case_id"],
            case_ref=document["case_ref"],
            token=document["invitation_token"],
            deep_link=document["deep_link"],
            municipality_code=municipality_code,
        )


@contextlib.asynccontextmanager
async def running_stack(
    *,
    redis_url: str | None = None,
    host: str = "127.0.0.1",
    emulator_port: int = 0,
    service_port: int = 0,
    telegram_token: str | None = None,
    rate_limits: RateLimits | None = None,
    send_limits: SendLimits | None = None,
    start_bot: bool = True,
    access_log: bool = False,
    service_process: bool = False,
    public_host: str | None = None,
) -> AsyncIterator[SandboxStack]:
    """Start the whole product and yield its addresses; stop it all on exit.

    The service and the emulator listen on ``host``. With ``0.0.0.0`` or
    ``::`` they serve a container's published ports, and the parts inside
    reach each other on loopback. ``public_host`` replaces the host in the addresses
    for a person: the chat page, the QR page and the app links.

    Without ``redis_url`` a private redis-server runs on a free port. With
    ``telegram_token`` the bot talks to real Telegram and no emulator starts.
    With ``access_log`` the service logs each request as production does
    (``pairing_service.access_log``). ``rate_limits`` are the emulator's, and
    ``send_limits`` the bot's own (Telegram's when None).
    """
    local_host = _local_host(host)
    workdir = Path(tempfile.mkdtemp(prefix="gv-sandbox-"))
    redis_server: RedisServer | None = None
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        if redis_url is None:
            redis_server = start_redis_server()
            stack.callback(redis_server.remove)
            redis_url = redis_server.url
        redis = connect(redis_url)
        stack.push_async_callback(redis.aclose)

        endpoints: dict[str, MunicipalityEndpoint] = {}
        for municipality in SANDBOX_MUNICIPALITIES:
            if not municipality.participates:
                continue
            # Only the service posts to the receivers, so they stay on loopback.
            endpoint = await _start_endpoint(municipality, local_host)
            stack.push_async_callback(endpoint.receiver_runner.cleanup)
            endpoints[municipality.code] = endpoint.endpoint
        registry_path = workdir / "municipalities.json"
        registry_path.write_text(
            json.dumps(_registry_document(endpoints), indent=2), encoding="utf-8"
        )
        registry = MunicipalityRegistry.load(registry_path)

        emulator_url: str | None = None
        emulator_app: web.Application | None = None
        bot_username = EMULATOR_BOT_USERNAME
        if telegram_token is None:
            runner, bound_url = await start_emulator(
                host,
                emulator_port,
                allow_all_interfaces=True,
                bot_username=EMULATOR_BOT_USERNAME,
                rate_limits=rate_limits,
            )
            emulator_url = _with_host(bound_url, local_host)
            stack.push_async_callback(runner.cleanup)
            emulator_app = runner.app

        service_token = secrets.token_urlsafe(32)
        metrics_token = secrets.token_urlsafe(32)
        listener = _listen(host, service_port)
        service_url = f"http://{_authority(local_host)}:{listener.getsockname()[1]}"
        settings = Settings(
            service_token=service_token,
            public_base_url=_with_host(service_url, public_host),
            bot_username=bot_username,
            registry_path=registry_path,
            redis_url=redis_url,
            host=host,
            port=listener.getsockname()[1],
            delivery_retry_schedule=(0.5, 1.0, 2.0),
            metrics_token=metrics_token,
        )
        if service_process:
            listener.close()
            await _start_service_process(stack, settings)
        else:
            await _start_service_in_loop(
                stack, settings, redis, registry, listener, access_log=access_log
            )

        sandbox = SandboxStack(
            redis_url=redis_url,
            redis=redis,
            service_url=service_url,
            service_token=service_token,
            metrics_token=metrics_token,
            emulator_url=emulator_url,
            bot_username=bot_username,
            registry=registry,
            registry_path=registry_path,
            municipalities=endpoints,
            emulator_app=emulator_app,
            public_host=public_host,
        )
        if start_bot:
            bot_settings = BotSettings(
                telegram_token=telegram_token or EMULATOR_BOT_TOKEN,
                redis_url=redis_url,
                pairing_service_url=service_url,
                service_token=service_token,
                municipality_registry=registry_path,
                consumer_name=f"sandbox-{secrets.token_hex(3)}",
                poll_timeout=10,
                telegram_limits=send_limits or SendLimits(),
                api_base_url=(
                    DEFAULT_API_BASE_URL
                    if emulator_url is None
                    else f"{emulator_url}/bot"
                ),
                file_base_url=(
                    DEFAULT_FILE_BASE_URL
                    if emulator_url is None
                    else f"{emulator_url}/file/bot"
                ),
            )
            sandbox.bot = await stack.enter_async_context(
                running_bot(bot_settings, redis=redis, registry=registry)
            )
            if telegram_token is not None:
                me = await sandbox.bot.bot.get_me()
                sandbox.bot_username = me.username
        logger.info("sandbox started service=%s emulator=%s", service_url, emulator_url)
        yield sandbox
    logger.info("sandbox stopped")


async def _start_service_in_loop(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    redis: Redis,
    registry: MunicipalityRegistry,
    listener: socket.socket,
    *,
    access_log: bool,
) -> None:
    service_app = create_app(settings, redis=redis, registry=registry)
    if access_log:
        service_runner = web.AppRunner(service_app, access_log_class=RouteAccessLogger)
    else:
        service_runner = web.AppRunner(service_app, access_log=None)
    await service_runner.setup()
    await web.SockSite(service_runner, listener).start()
    stack.push_async_callback(service_runner.cleanup)


SERVICE_START_TIMEOUT_SECONDS = 30.0
"""Time a pairing service process gets before ``/healthz`` must return 200."""


async def _start_service_process(
    stack: contextlib.AsyncExitStack, settings: Settings
) -> None:
    # A separate process gives the service its own CPU core, which a load
    # test on a small machine needs. It reads its settings from the
    # environment, as in production.
    environment = {
        **os.environ,
        "SERVICE_TOKEN": settings.service_token,
        "METRICS_TOKEN": settings.metrics_token,
        "PUBLIC_BASE_URL": settings.public_base_url,
        "BOT_USERNAME": settings.bot_username,
        "MUNICIPALITY_REGISTRY": str(settings.registry_path),
        "REDIS_URL": settings.redis_url,
        "HOST": settings.host,
        "PORT": str(settings.port),
        "DELIVERY_RETRY_SCHEDULE": ",".join(
            str(delay) for delay in settings.delivery_retry_schedule
        ),
        "LOG_LEVEL": "WARNING",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pairing_service", env=environment
    )
    stack.push_async_callback(_stop_process, process)
    local_url = f"http://{_authority(_local_host(settings.host))}:{settings.port}"
    await _wait_until_healthy(local_url, process)


async def _wait_until_healthy(
    base_url: str, process: asyncio.subprocess.Process
) -> None:
    # The service binds its port after start-up, with no signal to the parent,
    # so readiness is its health endpoint returning 200.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SERVICE_START_TIMEOUT_SECONDS
    async with aiohttp.ClientSession() as session:
        while True:
            if process.returncode is not None:
                raise RuntimeError(
                    f"pairing service exited with status {process.returncode}"
                )
            try:
                async with session.get(f"{base_url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if loop.time() > deadline:
                raise RuntimeError("pairing service did not become healthy in time")
            await asyncio.sleep(0.05)


async def _stop_process(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=10)
        except TimeoutError:
            process.kill()
            await process.wait()


@dataclass
class _StartedEndpoint:
    endpoint: MunicipalityEndpoint
    receiver_runner: web.AppRunner


async def _start_endpoint(
    municipality: SandboxMunicipality, host: str
) -> _StartedEndpoint:
    key_pair = generate_key_pair(municipality.suite)
    signing_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    runner, url, receiver = await start_receiver(
        secret=signing_secret,
        private_key=key_pair.private_key,
        suite=municipality.suite,
        host=host,
        path=f"/gemeente/{municipality.code}/webhook",
    )
    endpoint = MunicipalityEndpoint(
        code=municipality.code,
        name=municipality.name,
        url=url,
        receiver=receiver,
        key_pair=key_pair,
        signing_secret=signing_secret,
    )
    return _StartedEndpoint(endpoint, runner)


def _registry_document(endpoints: dict[str, MunicipalityEndpoint]) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    for municipality in SANDBOX_MUNICIPALITIES:
        if not municipality.participates:
            entries.append(
                {
                    "code": municipality.code,
                    "name": municipality.name,
                    "participates": False,
                }
            )
            continue
        endpoint = endpoints[municipality.code]
        entries.append(
            {
                "code": municipality.code,
                "name": municipality.name,
                "participates": True,
                "webhook_url": endpoint.url,
                "signing_secret": endpoint.signing_secret,
                "hpke": {
                    "suite": municipality.suite.value,
                    "key_id": f"{municipality.code.lower()}-sandbox",
                    "public_key": endpoint.key_pair.public_key,
                },
            }
        )
    return {"municipalities": entries}


def _listen(host: str, port: int) -> socket.socket:
    # Binding first and handing the socket to aiohttp means the service knows
    # its own address before it starts, with no window for another process to
    # take the port.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)
    return listener


def _local_host(host: str) -> str:
    # A listener on every interface is reached here through loopback.
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if not address.is_unspecified:
        return host
    return "::1" if address.version == 6 else "127.0.0.1"


def _authority(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _with_host(url: str, host: str | None) -> str:
    if host is None:
        return url
    parts = urlsplit(url)
    return parts._replace(netloc=f"{_authority(host)}:{parts.port}").geturl()
