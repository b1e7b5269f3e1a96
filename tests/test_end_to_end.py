"""The whole journey, end to end, with every real component on loopback.

A real redis-server, the real pairing service, python-telegram-bot over HTTP
against the emulator, the app simulator and the municipality receiver. The
scripted client taps through the chat, the QR photo is decoded with
zxing-cpp, and the app simulator claims the decoded link.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from bot.i18n import translate
from journey import keys
from journey.steps import Step
from journey.store import CaseStore
from sandbox.app_simulator import synthetic_package
from sandbox.redis_server import RedisServer
from sandbox.scripted_client import ScriptedClient, Transcript
from sandbox.stack import Invitation, SandboxStack, running_stack
from sandbox.telegram_emulator import EmulatorClient, RateLimits
from tests.redis_checks import dump_values, keys_without_ttl, monitor_commands
from tests.test_bot_conversation import FAST_SEND_LIMITS

USER_ID = 515151
MAX_TAPS_WITHOUT_PARTNER = 15
"""The journey's budget of taps from the invitation to consent."""


@pytest.fixture
async def stack(redis: Redis, redis_server: RedisServer) -> AsyncIterator[SandboxStack]:
    async with running_stack(
        redis_url=redis_server.url,
        rate_limits=RateLimits.disabled(),
        send_limits=FAST_SEND_LIMITS,
    ) as running:
        yield running


async def play(
    stack: SandboxStack, *, partner: bool, marker: str
) -> tuple[Invitation, Transcript, bytes]:
    invitation = await stack.invite()
    package = synthetic_package(marker)
    assert stack.emulator_url is not None
    async with EmulatorClient(stack.emulator_url) as emulator:
        client = ScriptedClient(stack, emulator, USER_ID)
        transcript = await client.play(invitation, partner=partner, package=package)
    return invitation, transcript, package


@pytest.mark.parametrize("partner", [False, True], ids=["alone", "with_partner"])
async def test_journey_delivers_package(
    stack: SandboxStack,
    redis: Redis,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    partner: bool,
) -> None:
    marker = f"MARKER-{secrets.token_hex(12)}"
    caplog.set_level(logging.DEBUG)
    async with monitor_commands(redis_server.url) as commands:
        invitation, transcript, package = await play(
            stack, partner=partner, marker=marker
        )
        # The case is a tombstone once the delivery is confirmed.
        tombstone = await CaseStore(redis).get(invitation.case_id)

    # The QR photo decodes to the same link as the button that opens the app.
    assert transcript.qr_png.startswith(b"\x89PNG")
    assert transcript.qr_text == transcript.app_link
    assert transcript.qr_text.startswith(f"{stack.service_url}/app/open#")

    # The confirmation code in the chat matches the one the app received.
    assert transcript.confirmation_code
    assert any(transcript.confirmation_code in line for line in transcript.lines)

    # Progress is one message, updated in place.
    assert transcript.progress_messages_sent == 1
    assert transcript.progress_edits >= 1

    # The municipality received one verified delivery that decrypts to the upload.
    receiver = stack.receiver(invitation.municipality_code)
    assert len(receiver.deliveries) == 1
    assert receiver.rejected == []
    delivery = receiver.deliveries[0]
    assert delivery.plaintext == package
    assert delivery.case_ref == invitation.case_ref
    roles = sorted(record["role"] for record in delivery.consent)
    assert roles == (["client", "partner"] if partner else ["client"])

    # The bot told the client.
    assert transcript.delivered_text == translate(
        "delivered.body", municipality="Zwolle"
    )
    # After the last "Ja" the client reads that the data goes out, and then
    # that it arrived, once each and in that order.
    last_tap = max(
        index
        for index, line in enumerate(transcript.lines)
        if line.startswith("client: [")
    )
    replies = [
        line.removeprefix("bot:    ")
        for line in transcript.lines[last_tap + 1 :]
        if line.startswith("bot:")
    ]
    assert replies == [
        translate("delivering.body", municipality="Zwolle"),
        translate("delivered.body", municipality="Zwolle"),
    ]
    assert tombstone.step is Step.DELIVERED
    assert tombstone.tombstone

    # Nothing of the package reached Redis or a log; no key lacks a TTL.
    assert marker not in commands.text()
    assert marker not in caplog.text
    stored = await dump_values(redis)
    assert marker not in stored
    assert await keys_without_ttl(redis) == []

    # No key of the case holds personal data any more.
    case_keys = [key async for key in redis.scan_iter(f"*{invitation.case_id}*")]
    assert case_keys == [keys.case(invitation.case_id)]
    raw = await redis.hgetall(keys.case(invitation.case_id))
    for personal in ("chat_id", "email", "checklist", "progress", "consents"):
        assert personal not in raw
    assert str(USER_ID) not in stored


async def test_journey_without_partner_within_tap_budget(stack: SandboxStack) -> None:
    _invitation, transcript, _package = await play(
        stack, partner=False, marker="tap-count"
    )
    assert transcript.taps <= MAX_TAPS_WITHOUT_PARTNER


async def test_refusal_deletes_package(stack: SandboxStack, redis: Redis) -> None:
    invitation = await stack.invite()
    assert stack.emulator_url is not None
    async with EmulatorClient(stack.emulator_url) as emulator:
        client = ScriptedClient(stack, emulator, USER_ID)
        transcript = await client.play(
            invitation, package=synthetic_package("refused"), consent=False
        )
    assert transcript.delivered_text == translate("refused.body")
    assert stack.receiver(invitation.municipality_code).deliveries == []
    assert await redis.exists(keys.package(invitation.case_id)) == 0
    tombstone = await CaseStore(redis).get(invitation.case_id)
    assert tombstone.step is Step.REFUSED


async def test_journey_completes_under_flood_control(
    redis: Redis, redis_server: RedisServer
) -> None:
    # Telegram's limits on in the emulator, far above them in the bot: the bot
    # meets 429s and must wait out every one and lose nothing. The bot at its
    # real limits is tested in test_telegram_limits_replicas.
    async with running_stack(
        redis_url=redis_server.url,
        rate_limits=RateLimits(),
        send_limits=FAST_SEND_LIMITS,
    ) as limited:
        invitation, transcript, package = await play(
            limited, partner=False, marker="flood"
        )
        receiver = limited.receiver(invitation.municipality_code)
        assert receiver.deliveries[0].plaintext == package
        assert transcript.delivered_text == translate(
            "delivered.body", municipality="Zwolle"
        )
