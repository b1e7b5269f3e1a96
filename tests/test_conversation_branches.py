"""Every step against every kind of unexpected input, and the journey's branches.

One bot, one emulator and one pairing service serve the whole module, so the
matrix of steps and inputs stays fast. Every test plays its own user, and
cases are created straight in the step under test. The module does not use
the ``redis`` fixture, because that empties the database under the running
bot's event consumer group.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from redis.asyncio import Redis
from telegram import InlineKeyboardMarkup

from bot.application import BotApplication
from bot.i18n import translate
from bot.reminders import scheduler_of
from bot.services import services_of
from handlers.callback_data import Action, case_tag, encode
from handlers.checklist import describe_due_time
from handlers.render import render_status, render_step
from journey import keys
from journey.model import Case
from journey.steps import (
    CHECKLIST_STEPS,
    PARTNER_CHECKLIST_STEPS,
    TERMINAL_STEPS,
    Event,
    Step,
)
from journey.store import CaseStore
from sandbox.app_simulator import OcktoAppSimulator, synthetic_package
from sandbox.telegram_emulator import EmulatorClient
from tests.test_bot_conversation import (
    QR_BUTTON_KEYS,
    WAIT_SECONDS,
    Chat,
    Message,
    button_texts,
    text_of,
    url_of,
)

_user_ids = itertools.count(20_000)

OPEN_STEPS = [
    step for step in Step if step not in TERMINAL_STEPS and step is not Step.INVITED
]
"""Steps a chat can be in; ``invited`` has no chat yet."""

PARTNER_STEPS = frozenset({*PARTNER_CHECKLIST_STEPS, Step.CONSENT_PARTNER})

BOT_ADVANCED_STEPS = [
    Step.INFO,
    *CHECKLIST_STEPS,
    Step.PARTNER_QUESTION,
    *PARTNER_CHECKLIST_STEPS,
]
"""Steps whose main button the bot applies itself, without the service."""

MAIN_BUTTON: dict[Step, tuple[Action, Step]] = {
    Step.INFO: (Action.START, Step.CHECK_DIGID),
    Step.CHECK_DIGID: (Action.YES, Step.CHECK_SMS),
    Step.CHECK_SMS: (Action.YES, Step.CHECK_MIJNOVERHEID),
    Step.CHECK_MIJNOVERHEID: (Action.YES, Step.CHECK_PHONE),
    Step.CHECK_PHONE: (Action.YES, Step.PARTNER_QUESTION),
    Step.PARTNER_QUESTION: (Action.NO, Step.APP),
    Step.PARTNER_CHECK_DIGID: (Action.YES, Step.PARTNER_CHECK_SMS),
    Step.PARTNER_CHECK_SMS: (Action.YES, Step.APP),
}
"""The button a double-tap test presses in each step, and the step it leads to."""

PHONE_NUMBER = "+31687654321"
LATITUDE = 52.512345
"""Values a client shares; the tests look for them in Redis afterwards."""


@pytest.fixture
def chat(emulator_client: EmulatorClient, application: BotApplication) -> Chat:
    """A new user for every test, so no test reads another test's messages."""
    return Chat(emulator_client, next(_user_ids))


@pytest.fixture
def store(module_redis: Redis) -> CaseStore:
    return CaseStore(module_redis)


# Helpers.


async def case_in(
    store: CaseStore, chat: Chat, step: Step, language: str = "nl"
) -> Case:
    """Create a case of ``chat`` straight in ``step``."""
    case, _token = await store.create(
        "GM0193", language=language, step=step, chat_id=chat.user_id
    )
    if step in PARTNER_STEPS:
        case = await store.update(case.case_id, {"has_partner": True})
    return case


def labels(markup: InlineKeyboardMarkup | None) -> list[str]:
    if markup is None:
        return []
    return [button.text for row in markup.inline_keyboard for button in row]


def assert_shows_step(
    answer: Message, case: Case, application: BotApplication, notice_key: str
) -> None:
    """Check that ``answer`` is the notice followed by the case's current step."""
    expected = render_step(case, services_of(application))
    notice = translate(notice_key, case.language)
    assert text_of(answer).startswith(notice)
    if case.step is Step.QR:
        # The QR step is shown again as its photo message, with a new code.
        assert answer.get("photo")
        qr_labels = [translate(key, case.language) for key in QR_BUTTON_KEYS]
        assert button_texts(answer) == qr_labels
        return
    assert text_of(answer).endswith(expected.text)
    assert button_texts(answer) == labels(expected.markup)


async def any_bot_message(chat: Chat) -> Message:
    """Send /status and return the bot's reply, a message to tap buttons on."""
    await chat.say("/status")
    return await chat.sent()


async def redis_now(redis: Redis) -> float:
    """Return Redis ``TIME``, the clock of the bot's reminder scheduler."""
    seconds, microseconds = await redis.time()
    return float(seconds) + float(microseconds) / 1_000_000


async def redis_contains(redis: Redis, needle: str) -> bool:
    """Tell whether any key name or value in Redis contains ``needle``."""
    async for key in redis.scan_iter(count=500):
        if needle in key:
            return True
        kind = await redis.type(key)
        if kind == "string":
            values: Any = [await redis.get(key)]
        elif kind == "hash":
            values = await redis.hgetall(key)  # type: ignore[misc]
            values = [*values.keys(), *values.values()]
        elif kind == "list":
            values = await redis.lrange(key, 0, -1)  # type: ignore[misc]
        elif kind == "set":
            values = await redis.smembers(key)  # type: ignore[misc]
        elif kind == "zset":
            values = await redis.zrange(key, 0, -1)
        elif kind == "stream":
            values = [str(entry) for entry in await redis.xrange(key)]
        else:
            values = []
        if any(needle in str(value) for value in values):
            return True
    return False


# Each unexpected input in each step.


INPUT_KINDS = [
    "text",
    "sticker",
    "photo",
    "voice",
    "contact",
    "location",
    "edited",
    "command",
    "earlier_step_button",
    "previous_case_button",
]

NOTICE_OF_KIND = {
    "text": "fallback.text",
    "sticker": "fallback.sticker",
    "photo": "fallback.media",
    "voice": "fallback.media",
    "contact": "fallback.contact",
    "location": "fallback.location",
    "edited": "fallback.edited",
    "command": "fallback.command",
    "earlier_step_button": "fallback.old_button",
    "previous_case_button": "fallback.old_button",
}


async def send_unexpected(chat: Chat, case: Case, kind: str) -> None:
    if kind == "text":
        await chat.say("Hallo, wat moet ik doen?")
    elif kind in ("sticker", "photo", "voice"):
        await chat.send(kind)
    elif kind == "contact":
        await chat.send("contact", phone_number=PHONE_NUMBER)
    elif kind == "location":
        await chat.send("location", latitude=LATITUDE, longitude=6.0912)
    elif kind == "command":
        await chat.say("/onbekend")
    elif kind == "edited":
        sent = await chat.client.send_text(chat.user_id, "hoi")
        await chat.sent()
        await chat.client.edit(chat.user_id, sent["message_id"], "hallo")
    elif kind == "earlier_step_button":
        message = await any_bot_message(chat)
        earlier = Step.INFO if case.step is not Step.INFO else Step.CHECK_DIGID
        action = Action.START if earlier is Step.INFO else Action.YES
        await chat.tap_data(message, encode(earlier, case_tag(case), action))
    elif kind == "previous_case_button":
        message = await any_bot_message(chat)
        other_tag = "ffff" if case_tag(case) != "ffff" else "eeee"
        await chat.tap_data(message, encode(case.step, other_tag, Action.YES))
    else:
        raise ValueError(f"unknown input kind {kind!r}")


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("step", OPEN_STEPS, ids=lambda step: step.value)
async def test_unexpected_input_repeats_step(
    chat: Chat,
    store: CaseStore,
    application: BotApplication,
    step: Step,
    kind: str,
) -> None:
    case = await case_in(store, chat, step)
    await send_unexpected(chat, case, kind)

    answer = await chat.sent()
    after = await store.get(case.case_id)
    assert after.step is step
    if step is Step.QR:
        # Showing the QR step again renews the pairing, which moves the version.
        assert after.version > case.version
    else:
        assert after.version == case.version
    assert_shows_step(answer, after, application, NOTICE_OF_KIND[kind])


@pytest.mark.parametrize(
    "kind", ["text", "sticker", "photo", "voice", "contact", "location", "command"]
)
async def test_unexpected_input_without_case(chat: Chat, kind: str) -> None:
    if kind == "text":
        # Without a case typed text is read as a municipality name.
        await chat.say("xq zz")
        expected_start = translate("municipality.not_found", "nl")
    else:
        case_stand_in = Case("B" * 22, Step.INFO, 1, "GM0193", 0.0, 0.0)
        await send_unexpected(chat, case_stand_in, kind)
        expected_start = translate(NOTICE_OF_KIND[kind], "nl")

    answer = await chat.sent()
    assert text_of(answer).startswith(expected_start)
    if kind != "text":
        assert text_of(answer).endswith(translate("start.no_case", "nl"))


async def test_button_of_finished_case(chat: Chat, store: CaseStore) -> None:
    case = await case_in(store, chat, Step.INFO)
    message = await any_bot_message(chat)
    await store.finish(case.case_id, Event.CANCEL)

    await chat.tap_data(message, encode(Step.INFO, case_tag(case), Action.START))

    answer = await chat.sent()
    assert text_of(answer).startswith(translate("fallback.old_button_no_case", "nl"))
    assert text_of(answer).endswith(translate("start.no_case", "nl"))


async def test_status_without_case(chat: Chat) -> None:
    await chat.say("/status")

    answer = await chat.sent()
    assert text_of(answer).startswith(translate("status.no_case", "nl"))
    assert text_of(answer).endswith(translate("start.no_case", "nl"))


@pytest.mark.parametrize("kind", ["contact", "location"])
async def test_shared_contact_not_stored(
    chat: Chat, store: CaseStore, module_redis: Redis, kind: str
) -> None:
    case = await case_in(store, chat, Step.CHECK_SMS)
    await send_unexpected(chat, case, kind)
    await chat.sent()

    assert not await redis_contains(module_redis, PHONE_NUMBER)
    assert not await redis_contains(module_redis, str(LATITUDE))
    assert (await store.get(case.case_id)).version == case.version


@pytest.mark.parametrize("step", OPEN_STEPS, ids=lambda step: step.value)
async def test_group_message_gets_private_hint(
    chat: Chat, store: CaseStore, step: Step
) -> None:
    case = await case_in(store, chat, step)
    group_id = -1_000_000 - chat.user_id
    await chat.client.send_text(
        chat.user_id, "/status", chat_type="group", chat_id=group_id
    )

    event = await chat.client.wait_for(
        group_id, lambda event: event["kind"] == "sent", timeout=WAIT_SECONDS
    )
    assert text_of(event["message"]) == translate("fallback.group", "nl")
    assert url_of(event["message"], "privégesprek").startswith("https://t.me/")
    after = await store.get(case.case_id)
    assert after.version == case.version


@pytest.mark.parametrize("step", BOT_ADVANCED_STEPS, ids=lambda step: step.value)
async def test_double_tap_advances_once(
    chat: Chat, store: CaseStore, application: BotApplication, step: Step
) -> None:
    case = await case_in(store, chat, step)
    message = await any_bot_message(chat)
    action, next_step = MAIN_BUTTON[step]
    data = encode(step, case_tag(case), action)
    await chat.tap_data(message, data)
    await chat.tap_data(message, data)

    answers = sorted([text_of(await chat.sent()), text_of(await chat.sent())])
    after = await store.get(case.case_id)
    assert after.step is next_step
    old_notice = translate("fallback.old_button", "nl")
    assert sum(answer.startswith(old_notice) for answer in answers) == 1
    step_text = render_step(after, services_of(application)).text
    assert all(answer.endswith(step_text) for answer in answers)


# Invitation tokens.


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("kort", "malformed"),
        ("A" * 43 + "!", "malformed"),
        ("A" * 20 + "ä" * 24, "malformed"),
        ("A" * 45, "malformed"),
        ("A" * 64, "malformed"),
        ("C" * 44, "unknown"),
    ],
    ids=[
        "too_short",
        "wrong_character",
        "non_ascii",
        "too_long",
        "max_deep_link",
        "unknown",
    ],
)
async def test_bad_token_gets_its_answer(chat: Chat, token: str, reason: str) -> None:
    await chat.say(f"/start {token}")
    answer = await chat.sent()
    assert text_of(answer) == translate(f"start.{reason}", "nl")


@pytest.mark.parametrize(
    ("event", "reason"), [(Event.EXPIRE, "expired"), (Event.CANCEL, "finished")]
)
async def test_closed_token_gets_its_answer(
    chat: Chat, store: CaseStore, event: Event, reason: str
) -> None:
    case, token = await store.create("GM0193")
    await store.finish(case.case_id, event)
    await chat.say(f"/start {token}")
    answer = await chat.sent()
    assert text_of(answer) == translate(f"start.{reason}", "nl")


def test_token_answers_differ() -> None:
    texts = {
        translate(f"start.{reason}", "nl")
        for reason in ("malformed", "unknown", "expired", "finished")
    }
    assert len(texts) == 4


# Every rendered message within Telegram's limits, in both languages.


@pytest.mark.parametrize("language", ["nl", "en"])
async def test_every_step_rendered_within_limits(
    chat: Chat,
    store: CaseStore,
    application: BotApplication,
    emulator_client: EmulatorClient,
    language: str,
) -> None:
    services = services_of(application)
    case = await case_in(store, chat, Step.INFO, language)
    # The user writes first, so the emulator has the chat.
    await any_bot_message(chat)
    before = len(await emulator_client.calls("sendMessage"))
    sent = 0
    for step in Step:
        case.step = step
        case.has_partner = True
        case.progress = {
            person: {"digid": True, "sources": {"uwv": "failed"}}
            for person in ("client", "partner")
        }
        for reply in (render_step(case, services), render_status(case, services)):
            assert len(reply.text) <= 4096
            await reply.send(application.bot, chat.user_id)
            sent += 1

    calls = (await emulator_client.calls("sendMessage"))[before:]
    mine = [call for call in calls if call["chat_id"] == chat.user_id]
    assert len(mine) == sent
    assert all(call["ok"] for call in mine)


@pytest.mark.parametrize("language", ["nl", "en"])
async def test_qr_photo_within_limits(
    chat: Chat, store: CaseStore, emulator_client: EmulatorClient, language: str
) -> None:
    await case_in(store, chat, Step.APP, language)
    message = await any_bot_message(chat)
    await chat.tap(message, translate("button.have_app", language))

    photo = await chat.sent()
    assert photo.get("photo")
    assert len(text_of(photo)) <= 1024
    calls = await emulator_client.calls("sendPhoto")
    assert [call["ok"] for call in calls if call["chat_id"] == chat.user_id] == [True]


# Taps from the invitation to consent, and the partner's consent.


class TapCounter:
    """Counts what the client sends: commands and button taps."""

    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        self.taps = 0

    async def command(self, text: str) -> Message:
        self.taps += 1
        await self.chat.say(text)
        return await self.chat.sent()

    async def tap(self, message: Message, label: str) -> Message:
        self.taps += 1
        await self.chat.tap(message, label)
        return await self.chat.sent()


MAX_TAPS_TO_CONSENT = 15


async def app_journey(service_url: str, photo: Message, *, partner: bool) -> None:
    app_link = url_of(photo, "Ockto app")
    async with OcktoAppSimulator(service_url) as app:
        await app.run_journey(
            app_link, partner=partner, package=synthetic_package("branches")
        )


async def test_invitation_to_consent_within_taps(
    chat: Chat, store: CaseStore, module_service: str
) -> None:
    case, token = await store.create("GM0193")
    counter = TapCounter(chat)
    message = await counter.command(f"/start {token}")
    message = await counter.tap(message, "Start")
    for _item in CHECKLIST_STEPS:
        message = await counter.tap(message, "Ja")
    message = await counter.tap(message, "Nee")
    photo = await counter.tap(message, "Ik heb de Ockto app")

    await app_journey(module_service, photo, partner=False)
    question = await chat.sent_containing("Wil je de gegevens nu")
    await counter.tap(question, "Ja, stuur")

    assert counter.taps <= MAX_TAPS_TO_CONSENT
    assert counter.taps == 9
    delivering = await store.get(case.case_id)
    assert delivering.step is Step.DELIVERING
    assert delivering.consented("client")


async def test_partner_consents_separately(
    chat: Chat, store: CaseStore, module_service: str
) -> None:
    case, token = await store.create("GM0193")
    await chat.say(f"/start {token}")
    message = await chat.sent()
    await chat.tap(message, "Start")
    for _item in CHECKLIST_STEPS:
        message = await chat.sent()
        await chat.tap(message, "Ja")
    partner_question = await chat.sent()
    await chat.tap(partner_question, "Ja")
    for _item in PARTNER_CHECKLIST_STEPS:
        message = await chat.sent()
        assert "partner" in text_of(message)
        await chat.tap(message, "Ja")
    app = await chat.sent()
    await chat.tap(app, "Ik heb de Ockto app")
    photo = await chat.sent()

    await app_journey(module_service, photo, partner=True)
    client_question = await chat.sent_containing("Wil je de gegevens nu")
    assert "gemeente Zwolle" in text_of(client_question)
    await chat.tap(client_question, "Ja, stuur")

    partner_consent = await chat.sent()
    assert text_of(partner_consent) == translate(
        "consent.partner", "nl", municipality="Zwolle"
    )
    waiting = await store.get(case.case_id)
    assert waiting.step is Step.CONSENT_PARTNER
    assert waiting.consented("client")
    assert not waiting.consented("partner")

    await chat.tap(partner_consent, "Ja, stuur")
    await chat.sent_containing("Ik stuur de gegevens nu")
    delivering = await store.get(case.case_id)
    assert delivering.step is Step.DELIVERING
    assert delivering.consented("partner")


async def test_partner_no_items_get_help(chat: Chat, store: CaseStore) -> None:
    case = await case_in(store, chat, Step.PARTNER_CHECK_DIGID)
    message = await any_bot_message(chat)
    for step, fragment in (
        (Step.PARTNER_CHECK_DIGID, "digid.nl"),
        (Step.PARTNER_CHECK_SMS, "mijn.digid.nl"),
    ):
        await chat.tap(message, "Nee")
        help_message = await chat.sent()
        assert fragment in text_of(help_message)
        assert "minuten" in text_of(help_message) or "werkdagen" in text_of(
            help_message
        )
        assert (await store.get(case.case_id)).step is step
        await chat.tap(help_message, "Ik heb het nu geregeld")
        message = await chat.sent()
    assert (await store.get(case.case_id)).step is Step.APP


@pytest.mark.parametrize("step", CHECKLIST_STEPS, ids=lambda step: step.value)
async def test_checklist_no_offers_reminder(
    chat: Chat,
    store: CaseStore,
    module_redis: Redis,
    application: BotApplication,
    step: Step,
) -> None:
    case = await case_in(store, chat, step)
    message = await any_bot_message(chat)
    await chat.tap(message, "Nee")
    help_message = await chat.sent()
    before = await redis_now(module_redis)
    await chat.tap(help_message, "Herinner me later")

    answer = await chat.sent()
    after = await redis_now(module_redis)
    scheduler = scheduler_of(application.bot_data)
    assert scheduler is not None
    due = (await scheduler.state(case.case_id)).later_at
    assert due is not None
    # The request fell between the two readings of the clock it used.
    expected = {
        translate(
            "checklist.later",
            "nl",
            when=describe_due_time(due, now, scheduler.window, "nl"),
        )
        for now in (before, after)
    }
    assert any(text_of(answer).startswith(text) for text in expected)
    recorded = await store.get(case.case_id)
    assert recorded.checklist[step.value] == "later"
    assert recorded.step is step


# Starting without an invitation.


async def test_alias_den_haag_matched(chat: Chat) -> None:
    await chat.say("den haag")
    answer = await chat.sent()
    assert "'s-Gravenhage" in text_of(answer)
    assert "doet nog niet mee" in text_of(answer)
    assert "038 - 455 29 20" in text_of(answer)
    assert "support@gezondverzekerd.nl" in text_of(answer)


async def test_municipality_no_asks_again(chat: Chat, store: CaseStore) -> None:
    await chat.say("Zwolle")
    confirm = await chat.sent()
    await chat.tap(confirm, "Nee")
    answer = await chat.sent()
    assert text_of(answer) == translate("municipality.retry", "nl")
    assert await store.find_by_chat(chat.user_id) is None


async def test_none_of_these_asks_again(chat: Chat, store: CaseStore) -> None:
    await chat.say("Bergen")
    choice = await chat.sent()
    await chat.tap(choice, "Geen van deze")
    answer = await chat.sent()
    assert text_of(answer) == translate("municipality.retry", "nl")
    assert await store.find_by_chat(chat.user_id) is None


# /taal and the menu in both languages.


async def test_language_switch_with_case(chat: Chat, store: CaseStore) -> None:
    case = await case_in(store, chat, Step.CHECK_SMS)
    choice = await TapCounter(chat).command("/taal")
    assert button_texts(choice) == ["Nederlands", "English"]
    await chat.tap(choice, "English")

    answer = await chat.sent()
    assert text_of(answer).startswith(translate("language.changed", "en"))
    assert button_texts(answer) == ["Yes", "No"]
    assert (await store.get(case.case_id)).language == "en"

    await chat.say("/hulp")
    assert text_of(await chat.sent()) == translate("help.body", "en")


async def test_language_switch_without_case(
    chat: Chat, store: CaseStore, module_redis: Redis
) -> None:
    await chat.say("/taal")
    choice = await chat.sent()
    await chat.tap(choice, "English")
    answer = await chat.sent()
    assert text_of(answer).endswith(translate("start.no_case", "en"))
    assert await module_redis.ttl(keys.chat_language(chat.user_id)) > 0

    await chat.say("Zwolle")
    confirm = await chat.sent()
    assert text_of(confirm) == translate("municipality.confirm", "en", name="Zwolle")
    await chat.tap(confirm, "Yes")
    info = await chat.sent()
    assert "municipality of Zwolle" in text_of(info)
    case = await store.find_by_chat(chat.user_id)
    assert case is not None
    assert case.language == "en"
    assert await module_redis.exists(keys.chat_language(chat.user_id)) == 0


async def test_language_choice_carries_to_invitation(
    chat: Chat, store: CaseStore
) -> None:
    await chat.say("/taal")
    choice = await chat.sent()
    await chat.tap(choice, "English")
    await chat.sent()

    case, token = await store.create("GM0193", language="nl")
    await chat.say(f"/start {token}")
    info = await chat.sent()
    assert "Welcome" in text_of(info)
    assert (await store.get(case.case_id)).language == "en"


async def test_language_button_of_previous_case(chat: Chat, store: CaseStore) -> None:
    case = await case_in(store, chat, Step.INFO)
    message = await any_bot_message(chat)
    await chat.tap_data(message, encode("language", "ffff", Action.LANGUAGE_EN))
    answer = await chat.sent()
    assert text_of(answer).startswith(translate("fallback.old_button", "nl"))
    assert (await store.get(case.case_id)).language == "nl"


async def test_menu_has_taal_in_both_languages(application: BotApplication) -> None:
    dutch = await application.bot.get_my_commands()
    english = await application.bot.get_my_commands(language_code="en")
    assert [command.command for command in dutch] == [
        "start",
        "hulp",
        "status",
        "stop",
        "taal",
    ]
    assert [command.command for command in english] == [
        command.command for command in dutch
    ]
    assert english[-1].description == translate("command.taal", "en")
    assert dutch[-1].description == translate("command.taal", "nl")
