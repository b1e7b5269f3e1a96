"""Invitation and reminder e-mail, through a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import asyncio
import email
from collections.abc import AsyncIterator, Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiosmtpd.controller import Controller
from redis.asyncio import Redis
from telegram import Bot

from bot.reminders import ReminderDispatcher
from bot.telegram_limits import SharedTelegramLimits
from journey import keys
from journey.municipalities import Municipality, MunicipalityRegistry
from journey.reminders import ReminderScheduler, SendWindow
from journey.store import CaseStore
from pairing_service.app import create_app
from pairing_service.config import Settings
from pairing_service.mail import Mailer, MailSettings
from sandbox.redis_server import free_port

SERVICE_TOKEN = "test-service-token-" + "x" * 24
SENDER = "uitnodiging@gezondverzekerd.test"
RECIPIENT = "klant@example.test"
WAIT_SECONDS = 10.0


class Inbox:
    """An aiosmtpd handler that hands each received message to the test's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.messages: asyncio.Queue[tuple[list[str], Message]] = asyncio.Queue()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content)
        recipients = list(envelope.rcpt_tos)
        # aiosmtpd runs its own loop in a thread; the queue belongs to the test's.
        self._loop.call_soon_threadsafe(self.messages.put_nowait, (recipients, message))
        return "250 Message accepted"

    async def next(self) -> tuple[list[str], Message]:
        return await asyncio.wait_for(self.messages.get(), WAIT_SECONDS)


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, MailSettings]]:
    inbox = Inbox(asyncio.get_event_loop())
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, MailSettings(host="127.0.0.1", port=port, sender=SENDER)
    controller.stop()


def parts(message: Message) -> dict[str, str]:
    """Return the decoded text of each part by content type."""
    found = {}
    for part in message.walk():
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            found[part.get_content_type()] = payload.decode(
                part.get_content_charset() or "utf-8"
            )
    return found


@pytest.fixture
async def service(
    redis: Redis, smtp: tuple[Inbox, MailSettings]
) -> AsyncIterator[TestClient[Any, Any]]:
    _inbox, mail = smtp
    settings = Settings(
        service_token=SERVICE_TOKEN,
        public_base_url="https://koppel.gezondverzekerd.test",
        bot_username="gv_test_bot",
        registry_path=Path("unused-registry.json"),
        mail=mail,
    )
    registry = MunicipalityRegistry(
        [Municipality(code="GM0193", name="Zwolle", participates=True)]
    )
    app = create_app(settings, redis=redis, registry=registry, start_worker=False)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    yield client
    await client.close()


async def test_intake_sends_invitation(
    service: TestClient[Any, Any], smtp: tuple[Inbox, MailSettings], redis: Redis
) -> None:
    inbox, _mail = smtp
    response = await service.post(
        "/v1/cases",
        json={"municipality_code": "GM0193", "email": RECIPIENT},
        headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
    )
    assert response.status == 201
    body = await response.json()
    assert body["invitation_email"] == "sent"

    recipients, message = await inbox.next()
    assert recipients == [RECIPIENT]
    assert message["From"] == SENDER
    assert message["Subject"] == "Je uitnodiging voor de gemeentepolis"
    texts = parts(message)
    assert body["deep_link"] in texts["text/plain"]
    assert "aan bij Zwolle" in texts["text/plain"]
    assert f'href="{body["deep_link"]}"' in texts["text/html"]
    assert "Start de chat" in texts["text/html"]

    queued = await redis.zrange(keys.reminders_due(), 0, -1)
    assert queued == [f"{body['case_id']}:first"]


async def test_intake_without_address_sends_none(
    service: TestClient[Any, Any], smtp: tuple[Inbox, MailSettings]
) -> None:
    inbox, _mail = smtp
    response = await service.post(
        "/v1/cases",
        json={"municipality_code": "GM0193", "email": None},
        headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
    )
    assert response.status == 201
    assert (await response.json())["invitation_email"] == "none"
    assert inbox.messages.empty()


async def test_unlinked_case_reminded_by_email(
    redis: Redis, smtp: tuple[Inbox, MailSettings]
) -> None:
    inbox, mail = smtp
    store = CaseStore(redis)
    case, _token = await store.create("GM0193", email=RECIPIENT)
    # A window open all day, so the test passes at any hour it runs.
    scheduler = ReminderScheduler(
        redis,
        window=SendWindow(0, 24 * 3600),
        clock=lambda: case.created_at + 6 * 86400,
    )
    await redis.zadd(keys.reminders_due(), {f"{case.case_id}:first": 0})
    # No chat is linked, so the bot is never called; it needs no server.
    bot = Bot("123456:unused", base_url=f"http://127.0.0.1:{free_port()}/bot")
    dispatcher = ReminderDispatcher(
        scheduler, store, bot, SharedTelegramLimits(redis, bot.token), Mailer(mail)
    )

    outcomes = await dispatcher.dispatch_once()

    assert [outcome.result for outcome in outcomes] == ["emailed"]
    recipients, message = await inbox.next()
    assert recipients == [RECIPIENT]
    assert message["Subject"] == "Herinnering: je aanvraag staat nog open"
    assert "uitnodiging" in parts(message)["text/plain"]
    assert "<p>" in parts(message)["text/html"]
