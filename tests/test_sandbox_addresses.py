"""Addresses that the sandbox prints for a person, with and without a public host.

The stack listens on 127.0.0.1 here. ``PUBLIC_HOST`` plays the host name of
published container ports and never resolves: every printed address
and app link must carry it, while the bot and the app simulator keep calling
the service on the address it listens on.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from sandbox.__main__ import _print_welcome, main
from sandbox.redis_server import RedisServer
from sandbox.scripted_client import ScriptedClient
from sandbox.stack import SandboxStack, running_stack
from sandbox.telegram_emulator import EmulatorClient, RateLimits
from tests.test_bot_conversation import FAST_SEND_LIMITS

PUBLIC_HOST = "sandbox.test"
PRINTED_URL = re.compile(r"https?://[^\s']+")
USER_ID = 626262


@pytest.fixture
async def public_stack(redis_server: RedisServer) -> AsyncIterator[SandboxStack]:
    async with running_stack(
        redis_url=redis_server.url,
        rate_limits=RateLimits.disabled(),
        send_limits=FAST_SEND_LIMITS,
        public_host=PUBLIC_HOST,
    ) as running:
        yield running


async def test_printed_addresses_use_public_host(
    public_stack: SandboxStack, capsys: pytest.CaptureFixture[str]
) -> None:
    invitation = await public_stack.invite()
    _print_welcome(public_stack, invitation.token, invitation.deep_link)
    lines = capsys.readouterr().out.splitlines()

    chat_line = next(line for line in lines if "Chat page:" in line)
    service_line = next(line for line in lines if "Pairing service:" in line)
    metrics_line = next(line for line in lines if "Metrics:" in line)
    phone_line = next(line for line in lines if "sandbox.phone" in line)
    for line in (chat_line, service_line, metrics_line, phone_line):
        urls = PRINTED_URL.findall(line)
        assert urls, line
        for url in urls:
            assert urlsplit(url).hostname == PUBLIC_HOST, line


async def test_public_addresses_keep_ports(public_stack: SandboxStack) -> None:
    assert public_stack.chat_page_url is not None
    assert public_stack.emulator_url is not None
    public_service = urlsplit(public_stack.public_service_url)
    local_service = urlsplit(public_stack.service_url)
    assert public_service.port == local_service.port
    assert local_service.hostname == "127.0.0.1"
    chat_page = urlsplit(public_stack.chat_page_url)
    assert chat_page.port == urlsplit(public_stack.emulator_url).port
    assert chat_page.path == "/chat"


async def test_journey_links_use_public_host(public_stack: SandboxStack) -> None:
    invitation = await public_stack.invite()
    assert public_stack.emulator_url is not None
    async with EmulatorClient(public_stack.emulator_url) as emulator:
        client = ScriptedClient(public_stack, emulator, USER_ID)
        transcript = await client.play(invitation)
    assert urlsplit(transcript.app_link).hostname == PUBLIC_HOST
    assert urlsplit(transcript.qr_text).hostname == PUBLIC_HOST
    assert public_stack.receiver().deliveries


async def test_default_addresses_are_listen_addresses(
    redis_server: RedisServer,
) -> None:
    async with running_stack(
        redis_url=redis_server.url, start_bot=False, rate_limits=RateLimits.disabled()
    ) as stack:
        assert stack.public_service_url == stack.service_url
        assert stack.emulator_url is not None
        assert stack.chat_page_url == f"{stack.emulator_url}/chat"


def test_public_host_without_dot_is_rejected(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--public-host", "localhost"])
    assert stopped.value.code == 2
    assert "has no dot" in capsys.readouterr().err
