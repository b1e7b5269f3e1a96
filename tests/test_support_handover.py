"""Support handover through the emulator, with the real PTB Application.

The emulator plays a support group: a supergroup with topics in which the
bot is an administrator that may manage topics and pin messages, one agent
who is a member, and one outsider who is not. The client's case is created
in Redis in a checklist step and linked to the client's chat, so each test
starts where a client could get stuck.

Waiting is always on an emulator event (a message sent, a topic created, a
callback answered), never on a sleep. The bot handles the updates of one
chat one after another (``bot.update_order``), so once the reply to a later
update shows up, every earlier update of that chat has been handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from bot.application import BotApplication, running_bot
from bot.config import DEFAULT_SUPPORT_TAKEOVER_TIMEOUT_SECONDS, BotSettings
from bot.i18n import set_strict
from bot.support.desk import SUPPORT_ACTIVE, SUPPORT_REQUESTED, SupportDesk
from bot.support.hours import AMSTERDAM, WEEKDAYS, OpeningHours
from handlers.support import SUPPORT_DESK_KEY
from journey import keys
from journey.events import EventStream, EventType
from journey.model import Case
from journey.municipalities import Municipality, MunicipalityRegistry
from journey.reminders import ReminderScheduler
from journey.steps import Step
from journey.store import CaseStore
from sandbox.redis_server import free_port
from sandbox.telegram_emulator import (
    EmulatorClient,
    RateLimits,
    button_data,
    start_emulator,
)
from tests.test_bot_conversation import FAST_SEND_LIMITS
from tests.test_delivery import log_signal

BOT_TOKEN = "123456:support-test-token"
CLIENT_ID = 7101
AGENT_ID = 8001
OUTSIDER_ID = 8002
GROUP_ID = -1001234567890
SERVICE_TOKEN = "test-service-token-" + "s" * 32
WAIT_SECONDS = 15.0
"""Upper bound for one expected event; a passing test waits far less."""

ALWAYS_OPEN = "mon-sun 00:00-24:00"
CLIENT_EMAIL = "klant@example.nl"
PHONE = "038 - 455 29 20"
MAIL = "support@gezondverzekerd.nl"

BURST_MESSAGES = 40
TEST_GROUP_MAX = 20
TEST_GROUP_WINDOW = 1.0
EMULATOR_GROUP_WINDOW = 0.8
"""The burst test scales Telegram's 20 messages a minute down to 20 per
second for the bot, so it runs in about two seconds instead of two minutes.
The emulator enforces 20 per 0.8 s, a quarter looser, so network jitter
between the bot's clock and the emulator's never turns a send that fits the
bot's window into a 429."""
MIN_PACED_SPAN_SECONDS = 0.5
"""Least time any 21 group sends may span at the emulator. The bot paces them
over a 1 s window; the emulator stamps each call when it arrives, and on a
loaded machine one late stamp shortened a span to 0.79 s. An unpaced burst
spans a few milliseconds, so half the window still proves the pacing."""

Event = dict[str, Any]


@pytest.fixture(autouse=True)
def strict_translations() -> Iterator[None]:
    """Make a missing catalog key fail the test instead of showing the key."""
    set_strict(True)
    yield
    set_strict(False)


def text_of(message: dict[str, Any]) -> str:
    return str(message.get("text") or message.get("caption") or "")


def button_texts(message: dict[str, Any]) -> list[str]:
    keyboard = (message.get("reply_markup") or {}).get("inline_keyboard") or []
    return [button["text"] for row in keyboard for button in row]


def registry() -> MunicipalityRegistry:
    return MunicipalityRegistry(
        [Municipality(code="GM0193", name="Zwolle", participates=True)]
    )


def closed_today() -> str:
    """Return opening hours on a weekday that is neither today nor tomorrow."""
    today = datetime.now(AMSTERDAM).weekday()
    day = WEEKDAYS[(today + 3) % 7]
    return f"{day} 09:00-17:00"


class Harness:
    """The emulator, the running bot and helpers to play client and agents."""

    def __init__(
        self, client: EmulatorClient, application: BotApplication, redis: Redis
    ) -> None:
        self.client = client
        self.application = application
        self.store = CaseStore(redis)
        self.reminders = ReminderScheduler(redis)
        self.redis = redis

    @property
    def desk(self) -> SupportDesk:
        desk: SupportDesk = self.application.bot_data[SUPPORT_DESK_KEY]
        return desk

    async def open_case(self, step: Step = Step.CHECK_SMS) -> Case:
        case, _token = await self.store.create(
            "GM0193", email=CLIENT_EMAIL, step=step, chat_id=CLIENT_ID
        )
        return case

    async def client_says(self, text: str) -> None:
        await self.client.send_text(CLIENT_ID, text)

    async def client_gets(self, predicate: Callable[[dict[str, Any]], bool]) -> Event:
        """Wait for the next bot message to the client that matches ``predicate``."""
        event = await self.client.wait_for(
            CLIENT_ID,
            lambda event: event["kind"] == "sent" and predicate(event["message"]),
            timeout=WAIT_SECONDS,
        )
        return dict(event["message"])

    async def client_gets_text(self, fragment: str) -> dict[str, Any]:
        return await self.client_gets(lambda message: fragment in text_of(message))

    async def group_event(self, predicate: Callable[[Event], bool]) -> Event:
        return await self.client.wait_for(GROUP_ID, predicate, timeout=WAIT_SECONDS)

    async def topic_gets_text(self, fragment: str) -> dict[str, Any]:
        event = await self.group_event(
            lambda event: (
                event["kind"] == "sent" and fragment in text_of(event["message"])
            )
        )
        return dict(event["message"])

    async def agent_says(self, thread_id: int, text: str, user: int = AGENT_ID) -> None:
        await self.client.send_in_topic(user, GROUP_ID, thread_id, text)

    async def request_help(self) -> int:
        """Send /hulp as the client; return the topic's id once the note is in."""
        await self.client_says("/hulp")
        await self.client_gets_text("medewerker")
        note = await self.topic_gets_text("/overnemen")
        return int(note["message_thread_id"])

    async def take_over(self, thread_id: int) -> None:
        await self.agent_says(thread_id, "/overnemen")
        await self.client_gets_text("helpt je nu")
        await self.topic_gets_text("Jij hebt het gesprek")


@contextlib.asynccontextmanager
async def support_harness(
    redis: Redis,
    redis_url: str,
    *,
    rate_limits: RateLimits | None = None,
    with_group: bool = True,
    bot_is_admin: bool = True,
    **overrides: Any,
) -> AsyncIterator[Harness]:
    """Start an emulator with a support group and the bot; yield the harness."""
    limits = rate_limits if rate_limits is not None else RateLimits.disabled()
    runner, base_url = await start_emulator("127.0.0.1", 0, rate_limits=limits)
    try:
        async with EmulatorClient(base_url) as client:
            if with_group:
                await client.create_forum(GROUP_ID, "Helpdesk")
                if bot_is_admin:
                    await client.set_bot_member(
                        GROUP_ID,
                        "administrator",
                        can_manage_topics=True,
                        can_pin_messages=True,
                    )
                else:
                    await client.set_bot_member(GROUP_ID, "member")
                await client.set_member(GROUP_ID, AGENT_ID, "member")
                await client.create_user(OUTSIDER_ID, first_name="Buiten")
            values: dict[str, Any] = {
                "telegram_token": BOT_TOKEN,
                "redis_url": redis_url,
                "pairing_service_url": f"http://127.0.0.1:{free_port()}",
                "service_token": SERVICE_TOKEN,
                "api_base_url": f"{base_url}/bot",
                "file_base_url": f"{base_url}/file/bot",
                "consumer_name": "support-test-bot",
                "poll_timeout": 5,
                "support_group_id": GROUP_ID if with_group else None,
                "support_opening_hours": OpeningHours.parse(ALWAYS_OPEN),
                "telegram_limits": FAST_SEND_LIMITS,
            }
            values.update(overrides)
            settings = BotSettings(**values)
            async with running_bot(
                settings, redis=redis, registry=registry()
            ) as application:
                yield Harness(client, application, redis)
    finally:
        await runner.cleanup()


@pytest.fixture
async def harness(redis: Redis, redis_server: Any) -> AsyncIterator[Harness]:
    async with support_harness(redis, redis_server.url) as running:
        yield running


# The whole cycle.


async def test_handover_cycle_end_to_end(harness: Harness) -> None:
    case = await harness.open_case(Step.CHECK_SMS)

    await harness.client_says("/hulp")
    requested = await harness.client_gets_text("medewerker")
    assert "038" not in text_of(requested)
    created = await harness.group_event(lambda event: event["kind"] == "topic_created")
    thread_id = created["topic"]["message_thread_id"]
    assert case.ref in created["topic"]["name"]
    assert "Zwolle" in created["topic"]["name"]

    summary = await harness.topic_gets_text("Vraag om hulp")
    assert summary["message_thread_id"] == thread_id
    assert case.ref in text_of(summary)
    assert "Stap: check_sms" in text_of(summary)
    assert "Zwolle (GM0193)" in text_of(summary)
    assert CLIENT_EMAIL not in text_of(summary)
    assert PHONE not in text_of(summary)
    assert str(CLIENT_ID) not in text_of(summary)
    pinned = await harness.group_event(lambda event: event["kind"] == "pinned")
    assert pinned["message"]["message_id"] == summary["message_id"]
    await harness.topic_gets_text("/overnemen")

    waiting = await harness.store.get(case.case_id)
    assert waiting.support_state == SUPPORT_REQUESTED
    assert waiting.support_topic_id == thread_id
    assert (await harness.reminders.state(case.case_id)).paused

    await harness.take_over(thread_id)
    assert (await harness.store.get(case.case_id)).support_state == SUPPORT_ACTIVE

    await harness.client_says("Mijn sms komt niet aan")
    copied = await harness.topic_gets_text("Mijn sms komt niet aan")
    assert copied["message_thread_id"] == thread_id
    assert copied["has_protected_content"] is True

    await harness.agent_says(thread_id, "Kijk in de app van DigiD.")
    answer = await harness.client_gets_text("Kijk in de app van DigiD.")
    assert answer["from"]["is_bot"] is True
    assert text_of(answer) == "Kijk in de app van DigiD."

    await harness.agent_says(thread_id, "/teruggeven")
    back = await harness.client_gets_text("Ik help je weer verder")
    assert "sms" in text_of(back).lower()
    assert button_texts(back)[:2] == ["Ja", "Nee"]
    handed_back = await harness.store.get(case.case_id)
    assert handed_back.support_state is None
    assert handed_back.step is Step.CHECK_SMS
    assert not (await harness.reminders.state(case.case_id)).paused
    await harness.topic_gets_text("De chatbot helpt de klant weer")


async def test_close_then_help_reopens_topic(harness: Harness) -> None:
    case = await harness.open_case()
    thread_id = await harness.request_help()
    await harness.take_over(thread_id)

    await harness.agent_says(thread_id, "/sluiten")
    await harness.client_gets_text("Het gesprek met de medewerker is klaar")
    closed = await harness.group_event(lambda event: event["kind"] == "topic_closed")
    assert closed["topic"]["message_thread_id"] == thread_id

    again = await harness.request_help()
    reopened = await harness.client.calls("reopenForumTopic")
    assert again == thread_id
    assert [call["ok"] for call in reopened] == [True]
    assert (await harness.store.get(case.case_id)).support_state == SUPPORT_REQUESTED


# The bot stays silent while an agent has the conversation.


async def test_bot_silent_while_agent_has_chat(harness: Harness) -> None:
    case = await harness.open_case(Step.CHECK_SMS)
    await harness.client_says("/status")
    step_message = await harness.client_gets_text("sms")
    thread_id = await harness.request_help()
    await harness.take_over(thread_id)
    before = await harness.client.messages(CLIENT_ID)

    await harness.client_says("hallo?")
    await harness.client.send(CLIENT_ID, "sticker")
    yes = button_data(step_message, "Ja")
    await harness.client.tap(CLIENT_ID, step_message["message_id"], yes)
    await harness.client_says("/status")
    # The copy of the last update shows that every earlier one was handled.
    await harness.topic_gets_text("/status")

    after = await harness.client.messages(CLIENT_ID)
    bot_messages = [message for message in after if message["from"]["is_bot"]]
    bot_before = [message for message in before if message["from"]["is_bot"]]
    assert len(bot_messages) == len(bot_before)
    assert (await harness.store.get(case.case_id)).step is Step.CHECK_SMS
    answered = await harness.client.wait_for(
        CLIENT_ID,
        lambda event: event["kind"] == "callback_answered",
        timeout=WAIT_SECONDS,
    )
    assert answered["text"] in (None, "")


async def test_stop_still_works_during_support(harness: Harness) -> None:
    await harness.open_case()
    thread_id = await harness.request_help()
    await harness.take_over(thread_id)

    await harness.client_says("/stop")
    confirm = await harness.client_gets(lambda message: bool(button_texts(message)))
    assert len(button_texts(confirm)) == 2


# A delivery that failed for good reaches support too.


async def publish_delivery_failure(harness: Harness, case: Case) -> None:
    """Publish the event the delivery worker sends after its last attempt."""
    await EventStream(harness.redis).publish(
        EventType.DELIVERY_FAILED,
        case.case_id,
        step=Step.DELIVERY_FAILED.value,
        reason="http_503",
        attempts=8,
    )


async def test_failed_delivery_opens_help_request(harness: Harness) -> None:
    case = await harness.open_case(Step.DELIVERY_FAILED)
    await harness.client_says("/status")
    await harness.client_gets_text("gemeente")

    with log_signal("delivery failure reported to support") as reported:
        await publish_delivery_failure(harness, case)
        told = await harness.client_gets_text("niet gelukt")
        created = await harness.group_event(
            lambda event: event["kind"] == "topic_created"
        )
        note = await harness.topic_gets_text("Pogingen: 8")
        await asyncio.wait_for(reported.seen.wait(), WAIT_SECONDS)
    waiting = await harness.store.get(case.case_id)

    assert "/hulp" in text_of(told)
    assert case.ref in created["topic"]["name"]
    assert note["message_thread_id"] == created["topic"]["message_thread_id"]
    assert "Reden: http_503" in text_of(note)
    assert "dead-letters" in text_of(note)
    assert case.ref in text_of(note)
    assert waiting.support_state == SUPPORT_REQUESTED
    assert (await harness.reminders.state(case.case_id)).paused


async def test_failed_delivery_noted_for_active_agent(harness: Harness) -> None:
    case = await harness.open_case(Step.DELIVERY_FAILED)
    thread_id = await harness.request_help()
    await harness.take_over(thread_id)

    before = await harness.client.messages(CLIENT_ID)

    await publish_delivery_failure(harness, case)
    note = await harness.topic_gets_text("Let op: het sturen naar de gemeente")
    topics = await harness.client.calls("createForumTopic")
    after = await harness.client.messages(CLIENT_ID)

    assert note["message_thread_id"] == thread_id
    assert "weet het nog niet" in text_of(note)
    assert len(topics) == 1
    # The agent has the conversation, so the bot sends the client nothing.
    assert len(after) == len(before)
    assert (await harness.store.get(case.case_id)).support_state == SUPPORT_ACTIVE


async def test_failed_delivery_noted_in_open_request(harness: Harness) -> None:
    case = await harness.open_case(Step.DELIVERY_FAILED)
    thread_id = await harness.request_help()

    await publish_delivery_failure(harness, case)
    await harness.client_gets_text("niet gelukt")
    note = await harness.topic_gets_text("Let op: het sturen naar de gemeente")
    topics = await harness.client.calls("createForumTopic")

    assert note["message_thread_id"] == thread_id
    assert "De klant heeft een bericht gekregen" in text_of(note)
    assert len(topics) == 1


# Hand back resumes at the right step.


async def test_hand_back_resumes_current_step(harness: Harness) -> None:
    case = await harness.open_case(Step.CHECK_MIJNOVERHEID)
    thread_id = await harness.request_help()
    await harness.take_over(thread_id)

    await harness.agent_says(thread_id, "/teruggeven")
    back = await harness.client_gets_text("Ik help je weer verder")
    assert "MijnOverheid" in text_of(back)
    assert "Ik heb hulp nodig" in button_texts(back)

    await harness.client.tap(CLIENT_ID, back["message_id"], button_data(back, "Ja"))
    await harness.client_gets_text("telefoon")
    assert (await harness.store.get(case.case_id)).step is Step.CHECK_PHONE


# A deleted topic is made again.


async def test_deleted_topic_is_recreated(harness: Harness) -> None:
    case = await harness.open_case()
    first = await harness.request_help()
    await harness.take_over(first)

    await harness.client.delete_topic(GROUP_ID, first)
    await harness.client_says("Ben je er nog?")
    created = await harness.group_event(lambda event: event["kind"] == "topic_created")
    second = created["topic"]["message_thread_id"]
    summary = await harness.topic_gets_text("Vraag om hulp")
    copied = await harness.topic_gets_text("Ben je er nog?")

    assert second != first
    assert summary["message_thread_id"] == second
    assert copied["message_thread_id"] == second
    assert (await harness.store.get(case.case_id)).support_topic_id == second
    index = await harness.redis.get(keys.support_topic(GROUP_ID, second))
    assert index == case.case_id
    assert await harness.redis.ttl(keys.support_topic(GROUP_ID, second)) > 0

    await harness.agent_says(second, "Ja, ik ben er.")
    await harness.client_gets_text("Ja, ik ben er.")


# Only members of the support group can act.


async def test_outsider_cannot_take_over(harness: Harness) -> None:
    case = await harness.open_case()
    thread_id = await harness.request_help()

    await harness.agent_says(thread_id, "/overnemen", user=OUTSIDER_ID)
    await harness.agent_says(thread_id, "Ik ben geen medewerker", user=OUTSIDER_ID)
    # A member's unknown command gets a note whatever the outsider did, and
    # its note shows that the outsider's updates were handled before it.
    await harness.agent_says(thread_id, "/onbekend")
    await harness.topic_gets_text("Dit werkt niet")

    notes = [
        text_of(message)
        for message in await harness.client.messages(GROUP_ID)
        if message["from"]["is_bot"] and message.get("message_thread_id") == thread_id
    ]
    client_texts = [
        text_of(message) for message in await harness.client.messages(CLIENT_ID)
    ]
    assert (await harness.store.get(case.case_id)).support_state == SUPPORT_REQUESTED
    assert not any("Jij hebt het gesprek" in note for note in notes)
    assert "Ik ben geen medewerker" not in client_texts
    assert not any("helpt je nu" in text for text in client_texts)

    await harness.take_over(thread_id)
    assert (await harness.store.get(case.case_id)).support_state == SUPPORT_ACTIVE


async def test_agent_command_in_private_chat_ignored(harness: Harness) -> None:
    case = await harness.open_case()
    thread_id = await harness.request_help()

    await harness.client.send_text(AGENT_ID, "/overnemen")
    await harness.client.wait_for(
        AGENT_ID, lambda event: event["kind"] == "sent", timeout=WAIT_SECONDS
    )
    assert (await harness.store.get(case.case_id)).support_state == SUPPORT_REQUESTED
    assert (await harness.store.get(case.case_id)).support_topic_id == thread_id


# Group sends stay within the group limit.


async def test_burst_reaches_topic_in_order(redis: Redis, redis_server: Any) -> None:
    limits = RateLimits(
        global_per_second=1000.0,
        global_burst=1000,
        private_chat_per_second=1000.0,
        private_chat_burst=1000,
        group_per_minute=TEST_GROUP_MAX * 60 / EMULATOR_GROUP_WINDOW,
        group_burst=TEST_GROUP_MAX,
    )
    async with support_harness(
        redis,
        redis_server.url,
        rate_limits=limits,
        telegram_limits=replace(
            FAST_SEND_LIMITS,
            group_max_messages=TEST_GROUP_MAX,
            group_window_seconds=TEST_GROUP_WINDOW,
        ),
    ) as harness:
        await harness.open_case()
        thread_id = await harness.request_help()
        await harness.take_over(thread_id)

        texts = [f"bericht {number}" for number in range(1, BURST_MESSAGES + 1)]
        for text in texts:
            await harness.client_says(text)
        await harness.topic_gets_text(texts[-1])

        messages = await harness.client.messages(GROUP_ID)
        copies = [
            text_of(message)
            for message in messages
            if text_of(message).startswith("bericht ")
        ]
        stats = await harness.client.stats()
        calls = [
            call
            for call in await harness.client.calls()
            if call["chat_id"] == GROUP_ID
            and call["method"] in ("sendMessage", "copyMessage")
        ]

    assert copies == texts
    assert stats["rate_limited"] == 0
    assert all(call["ok"] for call in calls)
    times = [call["clock"] for call in calls]
    for first, later in zip(times, times[TEST_GROUP_MAX:], strict=False):
        assert later - first >= MIN_PACED_SPAN_SECONDS


# Without a support group, outside the hours, nobody in time, no rights.


async def test_help_without_group_shows_contacts(
    redis: Redis, redis_server: Any
) -> None:
    async with support_harness(redis, redis_server.url, with_group=False) as harness:
        await harness.open_case()
        await harness.client_says("/hulp")
        reply = await harness.client_gets_text(PHONE)
        await harness.client_says("/status")
        step = await harness.client_gets_text("sms")
        topics = await harness.client.calls("createForumTopic")

    assert MAIL in text_of(reply)
    assert "Ik heb hulp nodig" not in button_texts(step)
    assert topics == []


async def test_help_outside_hours_gives_contacts(
    redis: Redis, redis_server: Any
) -> None:
    hours = OpeningHours.parse(closed_today())
    async with support_harness(
        redis, redis_server.url, support_opening_hours=hours
    ) as harness:
        case = await harness.open_case()
        await harness.client_says("/hulp")
        reply = await harness.client_gets_text(PHONE)
        topics = await harness.client.calls("createForumTopic")
        stored = await harness.store.get(case.case_id)

    assert MAIL in text_of(reply)
    assert "van 09:00 tot 17:00 uur" in text_of(reply)
    assert topics == []
    assert stored.support_state is None


async def test_request_nobody_takes_gets_contacts(harness: Harness) -> None:
    case = await harness.open_case()
    thread_id = await harness.request_help()
    later = time.time() + DEFAULT_SUPPORT_TAKEOVER_TIMEOUT_SECONDS + 1

    assert await harness.desk.expire_due_requests(now=time.time()) == 0
    assert await harness.desk.expire_due_requests(now=later) == 1
    reply = await harness.client_gets_text(PHONE)
    note = await harness.topic_gets_text("Niemand nam het gesprek over")

    assert MAIL in text_of(reply)
    assert note["message_thread_id"] == thread_id
    stored = await harness.store.get(case.case_id)
    assert stored.support_state is None
    assert not (await harness.reminders.state(case.case_id)).paused


async def test_display_name_signs_agent_messages(
    redis: Redis, redis_server: Any
) -> None:
    async with support_harness(
        redis, redis_server.url, support_agent_display_name="Team Gezondverzekerd"
    ) as harness:
        await harness.open_case()
        thread_id = await harness.request_help()
        await harness.take_over(thread_id)
        await harness.agent_says(thread_id, "Hallo, ik help je.")
        answer = await harness.client_gets_text("Hallo, ik help je.")

    assert text_of(answer) == "Team Gezondverzekerd:\nHallo, ik help je."


async def test_missing_admin_rights_logged(
    redis: Redis, redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="bot.support.desk")
    async with support_harness(redis, redis_server.url, bot_is_admin=False) as harness:
        await harness.open_case()
        await harness.client_says("/hulp")
        reply = await harness.client_gets_text(PHONE)
        available = harness.desk.available
        topics = await harness.client.calls("createForumTopic")

    problems = [record.getMessage() for record in caplog.records]
    assert not available
    assert MAIL in text_of(reply)
    assert topics == []
    assert any("not an administrator" in problem for problem in problems)


def test_opening_hours_parse_and_check() -> None:
    hours = OpeningHours.parse("mon-fri 09:00-17:00; sat 10:00-12:00")
    monday_ten = datetime(2026, 3, 2, 10, 0, tzinfo=AMSTERDAM).timestamp()
    monday_night = datetime(2026, 3, 2, 17, 0, tzinfo=AMSTERDAM).timestamp()
    saturday_eleven = datetime(2026, 3, 7, 11, 0, tzinfo=AMSTERDAM).timestamp()
    sunday_eleven = (
        datetime(2026, 3, 7, 11, 0, tzinfo=AMSTERDAM) + timedelta(days=1)
    ).timestamp()

    assert hours.is_open(monday_ten)
    assert not hours.is_open(monday_night)
    assert hours.is_open(saturday_eleven)
    assert not hours.is_open(sunday_eleven)
