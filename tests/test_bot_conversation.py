"""The bot's conversation, through the real PTB Application over HTTP.

The bot polls the project's Telegram Bot API emulator on loopback; the tests
play the client through the emulator's testing API and wait on the events it
records (a message sent, edited, a callback answered). State is in the
private redis-server of the test session.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis
from telegram.ext import MessageHandler, filters

from bot.application import running_bot
from bot.config import BotSettings
from bot.i18n import set_strict, translate
from bot.reminders import REMINDERS_KEY, scheduler_of
from bot.support.hours import WEEKDAYS
from bot.telegram_limits import SendLimits
from handlers.callback_data import SCOPE_MUNICIPALITY, Action, encode
from handlers.start import MAX_INVALID_INVITATIONS
from journey import keys
from journey.events import EventStream, EventType
from journey.model import Case
from journey.municipalities import Municipality, MunicipalityRegistry
from journey.package import generate_key_pair
from journey.reminders import AMSTERDAM, ReminderScheduler
from journey.steps import Event, Step
from journey.store import CaseStore
from sandbox.redis_server import free_port
from sandbox.telegram_emulator import (
    EmulatorClient,
    RateLimits,
    button_data,
    start_emulator,
)

BOT_TOKEN = "123456:emulator-test-token"
USER_ID = 7001
SERVICE_TOKEN = "test-service-token-" + "x" * 32

FAST_SEND_LIMITS = SendLimits(
    global_per_second=10_000.0, chat_per_second=1_000.0, chat_burst=1_000
)
"""Send limits far above Telegram's, so a scripted client that replies at once
is not slowed to one message a second. The group limit stays Telegram's."""

WAIT_SECONDS = 15.0
"""Upper bound for one expected event; a passing test waits far less."""

Message = dict[str, Any]


def text_of(message: Message) -> str:
    """Return the text or the caption of a message JSON."""
    return str(message.get("text") or message.get("caption") or "")


def button_texts(message: Message) -> list[str]:
    """Return the texts of every inline button of a message JSON."""
    keyboard = (message.get("reply_markup") or {}).get("inline_keyboard") or []
    return [button["text"] for row in keyboard for button in row]


def url_of(message: Message, label: str) -> str:
    """Return the URL of the inline URL button whose text contains ``label``."""
    keyboard = (message.get("reply_markup") or {}).get("inline_keyboard") or []
    for row in keyboard:
        for button in row:
            if label in button["text"] and "url" in button:
                return str(button["url"])
    raise LookupError(f"no URL button {label!r} in {button_texts(message)}")


class Chat:
    """One client in the emulator, with helpers that wait for the bot's reply."""

    def __init__(self, client: EmulatorClient, user_id: int = USER_ID) -> None:
        self.client = client
        self.user_id = user_id

    async def say(self, text: str) -> None:
        await self.client.send_text(self.user_id, text)

    async def send(self, kind: str, **fields: Any) -> None:
        await self.client.send(self.user_id, kind, **fields)

    async def tap(self, message: Message, label: str) -> None:
        data = button_data(message, label)
        await self.client.tap(self.user_id, message["message_id"], data)

    async def tap_data(self, message: Message, data: str) -> None:
        # Telegram delivers a tap on a button that the bot removed a moment
        # later, or a button of an old message; force=True lets the emulator
        # send data that the message no longer carries.
        await self.client.tap(self.user_id, message["message_id"], data, force=True)

    async def event(
        self, predicate: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        return await self.client.wait_for(self.user_id, predicate, timeout=WAIT_SECONDS)

    async def sent(self) -> Message:
        """Wait for the next message the bot sends to this chat."""
        event = await self.event(lambda event: event["kind"] == "sent")
        return dict(event["message"])

    async def sent_containing(self, fragment: str) -> Message:
        """Wait for the next sent message whose text contains ``fragment``."""
        event = await self.event(
            lambda event: (
                event["kind"] == "sent" and fragment in text_of(event["message"])
            )
        )
        return dict(event["message"])


@pytest.fixture(autouse=True)
def strict_translations() -> Iterator[None]:
    """Make a missing catalog key fail the test instead of showing the key."""
    set_strict(True)
    yield
    set_strict(False)


@pytest.fixture
def webhook_port() -> int:
    """Loopback port of Zwolle's webhook; only the ``receiver`` fixture listens."""
    return free_port()


@pytest.fixture
def registry(webhook_port: int) -> MunicipalityRegistry:
    """Zwolle takes part; Amsterdam is listed but does not."""
    return MunicipalityRegistry(
        [
            Municipality(
                code="GM0193",
                name="Zwolle",
                participates=True,
                webhook_url=f"http://127.0.0.1:{webhook_port}/webhook",
                signing_secret="whsec_" + base64.b64encode(b"k" * 32).decode(),
                key_id="zwolle-test",
                public_key_text=generate_key_pair().public_key,
            ),
            Municipality(code="GM0363", name="Amsterdam", participates=False),
        ]
    )


@pytest.fixture
def flood_control() -> bool:
    """Whether the emulator responds 429 as Telegram does; off to keep tests fast."""
    return False


@pytest.fixture
async def emulator(flood_control: bool) -> AsyncIterator[str]:
    limits = RateLimits() if flood_control else RateLimits.disabled()
    runner, base_url = await start_emulator("127.0.0.1", 0, rate_limits=limits)
    yield base_url
    await runner.cleanup()


@pytest.fixture
def service_url() -> str:
    """A loopback port where nothing listens: every service call fails."""
    return f"http://127.0.0.1:{free_port()}"


def bot_settings(emulator: str, redis_url: str, service_url: str) -> BotSettings:
    return BotSettings(
        telegram_token=BOT_TOKEN,
        redis_url=redis_url,
        pairing_service_url=service_url,
        service_token=SERVICE_TOKEN,
        api_base_url=f"{emulator}/bot",
        file_base_url=f"{emulator}/file/bot",
        consumer_name="test-bot",
        poll_timeout=5,
        telegram_limits=FAST_SEND_LIMITS,
    )


@pytest.fixture
async def bot(
    emulator: str,
    redis: Redis,
    redis_server: Any,
    registry: MunicipalityRegistry,
    service_url: str,
) -> AsyncIterator[Any]:
    settings = bot_settings(emulator, redis_server.url, service_url)
    async with running_bot(settings, redis=redis, registry=registry) as application:
        yield application


@pytest.fixture
async def client(emulator: str) -> AsyncIterator[EmulatorClient]:
    async with EmulatorClient(emulator) as emulator_client:
        yield emulator_client


@pytest.fixture
def chat(client: EmulatorClient, bot: Any) -> Chat:
    return Chat(client)


@pytest.fixture
def store(redis: Redis) -> CaseStore:
    return CaseStore(redis)


async def invite(store: CaseStore, language: str = "nl") -> tuple[Case, str]:
    case, token = await store.create("GM0193", language=language)
    return case, str(token)


async def open_case(chat: Chat, store: CaseStore) -> tuple[Case, Message]:
    """Create an invitation, follow its link and return the case and info message."""
    case, token = await invite(store)
    await chat.say(f"/start {token}")
    info = await chat.sent()
    return case, info


async def walk_to(chat: Chat, store: CaseStore, target: Step) -> tuple[Case, Message]:
    """Tap "Ja" (or Start) until the case is in ``target``; return case and message."""
    case, message = await open_case(chat, store)
    while True:
        current = await store.get(case.case_id)
        if current.step is target:
            return current, message
        label = "Start" if current.step is Step.INFO else "Ja"
        if current.step is Step.PARTNER_QUESTION:
            label = "Nee"
        await chat.tap(message, label)
        message = await chat.sent()


async def step_of(store: CaseStore, case: Case) -> Step:
    return (await store.get(case.case_id)).step


# The journey from the invitation link to the app step.


async def test_start_with_invitation_shows_info(chat: Chat, store: CaseStore) -> None:
    case, info = await open_case(chat, store)
    assert "Zwolle" in text_of(info)
    assert "niets" in text_of(info)
    assert button_texts(info) == ["Start"]
    linked = await store.get(case.case_id)
    assert linked.step is Step.INFO
    assert linked.chat_id == USER_ID


async def test_checklist_no_shows_help_then_step(chat: Chat, store: CaseStore) -> None:
    case, info = await open_case(chat, store)
    await chat.tap(info, "Start")

    expected_help = {
        Step.CHECK_DIGID: "3 werkdagen",
        Step.CHECK_SMS: "mijn.digid.nl",
        Step.CHECK_MIJNOVERHEID: "mijnoverheid.nl",
        Step.CHECK_PHONE: "telefoon",
    }
    for number, (step, fragment) in enumerate(expected_help.items(), start=1):
        question = await chat.sent()
        assert f"Vraag {number} van 4" in text_of(question)
        assert button_texts(question) == ["Ja", "Nee"]

        await chat.tap(question, "Nee")
        help_message = await chat.sent()
        assert fragment in text_of(help_message)
        assert button_texts(help_message) == [
            "Ik heb het nu geregeld",
            "Herinner me later",
        ]
        assert await step_of(store, case) is step
        await chat.tap(help_message, "Ik heb het nu geregeld")

    partner = await chat.sent()
    assert "partner" in text_of(partner)
    assert "controle via sms" in text_of(partner)
    finished = await store.get(case.case_id)
    assert finished.step is Step.PARTNER_QUESTION
    assert set(finished.checklist.values()) == {"yes"}


async def test_remind_later_records_and_repeats(chat: Chat, store: CaseStore) -> None:
    case, question = await walk_to(chat, store, Step.CHECK_SMS)
    await chat.tap(question, "Nee")
    help_message = await chat.sent()
    await chat.tap(help_message, "Herinner me later")

    answer = await chat.sent()
    assert "herinnering" in text_of(answer)
    assert "controle via sms" in text_of(answer)
    assert button_texts(answer) == ["Ja", "Nee"]
    recorded = await store.get(case.case_id)
    assert recorded.checklist[Step.CHECK_SMS.value] == "later"
    assert recorded.step is Step.CHECK_SMS

    await chat.tap(answer, "Ja")
    assert "MijnOverheid" in text_of(await chat.sent())


async def test_partner_no_leads_to_app(chat: Chat, store: CaseStore) -> None:
    case, question = await walk_to(chat, store, Step.PARTNER_QUESTION)
    assert "er dus bij zijn" in text_of(question)
    await chat.tap(question, "Nee")

    app = await chat.sent()
    assert button_texts(app) == [
        "App Store (iPhone)",
        "Google Play (Android)",
        "Ik heb de Ockto app",
    ]
    assert url_of(app, "App Store").startswith("https://")
    assert url_of(app, "Google Play").startswith("https://")
    moved = await store.get(case.case_id)
    assert moved.step is Step.APP
    assert moved.has_partner is False


async def test_partner_yes_asks_partner_items(chat: Chat, store: CaseStore) -> None:
    case, question = await walk_to(chat, store, Step.PARTNER_QUESTION)
    await chat.tap(question, "Ja")

    digid = await chat.sent()
    assert "DigiD van je partner" not in text_of(digid)
    assert "partner" in text_of(digid)
    await chat.tap(digid, "Nee")
    help_message = await chat.sent()
    assert "digid.nl" in text_of(help_message)
    await chat.tap(help_message, "Ik heb het nu geregeld")

    sms = await chat.sent()
    assert "DigiD van je partner" in text_of(sms)
    await chat.tap(sms, "Ja")

    app = await chat.sent()
    assert "Ik heb de Ockto app" in button_texts(app)
    moved = await store.get(case.case_id)
    assert moved.step is Step.APP
    assert moved.has_partner is True


async def test_have_app_without_service_answers(chat: Chat, store: CaseStore) -> None:
    case, app = await walk_to(chat, store, Step.APP)
    await chat.tap(app, "Ik heb de Ockto app")

    answer = await chat.sent()
    assert "QR-code" in text_of(answer)
    assert "opnieuw" in text_of(answer)
    assert "Ik heb de Ockto app" in button_texts(answer)
    assert await step_of(store, case) is Step.APP


# Buttons: double taps, old buttons, forged data.


async def test_double_tap_advances_once(chat: Chat, store: CaseStore) -> None:
    case, info = await open_case(chat, store)
    data = button_data(info, "Start")
    await chat.tap_data(info, data)
    await chat.tap_data(info, data)

    first = await chat.sent()
    second = await chat.sent()
    texts = sorted([text_of(first), text_of(second)])
    assert await step_of(store, case) is Step.CHECK_DIGID
    assert sum("Vraag 1 van 4" in text for text in texts) == 2
    assert sum("eerdere stap" in text for text in texts) == 1


async def test_every_tap_is_answered(chat: Chat, store: CaseStore) -> None:
    _case, info = await open_case(chat, store)
    data = button_data(info, "Start")
    await chat.tap_data(info, data)
    await chat.tap_data(info, data)
    await chat.sent()
    await chat.sent()

    calls = await chat.client.calls("answerCallbackQuery")
    assert len(calls) == 2
    assert all(call["ok"] for call in calls)


async def test_old_button_shows_current_step(chat: Chat, store: CaseStore) -> None:
    case, info = await open_case(chat, store)
    await chat.tap(info, "Start")
    question = await chat.sent()
    await chat.tap(question, "Ja")
    await chat.sent()

    await chat.tap_data(info, button_data(info, "Start"))
    answer = await chat.sent()
    assert "eerdere stap" in text_of(answer)
    assert "Vraag 2 van 4" in text_of(answer)
    assert button_texts(answer) == ["Ja", "Nee"]
    assert await step_of(store, case) is Step.CHECK_SMS


async def test_button_of_previous_case_rejected(chat: Chat, store: CaseStore) -> None:
    case, info = await open_case(chat, store)
    forged = encode(Step.INFO, "ffff", Action.START)
    await chat.tap_data(info, forged)

    answer = await chat.sent()
    assert "eerdere stap" in text_of(answer)
    assert await step_of(store, case) is Step.INFO


async def test_garbage_callback_data_answered(chat: Chat, store: CaseStore) -> None:
    case, info = await open_case(chat, store)
    await chat.tap_data(info, "v0|unknown|data")

    answer = await chat.sent()
    assert "eerdere stap" in text_of(answer)
    assert "Start" in button_texts(answer)
    assert await step_of(store, case) is Step.INFO


# Unexpected input gets a reply and the current step again.


@pytest.mark.parametrize(
    ("kind", "fields", "fragment"),
    [
        ("text", {"text": "Hallo, wat moet ik doen?"}, "begrijp ik niet"),
        ("sticker", {}, "stickers"),
        ("photo", {}, "foto's"),
        ("voice", {}, "spraakberichten"),
        ("document", {}, "bestanden"),
        ("contact", {"phone_number": "+31612345678"}, "telefoonnummer"),
        ("location", {"latitude": 52.5, "longitude": 6.1}, "locatie"),
        ("command", {"text": "/onbekend"}, "commando ken ik niet"),
    ],
)
async def test_unexpected_input_repeats_step(
    chat: Chat, store: CaseStore, kind: str, fields: dict[str, Any], fragment: str
) -> None:
    case, _question = await walk_to(chat, store, Step.CHECK_SMS)
    await chat.send(kind, **fields)

    answer = await chat.sent()
    assert fragment in text_of(answer)
    assert "controle via sms" in text_of(answer)
    assert button_texts(answer) == ["Ja", "Nee"]
    assert await step_of(store, case) is Step.CHECK_SMS


async def test_edited_message_answered(chat: Chat, store: CaseStore) -> None:
    case, _info = await open_case(chat, store)
    sent = await chat.client.send_text(USER_ID, "hoi")
    await chat.sent()
    await chat.client.edit(USER_ID, sent["message_id"], "hallo")

    answer = await chat.sent()
    assert "aangepast" in text_of(answer)
    assert "Start" in button_texts(answer)
    assert await step_of(store, case) is Step.INFO


async def test_group_chat_gets_private_hint(client: EmulatorClient, bot: Any) -> None:
    group_id = -100123
    await client.send_text(USER_ID, "/start", chat_type="group", chat_id=group_id)
    event = await client.wait_for(
        group_id, lambda event: event["kind"] == "sent", timeout=WAIT_SECONDS
    )
    assert "privégesprek" in text_of(event["message"])
    assert url_of(event["message"], "privégesprek").startswith("https://t.me/")


async def test_handler_error_answers_plainly(
    chat: Chat, store: CaseStore, bot: Any
) -> None:
    async def explode(update: object, context: object) -> None:
        raise RuntimeError("handler bug with internal detail")

    bot.add_handler(MessageHandler(filters.Regex("^boom$"), explode), group=-1)
    case, _info = await open_case(chat, store)
    await chat.say("boom")

    answer = await chat.sent()
    assert "Er ging iets mis" in text_of(answer)
    assert "internal detail" not in text_of(answer)
    assert "Start" in button_texts(answer)
    assert await step_of(store, case) is Step.INFO


# /start without a usable invitation.


async def test_start_without_token_asks_municipality(chat: Chat) -> None:
    await chat.say("/start")
    answer = await chat.sent()
    assert "uitnodiging" in text_of(answer)
    assert "naam van je gemeente" in text_of(answer)


@pytest.mark.parametrize(
    ("token", "fragment"),
    [
        ("kort", "klopt niet"),
        ("A" * 44, "ken ik niet"),
    ],
)
async def test_bad_token_explained(chat: Chat, token: str, fragment: str) -> None:
    await chat.say(f"/start {token}")
    answer = await chat.sent()
    assert fragment in text_of(answer)


async def test_token_guessing_rate_limited(chat: Chat, store: CaseStore) -> None:
    for _attempt in range(MAX_INVALID_INVITATIONS):
        await chat.say("/start " + "B" * 44)
        assert "ken ik niet" in text_of(await chat.sent())

    _case, token = await invite(store)
    await chat.say(f"/start {token}")
    answer = await chat.sent()
    assert "te vaak" in text_of(answer)
    assert await store.find_by_chat(USER_ID) is None


async def test_finished_token_explained(chat: Chat, store: CaseStore) -> None:
    case, token = await invite(store)
    await store.finish(case.case_id, Event.CANCEL)
    await chat.say(f"/start {token}")
    assert "al klaar" in text_of(await chat.sent())


async def test_expired_token_explained(chat: Chat, store: CaseStore) -> None:
    case, token = await invite(store)
    await store.finish(case.case_id, Event.EXPIRE)
    await chat.say(f"/start {token}")
    assert "te oud" in text_of(await chat.sent())


async def test_token_of_other_chat_rejected(
    chat: Chat, client: EmulatorClient, store: CaseStore
) -> None:
    case, token = await invite(store)
    await chat.say(f"/start {token}")
    await chat.sent()

    other = Chat(client, USER_ID + 1)
    await other.say(f"/start {token}")
    assert "ander gesprek" in text_of(await other.sent())
    assert (await store.get(case.case_id)).chat_id == USER_ID


async def test_start_again_shows_current_step(chat: Chat, store: CaseStore) -> None:
    _case, _question = await walk_to(chat, store, Step.CHECK_MIJNOVERHEID)
    await chat.say("/start")
    answer = await chat.sent()
    assert "al begonnen" in text_of(answer)
    assert "MijnOverheid" in text_of(answer)


async def test_typed_municipality_creates_case(chat: Chat, store: CaseStore) -> None:
    await chat.say("zwolle")
    confirm = await chat.sent()
    assert "Zwolle" in text_of(confirm)
    await chat.tap(confirm, "Ja, dat klopt")

    info = await chat.sent()
    assert "Zwolle" in text_of(info)
    case = await store.find_by_chat(USER_ID)
    assert case is not None
    assert case.step is Step.INFO
    assert case.municipality_code == "GM0193"
    # The case gets the same reminder series as an invitation's case.
    state = await store.redis.hgetall(keys.reminder_state(case.case_id))
    assert float(state["invited_at"]) == case.created_at


@pytest.mark.parametrize("action", ["bogus", "yess"])
async def test_forged_municipality_tap_answered(
    chat: Chat, store: CaseStore, action: str
) -> None:
    await chat.say("zwolle")
    confirm = await chat.sent()
    await chat.tap_data(confirm, f"{SCOPE_MUNICIPALITY}:GM0193:{action}")

    answer = await chat.sent()
    assert "opnieuw" in text_of(answer)
    assert await store.find_by_chat(USER_ID) is None


async def test_forged_municipality_tap_with_case(chat: Chat, store: CaseStore) -> None:
    case, info = await open_case(chat, store)
    await chat.tap_data(info, f"{SCOPE_MUNICIPALITY}:GM0193:bogus")

    answer = await chat.sent()
    assert "eerdere stap" in text_of(answer)
    assert await step_of(store, case) is Step.INFO


async def test_typed_name_with_typo_is_confirmed(chat: Chat) -> None:
    await chat.say("Zwole")
    confirm = await chat.sent()
    assert "Zwolle" in text_of(confirm)
    assert button_texts(confirm) == ["Ja, dat klopt", "Nee"]


async def test_non_participating_municipality_told(
    chat: Chat, store: CaseStore
) -> None:
    await chat.say("Amsterdam")
    answer = await chat.sent()
    assert "doet nog niet mee" in text_of(answer)
    assert await store.find_by_chat(USER_ID) is None


async def test_common_name_matched_to_official(chat: Chat) -> None:
    await chat.say("Den Bosch")
    answer = await chat.sent()
    assert "'s-Hertogenbosch" in text_of(answer)
    assert "doet nog niet mee" in text_of(answer)


async def test_ambiguous_name_offers_choice(chat: Chat, store: CaseStore) -> None:
    await chat.say("Bergen")
    choice = await chat.sent()
    labels = button_texts(choice)
    assert "Welke gemeente" in text_of(choice)
    assert len(labels) >= 3
    assert labels[-1] == "Geen van deze"
    assert all("Bergen" in label for label in labels[:-1])

    await chat.tap(choice, labels[0])
    answer = await chat.sent()
    assert "doet nog niet mee" in text_of(answer)
    assert await store.find_by_chat(USER_ID) is None


async def test_unknown_municipality_told(chat: Chat) -> None:
    await chat.say("Atlantis")
    assert "niet vinden" in text_of(await chat.sent())


# Commands.


async def test_help_gives_contact(chat: Chat) -> None:
    await chat.say("/hulp")
    answer = await chat.sent()
    assert "support@gezondverzekerd.nl" in text_of(answer)
    assert "038 - 455 29 20" in text_of(answer)


async def test_status_tells_where_and_next(chat: Chat, store: CaseStore) -> None:
    await walk_to(chat, store, Step.CHECK_SMS)
    await chat.say("/status")
    answer = await chat.sent()
    assert "Zo ver ben je:" in text_of(answer)
    assert "Wat komt hierna?" in text_of(answer)
    assert "controle via sms" in text_of(answer)


async def test_stop_keep_going(chat: Chat, store: CaseStore) -> None:
    case, _info = await open_case(chat, store)
    await chat.say("/stop")
    confirm = await chat.sent()
    assert "wis ik alles" in text_of(confirm)
    await chat.tap(confirm, "Nee, ik ga door")

    answer = await chat.sent()
    assert "je gaat verder" in text_of(answer)
    assert await step_of(store, case) is Step.INFO


async def test_stop_without_service_keeps_case(chat: Chat, store: CaseStore) -> None:
    case, _info = await open_case(chat, store)
    await chat.say("/stop")
    confirm = await chat.sent()
    await chat.tap(confirm, "Ja, stop")

    answer = await chat.sent()
    assert "over een paar minuten" in text_of(answer)
    assert await step_of(store, case) is Step.INFO


async def test_menu_commands_set(chat: Chat) -> None:
    calls = await chat.client.calls("setMyCommands")
    assert len(calls) == 2
    assert all(call["ok"] for call in calls)


# Events from the service.


async def fetching_case(chat: Chat, store: CaseStore, *, partner: bool = False) -> Case:
    """Walk a case to the app step, then apply the service's steps to fetching."""
    case, _message = await walk_to(chat, store, Step.APP)
    if partner:
        await store.update(case.case_id, {"has_partner": True})
    await store.apply(case.case_id, Event.APP_READY, expected_step=Step.APP)
    return await store.apply(case.case_id, Event.PAIRING_CLAIMED, expected_step=Step.QR)


async def test_pairing_claimed_confirmed(
    chat: Chat, store: CaseStore, redis: Redis
) -> None:
    case = await fetching_case(chat, store)
    await EventStream(redis).publish(EventType.PAIRING_CLAIMED, case.case_id)
    answer = await chat.sent()
    assert "gekoppeld" in text_of(answer)


async def test_progress_edits_one_message(
    chat: Chat, store: CaseStore, redis: Redis
) -> None:
    case = await fetching_case(chat, store)
    events = EventStream(redis)

    progress = {"client": {"digid": True, "sources": {}}}
    await store.update(case.case_id, {"progress": progress})
    await events.publish(EventType.PROGRESS, case.case_id, progress=progress)
    first = await chat.sent()
    assert "DigiD: ingelogd" in text_of(first)
    assert "UWV: nog niet klaar" in text_of(first)

    progress = {"client": {"digid": True, "sources": {"uwv": "done"}}}
    await store.update(case.case_id, {"progress": progress})
    await events.publish(EventType.PROGRESS, case.case_id, progress=progress)
    edited = await chat.event(lambda event: event["kind"] == "edited")
    assert edited["message"]["message_id"] == first["message_id"]
    assert "UWV: klaar" in text_of(edited["message"])
    stored = await store.get(case.case_id)
    assert stored.progress_message_id == first["message_id"]


async def test_one_batch_keeps_case_order(
    chat: Chat, store: CaseStore, redis: Redis, client: EmulatorClient
) -> None:
    case = await fetching_case(chat, store)
    other = Chat(client, USER_ID + 1)
    other_case = await fetching_case(other, store)
    progress = {"client": {"digid": True, "sources": {}}}
    await store.update(case.case_id, {"progress": progress})

    # One transaction makes the events visible at once, so the consumer reads
    # them in one batch. The fields are those that EventStream.publish writes.
    async with redis.pipeline(transaction=True) as pipe:
        for event_type, case_id in (
            (EventType.PROGRESS, case.case_id),
            (EventType.PAIRING_CLAIMED, other_case.case_id),
            (EventType.PROGRESS, case.case_id),
            (EventType.REVIEW_READY, case.case_id),
        ):
            fields = {"type": event_type.value, "case_id": case_id, "data": "{}"}
            pipe.xadd(keys.events(), fields)  # type: ignore[arg-type]
        await pipe.execute()

    # Had the second progress event run beside the first, it would not have
    # seen the first one's message and would have sent a second one.
    first = await chat.sent()
    await chat.sent_containing(translate("review.body"))
    await other.sent_containing(translate("paired.body"))
    assert "DigiD: ingelogd" in text_of(first)
    progress_messages = [
        message
        for message in await client.messages(USER_ID)
        if "DigiD: ingelogd" in text_of(message)
    ]
    assert len(progress_messages) == 1
    stored = await store.get(case.case_id)
    assert stored.progress_message_id == first["message_id"]


async def test_progress_names_partner_separately(
    chat: Chat, store: CaseStore, redis: Redis
) -> None:
    case = await fetching_case(chat, store, partner=True)
    progress = {
        "client": {"digid": True, "sources": {"uwv": "done"}},
        "partner": {"digid": True, "sources": {"uwv": "failed"}},
    }
    await store.update(case.case_id, {"progress": progress})
    await EventStream(redis).publish(
        EventType.PROGRESS, case.case_id, progress=progress
    )
    text = text_of(await chat.sent())
    assert "Je partner" in text
    assert "UWV: niet gelukt" in text


async def test_consent_question_names_municipality(
    chat: Chat, store: CaseStore, redis: Redis
) -> None:
    case = await fetching_case(chat, store)
    await store.apply(case.case_id, Event.PACKAGE_RECEIVED, expected_step=Step.FETCHING)
    await EventStream(redis).publish(EventType.CONSENT_NEEDED, case.case_id)
    question = await chat.sent()
    assert "gemeente Zwolle" in text_of(question)
    assert button_texts(question) == ["Ja, stuur de gegevens", "Nee, niet sturen"]


async def test_consent_no_asks_confirmation(
    chat: Chat, store: CaseStore, redis: Redis
) -> None:
    case = await fetching_case(chat, store)
    await store.apply(case.case_id, Event.PACKAGE_RECEIVED, expected_step=Step.FETCHING)
    await EventStream(redis).publish(EventType.CONSENT_NEEDED, case.case_id)
    question = await chat.sent()
    await chat.tap(question, "Nee, niet sturen")

    confirm = await chat.sent()
    assert "Weet je het zeker?" in text_of(confirm)
    await chat.tap(confirm, "Ga terug")
    again = await chat.sent()
    assert "gemeente Zwolle" in text_of(again)
    assert await step_of(store, case) is Step.CONSENT


async def test_delivered_confirmed_nothing_kept(
    chat: Chat, store: CaseStore, redis: Redis
) -> None:
    case = await fetching_case(chat, store)
    await store.apply(case.case_id, Event.PACKAGE_RECEIVED, expected_step=Step.FETCHING)
    await store.apply(case.case_id, Event.CLIENT_CONSENTS, expected_step=Step.CONSENT)
    await EventStream(redis).publish(EventType.DELIVERED, case.case_id)
    answer = await chat.sent()
    assert "gemeente Zwolle gestuurd" in text_of(answer)
    assert "niets" in text_of(answer)


async def test_delivered_after_tombstone_uses_event_chat(
    chat: Chat, store: CaseStore, redis: Redis
) -> None:
    case = await fetching_case(chat, store)
    await store.apply(case.case_id, Event.PACKAGE_RECEIVED, expected_step=Step.FETCHING)
    await store.apply(case.case_id, Event.CLIENT_CONSENTS, expected_step=Step.CONSENT)
    await store.finish(case.case_id, Event.DELIVERED)
    await EventStream(redis).publish(EventType.DELIVERED, case.case_id, chat_id=USER_ID)
    answer = await chat.sent()
    assert "gemeente Zwolle gestuurd" in text_of(answer)


async def test_event_message_waits_for_running_update(
    chat: Chat, store: CaseStore, redis: Redis, bot: Any
) -> None:
    # The last consent's reply and the "delivered" message of the same
    # delivery race each other. An event's message waits for the update of
    # its chat that is being handled, as the reply of that update does.
    case = await fetching_case(chat, store)
    await store.apply(case.case_id, Event.PACKAGE_RECEIVED, expected_step=Step.FETCHING)
    await store.apply(case.case_id, Event.CLIENT_CONSENTS, expected_step=Step.CONSENT)
    await store.finish(case.case_id, Event.DELIVERED)
    processor = bot.update_processor
    async with processor.chat_turn(USER_ID):
        await EventStream(redis).publish(
            EventType.DELIVERED, case.case_id, chat_id=USER_ID
        )
        # The consumer queues behind this turn instead of sending at once.
        async with asyncio.timeout(WAIT_SECONDS):
            while True:
                processor.turn_requested.clear()
                if processor.turns_of(USER_ID) >= 2:
                    break
                await processor.turn_requested.wait()
        await bot.bot.send_message(USER_ID, "reply of the running update")
    first = await chat.sent()
    second = await chat.sent()
    assert text_of(first) == "reply of the running update"
    assert "gemeente Zwolle gestuurd" in text_of(second)


async def test_event_without_chat_is_acknowledged(
    chat: Chat, store: CaseStore, redis: Redis
) -> None:
    lonely, _token = await invite(store)
    events = EventStream(redis)
    await events.publish(EventType.PROGRESS, lonely.case_id, progress={})

    # A second event, for a linked case, proves the first one was handled.
    case = await fetching_case(chat, store)
    await events.publish(EventType.PAIRING_CLAIMED, case.case_id)
    await chat.sent_containing("gekoppeld")
    pending = await redis.xpending(keys.events(), "bot")
    assert pending["pending"] == 0


async def test_event_for_blocked_chat_is_dropped(
    chat: Chat, store: CaseStore, redis: Redis, client: EmulatorClient
) -> None:
    blocked = await fetching_case(chat, store)
    await client.block(USER_ID)
    events = EventStream(redis)
    await events.publish(EventType.PAIRING_CLAIMED, blocked.case_id)

    # The consumer reads the first event long before the second is published,
    # and it finishes a batch before it reads the next, so a reply in another
    # chat proves that the first event was handled.
    other = Chat(client, USER_ID + 1)
    case, token = await invite(store)
    await other.say(f"/start {token}")
    await other.sent()
    await store.apply(case.case_id, Event.START)
    await events.publish(EventType.REVIEW_READY, case.case_id)
    await other.sent_containing("De app is klaar met ophalen")

    pending = await redis.xpending(keys.events(), "bot")
    assert pending["pending"] == 0
    refused = [call for call in await client.calls("sendMessage") if not call["ok"]]
    assert [call["error_code"] for call in refused] == [403]


# The QR step with the real pairing service.


@pytest.fixture
def delivery_worker() -> bool:
    """Whether the pairing service runs its delivery worker in the test."""
    return False


class Receiver:
    """The deliveries that Zwolle's webhook accepted."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.received = asyncio.Event()


@pytest.fixture
async def receiver(webhook_port: int) -> AsyncIterator[Receiver]:
    """Zwolle's webhook on loopback: accepts every delivery, keeps the bodies."""
    deliveries = Receiver()

    async def accept(request: web.Request) -> web.Response:
        deliveries.bodies.append(await request.read())
        deliveries.received.set()
        return web.Response(status=204)

    application = web.Application()
    application.router.add_post("/webhook", accept)
    runner = web.AppRunner(application)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", webhook_port).start()
    yield deliveries
    await runner.cleanup()


@pytest.fixture
async def pairing_service(
    redis: Redis,
    registry: MunicipalityRegistry,
    tmp_path: Any,
    delivery_worker: bool,
) -> AsyncIterator[str]:
    app_module = pytest.importorskip("pairing_service.app")
    config = pytest.importorskip("pairing_service.config")
    port = free_port()
    settings = config.Settings(
        service_token=SERVICE_TOKEN,
        public_base_url=f"http://127.0.0.1:{port}",
        bot_username="gv_test_bot",
        registry_path=tmp_path / "unused.json",
        host="127.0.0.1",
        port=port,
    )
    application = app_module.create_app(
        settings, redis=redis, registry=registry, start_worker=delivery_worker
    )
    runner = web.AppRunner(application)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def bot_with_service(
    emulator: str,
    redis: Redis,
    redis_server: Any,
    registry: MunicipalityRegistry,
    pairing_service: str,
) -> AsyncIterator[Any]:
    settings = bot_settings(emulator, redis_server.url, pairing_service)
    async with running_bot(settings, redis=redis, registry=registry) as application:
        yield application


async def test_qr_photo_with_code_and_buttons(
    client: EmulatorClient, bot_with_service: Any, store: CaseStore
) -> None:
    chat = Chat(client)
    case, app = await walk_to(chat, store, Step.APP)
    await chat.tap(app, "Ik heb de Ockto app")

    photo = await chat.sent()
    assert photo.get("photo")
    assert button_texts(photo) == [
        "Open de Ockto app",
        "Open de QR-code in je browser",
        "Nieuwe code",
    ]
    app_link = url_of(photo, "Open de Ockto app")
    assert "/app/open#" in app_link
    assert "/koppel/" in url_of(photo, "Open de QR-code in je browser")
    assert await step_of(store, case) is Step.QR

    zxingcpp = pytest.importorskip("zxingcpp")
    image_module = pytest.importorskip("PIL.Image")
    largest = max(photo["photo"], key=lambda size: size["width"])
    data = await client.file_bytes(largest["file_id"])
    image = image_module.open(io.BytesIO(data))
    decoded = zxingcpp.read_barcodes(image)
    assert [barcode.text for barcode in decoded] == [app_link]


async def test_new_code_sends_new_photo(
    client: EmulatorClient, bot_with_service: Any, store: CaseStore
) -> None:
    chat = Chat(client)
    case, app = await walk_to(chat, store, Step.APP)
    await chat.tap(app, "Ik heb de Ockto app")
    first = await chat.sent()
    await chat.tap(first, "Nieuwe code")

    second = await chat.sent()
    assert second.get("photo")
    assert url_of(second, "Open de Ockto app") != url_of(first, "Open de Ockto app")
    assert await step_of(store, case) is Step.QR


async def test_claim_by_app_confirmed_in_chat(
    client: EmulatorClient,
    bot_with_service: Any,
    store: CaseStore,
    pairing_service: str,
) -> None:
    chat = Chat(client)
    _case, app = await walk_to(chat, store, Step.APP)
    await chat.tap(app, "Ik heb de Ockto app")
    photo = await chat.sent()
    code = url_of(photo, "Open de Ockto app").split("#", 1)[1]

    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{pairing_service}/app/v1/claim", json={"code": code}
        ) as response:
            assert response.status == 200
            claimed = await response.json()
        headers = {"Authorization": f"Bearer {claimed['session_token']}"}
        async with session.post(
            f"{pairing_service}/app/v1/events",
            json={"type": "digid_login", "person": "client"},
            headers=headers,
        ) as response:
            assert response.status == 202

    assert "gekoppeld" in text_of(await chat.sent_containing("gekoppeld"))
    progress = await chat.sent_containing("Zo ver ben je")
    assert "DigiD: ingelogd" in text_of(progress)


async def upload_package(
    chat: Chat, store: CaseStore, pairing_service: str
) -> tuple[Case, Message]:
    """Pair the app, fetch one source, upload a package; return the consent question."""
    case, app = await walk_to(chat, store, Step.APP)
    await chat.tap(app, "Ik heb de Ockto app")
    photo = await chat.sent()
    code = url_of(photo, "Open de Ockto app").split("#", 1)[1]

    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{pairing_service}/app/v1/claim", json={"code": code}
        ) as response:
            assert response.status == 200
            claimed = await response.json()
        headers = {"Authorization": f"Bearer {claimed['session_token']}"}
        for event in (
            {"type": "digid_login", "person": "client"},
            {"type": "source_fetched", "person": "client", "source": "uwv"},
            {"type": "review_ready"},
        ):
            async with session.post(
                f"{pairing_service}/app/v1/events", json=event, headers=headers
            ) as response:
                assert response.status == 202
        async with session.put(
            f"{pairing_service}/app/v1/package",
            data=b'{"uwv": "test data"}',
            headers={**headers, "Content-Type": "application/octet-stream"},
        ) as response:
            assert response.status == 202

    question = await chat.sent_containing("Wil je de gegevens nu")
    return case, question


async def test_consent_yes_starts_delivery(
    client: EmulatorClient,
    bot_with_service: Any,
    store: CaseStore,
    pairing_service: str,
) -> None:
    chat = Chat(client)
    case, question = await upload_package(chat, store, pairing_service)
    assert "gemeente Zwolle" in text_of(question)
    await chat.tap(question, "Ja, stuur")

    answer = await chat.sent_containing("Ik stuur de gegevens nu")
    assert "gemeente Zwolle" in text_of(answer)
    delivering = await store.get(case.case_id)
    assert delivering.step is Step.DELIVERING
    assert delivering.consented("client")


@pytest.mark.parametrize("delivery_worker", [True])
async def test_delivery_confirmed_in_chat(
    client: EmulatorClient,
    bot_with_service: Any,
    store: CaseStore,
    pairing_service: str,
    receiver: Receiver,
) -> None:
    chat = Chat(client)
    _case, question = await upload_package(chat, store, pairing_service)
    await chat.tap(question, "Ja, stuur")
    await chat.sent_containing("Ik stuur de gegevens nu")
    await asyncio.wait_for(receiver.received.wait(), WAIT_SECONDS)

    answer = await chat.sent_containing("gestuurd")
    assert "gemeente Zwolle" in text_of(answer)
    assert len(receiver.bodies) == 1


async def test_consent_refused_erases_package(
    client: EmulatorClient,
    bot_with_service: Any,
    store: CaseStore,
    pairing_service: str,
    redis: Redis,
) -> None:
    chat = Chat(client)
    case, question = await upload_package(chat, store, pairing_service)
    await chat.tap(question, "Nee, niet sturen")
    confirm = await chat.sent()
    await chat.tap(confirm, "Ja, niet sturen")

    answer = await chat.sent_containing("niet gestuurd")
    assert "gewist" in text_of(answer)
    finished = await store.get(case.case_id)
    assert finished.step is Step.REFUSED
    assert finished.tombstone
    assert await redis.exists(keys.package(case.case_id)) == 0


async def test_consent_after_package_expired_explained(
    client: EmulatorClient,
    bot_with_service: Any,
    store: CaseStore,
    pairing_service: str,
    redis: Redis,
) -> None:
    chat = Chat(client)
    case, question = await upload_package(chat, store, pairing_service)
    await redis.delete(keys.package(case.case_id))
    await chat.tap(question, "Ja, stuur")

    answer = await chat.sent()
    assert "te lang" in text_of(answer)
    assert "/hulp" in text_of(answer)


async def test_stop_with_service_erases_case(
    client: EmulatorClient, bot_with_service: Any, store: CaseStore
) -> None:
    chat = Chat(client)
    case, _info = await open_case(chat, store)
    await chat.say("/stop")
    confirm = await chat.sent()
    await chat.tap(confirm, "Ja, stop")

    answer = await chat.sent()
    assert "gewist" in text_of(answer)
    assert (await store.get(case.case_id)).tombstone
    assert await store.find_by_chat(USER_ID) is None


def test_english_catalog_used_for_english_case() -> None:
    assert translate("button.yes", "en") == "Yes"
    assert translate("button.yes", "en-GB") == "Yes"
    assert translate("button.yes", "fr") == "Ja"


async def test_english_case_answered_in_english(chat: Chat, store: CaseStore) -> None:
    _case, token = await invite(store, language="en")
    await chat.say(f"/start {token}")
    info = await chat.sent()
    assert "Welcome" in text_of(info)
    assert "municipality of Zwolle" in text_of(info)


@pytest.mark.parametrize("flood_control", [True])
async def test_flood_control_delays_not_drops(
    chat: Chat, store: CaseStore, client: EmulatorClient
) -> None:
    case, info = await open_case(chat, store)
    await chat.tap(info, "Start")
    for _item in range(4):
        question = await chat.sent()
        await chat.tap(question, "Nee")
        help_message = await chat.sent()
        await chat.tap(help_message, "Ik heb het nu geregeld")

    assert "partner" in text_of(await chat.sent())
    assert await step_of(store, case) is Step.PARTNER_QUESTION
    stats = await client.stats()
    assert stats["rate_limited"] > 0


async def test_many_chats_each_answered(
    client: EmulatorClient, bot: Any, store: CaseStore
) -> None:
    chats = [Chat(client, USER_ID + 100 + index) for index in range(5)]
    tokens = [str((await store.create("GM0193"))[1]) for _chat in chats]
    await asyncio.gather(
        *(one.say(f"/start {token}") for one, token in zip(chats, tokens, strict=True))
    )
    for one in chats:
        assert "Zwolle" in text_of(await one.sent())


# What the client reads: when a reminder comes, and the QR step shown again.

QR_BUTTON_KEYS = ("button.open_app", "button.qr_page", "button.renew")
"""The buttons of the QR step's photo message, top to bottom."""

TYPED_CODE = re.compile(r"\b[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}\b")
"""A typed code as the caption shows it (``pairing_service.typed_codes``)."""


async def claim_code(pairing_service: str, code: str) -> tuple[int, dict[str, Any]]:
    """Claim ``code`` as the Ockto app does; return the status and the JSON body."""
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{pairing_service}/app/v1/claim", json={"code": code}
        ) as response:
            return response.status, await response.json()


@pytest.mark.parametrize(
    ("requested", "when"),
    [
        # Monday 10:15 in Amsterdam: a day later is inside the send window.
        (datetime(2027, 3, 1, 10, 15, tzinfo=AMSTERDAM), "morgen om 10:15 uur"),
        # Monday 21:30: a day later is after 20:00, so Wednesday's opening.
        (datetime(2027, 3, 1, 21, 30, tzinfo=AMSTERDAM), "op woensdag om 09:00 uur"),
    ],
    ids=["tomorrow", "after_window"],
)
async def test_remind_later_names_stored_time(
    chat: Chat,
    store: CaseStore,
    redis: Redis,
    bot: Any,
    requested: datetime,
    when: str,
) -> None:
    running = scheduler_of(bot.bot_data)
    assert running is not None
    # The bot's own scheduler class, with the clock set to the request time.
    bot.bot_data[REMINDERS_KEY] = ReminderScheduler(
        redis, window=running.window, clock=requested.timestamp
    )
    case, question = await walk_to(chat, store, Step.CHECK_SMS)
    await chat.tap(question, "Nee")
    help_message = await chat.sent()
    await chat.tap(help_message, "Herinner me later")

    answer = await chat.sent()
    stored = await redis.zscore(keys.reminders_due(), f"{case.case_id}:later")
    assert stored is not None
    due = datetime.fromtimestamp(stored, AMSTERDAM)
    assert f"om {due:%H:%M} uur" in text_of(answer)
    assert when in text_of(answer)
    if "morgen" in when:
        assert due.date() == requested.date() + timedelta(days=1)
    else:
        weekday = translate(f"label.weekday.{WEEKDAYS[due.weekday()]}", "nl")
        assert f"op {weekday} om" in text_of(answer)
    assert button_texts(answer) == ["Ja", "Nee"]


async def test_qr_caption_carries_every_code(
    client: EmulatorClient,
    bot_with_service: Any,
    store: CaseStore,
    redis: Redis,
    pairing_service: str,
) -> None:
    chat = Chat(client)
    case, app = await walk_to(chat, store, Step.APP)
    await chat.tap(app, "Ik heb de Ockto app")
    photo = await chat.sent()

    caption = text_of(photo)
    pairing = await redis.hgetall(keys.pairing(case.case_id))
    assert pairing["confirmation_code"] in caption
    assert "/app/open#" in url_of(photo, "Open de Ockto app")
    typed = TYPED_CODE.search(caption)
    assert typed is not None
    assert f"Geen camera? Typ dan deze code in de app: {typed.group()}" in caption
    status, claimed = await claim_code(pairing_service, typed.group())
    assert status == 200
    assert claimed["confirmation_code"] == pairing["confirmation_code"]


async def show_qr_step(chat: Chat, store: CaseStore) -> tuple[Case, Message]:
    """Walk a case to the QR step through the service; return it and the photo."""
    case, app = await walk_to(chat, store, Step.APP)
    await chat.tap(app, "Ik heb de Ockto app")
    photo = await chat.sent()
    assert button_texts(photo) == [translate(key, "nl") for key in QR_BUTTON_KEYS]
    return case, photo


async def test_status_at_qr_step_shows_qr_message(
    client: EmulatorClient,
    bot_with_service: Any,
    store: CaseStore,
    pairing_service: str,
) -> None:
    chat = Chat(client)
    case, photo = await show_qr_step(chat, store)
    await chat.say("/status")

    shown = await chat.sent()
    assert shown.get("photo")
    assert "Zo ver ben je:" in text_of(shown)
    assert button_texts(shown) == button_texts(photo)
    assert await step_of(store, case) is Step.QR
    code = url_of(shown, "Open de Ockto app").split("#", 1)[1]
    status, _claimed = await claim_code(pairing_service, code)
    assert status == 200


async def test_language_at_qr_step_shows_qr_message(
    client: EmulatorClient, bot_with_service: Any, store: CaseStore
) -> None:
    chat = Chat(client)
    case, _photo = await show_qr_step(chat, store)
    await chat.say("/taal")
    choice = await chat.sent()
    await chat.tap(choice, "English")

    shown = await chat.sent()
    assert shown.get("photo")
    assert translate("language.changed", "en") in text_of(shown)
    assert button_texts(shown) == [translate(key, "en") for key in QR_BUTTON_KEYS]
    assert "/app/open#" in url_of(shown, translate("button.open_app", "en"))
    assert await step_of(store, case) is Step.QR


async def test_status_at_qr_step_without_service(chat: Chat, store: CaseStore) -> None:
    case, _app = await walk_to(chat, store, Step.APP)
    await store.apply(case.case_id, Event.APP_READY, expected_step=Step.APP)
    await chat.say("/status")

    shown = await chat.sent()
    assert "Zo ver ben je:" in text_of(shown)
    assert translate("qr.unavailable", "nl") in text_of(shown)
    assert button_texts(shown) == ["Nieuwe code"]
