"""The Telegram emulator, driven by the real python-telegram-bot and EmulatorClient.

Every test starts its own emulator on a free loopback port. Time-dependent
behaviour (rate limits, callback query age, message deletion window) runs on an
injected clock, so no test waits for real time to pass.
"""

import asyncio
import base64
import datetime as dtm
import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import segno
from aiohttp import web
from telegram import (
    Bot,
    BotCommand,
    BotCommandScopeChat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    ReplyKeyboardMarkup,
    ReplyParameters,
    Update,
)
from telegram.error import BadRequest, Conflict, Forbidden, InvalidToken, RetryAfter
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
)

from sandbox.telegram_emulator import (
    EmulatorClient,
    EmulatorError,
    RateLimits,
    button_data,
    buttons,
    emulator_state,
    start_emulator,
)
from sandbox.telegram_emulator.state import Notifier

TOKEN = "123456789:AAEmulatorTestTokenForPythonTelegramBot"
USER = 1001


class FakeClock:
    """A monotonic clock that moves only when a test advances it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Emulator:
    """A running emulator with its clock, client and PTB application."""

    def __init__(
        self,
        runner: web.AppRunner,
        base_url: str,
        clock: FakeClock,
        client: EmulatorClient,
        application: Application,
    ) -> None:
        self.runner = runner
        self.base_url = base_url
        self.clock = clock
        self.client = client
        self.application = application

    @property
    def bot(self) -> Bot:
        return self.application.bot

    @property
    def state(self) -> Any:
        return emulator_state(self.runner.app)

    async def started_user(self, user_id: int = USER, text: str = "/start") -> None:
        """Let a user start the bot, then confirm the update so getUpdates is empty."""
        await self.client.send_text(user_id, text, first_name="Anna")
        updates = await self.bot.get_updates(timeout=0)
        await self.bot.get_updates(offset=updates[-1].update_id + 1, timeout=0)


def build_application(base_url: str) -> Application:
    return (
        ApplicationBuilder()
        .token(TOKEN)
        .base_url(f"{base_url}/bot")
        .base_file_url(f"{base_url}/file/bot")
        .build()
    )


async def _running_emulator(**kwargs: Any) -> AsyncIterator[Emulator]:
    clock = FakeClock()
    runner, base_url = await start_emulator(
        clock=clock, webhook_retry_delay=0.05, **kwargs
    )
    client = EmulatorClient(base_url)
    application = build_application(base_url)
    await application.initialize()
    try:
        yield Emulator(runner, base_url, clock, client, application)
    finally:
        await application.shutdown()
        await client.close()
        await runner.cleanup()


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """An emulator without flood control, for tests that send many messages."""
    async for running in _running_emulator(rate_limits=RateLimits.disabled()):
        yield running


@pytest.fixture
async def limited() -> AsyncIterator[Emulator]:
    """An emulator with the default rate limits of the Telegram Bots FAQ."""
    async for running in _running_emulator():
        yield running


def keyboard(*rows: list[InlineKeyboardButton]) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(list(rows))


def qr_png() -> bytes:
    output = io.BytesIO()
    segno.make("https://example.nl/koppel?code=123456").save(
        output, kind="png", scale=4
    )
    return output.getvalue()


async def raw_call(
    base_url: str, path: str, *, method: str = "POST", **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{base_url}{path}", **kwargs) as response,
    ):
        return response.status, await response.json(content_type=None)


# Round trip through polling


async def test_start_round_trip_through_polling(emulator: Emulator) -> None:
    application = emulator.application
    seen_args: list[list[str]] = []

    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        seen_args.append(list(context.args or []))
        await update.effective_chat.send_message(
            f"Welkom, {update.effective_user.first_name}",
            reply_markup=keyboard(
                [InlineKeyboardButton("Ja", callback_data="consent:yes")]
            ),
        )

    async def consent(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await update.callback_query.answer("Dank je")
        await update.callback_query.edit_message_text("Toestemming gegeven")

    application.add_handler(CommandHandler("start", start))
    application.add_handler(CallbackQueryHandler(consent, pattern="^consent:"))
    await application.start()
    await application.updater.start_polling(poll_interval=0, timeout=5)
    try:
        client = emulator.client
        await client.send_text(USER, "/start abc123", first_name="Anna")
        sent = await client.wait_for(USER, lambda event: event["kind"] == "sent")
        assert sent["message"]["text"] == "Welkom, Anna"
        assert seen_args == [["abc123"]]

        data = button_data(sent["message"], "Ja")
        await client.tap(USER, sent["message"]["message_id"], data)
        answered = await client.wait_for(
            USER, lambda event: event["kind"] == "callback_answered"
        )
        assert answered["text"] == "Dank je"
        edited = await client.wait_for(USER, lambda event: event["kind"] == "edited")
        assert edited["message"]["text"] == "Toestemming gegeven"
        assert "reply_markup" not in edited["message"]
    finally:
        await application.updater.stop()
        await application.stop()


async def test_start_payload_has_bot_command_entity(emulator: Emulator) -> None:
    await emulator.client.send_text(USER, "/start koppel_42")
    update = (await emulator.bot.get_updates(timeout=0))[0]
    entity = update.message.entities[0]
    assert entity.type == "bot_command"
    assert entity.offset == 0
    assert entity.length == len("/start")


async def test_getme_uses_token_number_and_username(emulator: Emulator) -> None:
    me = await emulator.bot.get_me()
    assert me.id == 123456789
    assert me.username == "gezondverzekerd_test_bot"
    assert me.is_bot


# Text validation


async def test_empty_text_is_rejected(emulator: Emulator) -> None:
    await emulator.started_user()
    with pytest.raises(BadRequest) as error:
        await emulator.bot.send_message(USER, "<b></b>", parse_mode="HTML")
    assert error.value.message == "Message text is empty"


async def test_text_of_4096_characters_is_accepted(emulator: Emulator) -> None:
    await emulator.started_user()
    message = await emulator.bot.send_message(
        USER, "<b>" + "x" * 4096 + "</b>", parse_mode="HTML"
    )
    assert len(message.text) == 4096


async def test_text_of_4097_characters_is_rejected(emulator: Emulator) -> None:
    await emulator.started_user()
    with pytest.raises(BadRequest) as error:
        await emulator.bot.send_message(USER, "x" * 4097)
    assert error.value.message == "Message is too long"


async def test_caption_over_1024_is_rejected(emulator: Emulator) -> None:
    await emulator.started_user()
    with pytest.raises(BadRequest) as error:
        await emulator.bot.send_photo(USER, qr_png(), caption="c" * 1025)
    assert error.value.message == "Message caption is too long"


async def test_unsupported_html_tag_is_rejected(emulator: Emulator) -> None:
    await emulator.started_user()
    with pytest.raises(BadRequest) as error:
        await emulator.bot.send_message(USER, "regel<br>regel", parse_mode="HTML")
    assert 'unsupported start tag "br" at byte offset 5' in error.value.message.lower()


async def test_markdown_v2_reserved_character_is_rejected(emulator: Emulator) -> None:
    await emulator.started_user()
    with pytest.raises(BadRequest) as error:
        await emulator.bot.send_message(USER, "Versie 1.0", parse_mode="MarkdownV2")
    assert "character '.' is reserved" in error.value.message.lower()


async def test_html_entities_become_text_and_entities(emulator: Emulator) -> None:
    await emulator.started_user()
    message = await emulator.bot.send_message(
        USER,
        "<b>Let op</b> &lt;code&gt; <a href='https://example.nl'>hier</a>",
        parse_mode="HTML",
    )
    assert message.text == "Let op <code> hier"
    assert [entity.type for entity in message.entities] == ["bold", "text_link"]
    assert message.entities[1].url == "https://example.nl"


# Keyboard validation


async def test_callback_data_over_64_bytes_is_rejected(emulator: Emulator) -> None:
    await emulator.started_user()
    markup = keyboard([InlineKeyboardButton("Te lang", callback_data="é" * 33)])
    with pytest.raises(BadRequest) as error:
        await emulator.bot.send_message(USER, "Kies", reply_markup=markup)
    assert error.value.message == "Button_data_invalid"


async def test_button_without_action_is_rejected(emulator: Emulator) -> None:
    await emulator.started_user()
    markup = {"inline_keyboard": [[{"text": "Alleen tekst"}]]}
    with pytest.raises(BadRequest) as error:
        await emulator.bot.send_message(USER, "Kies", reply_markup=markup)
    assert "text buttons are unallowed" in error.value.message.lower()


async def test_button_with_two_actions_is_rejected(emulator: Emulator) -> None:
    await emulator.started_user()
    button = {"text": "Twee", "url": "https://example.nl", "callback_data": "x"}
    with pytest.raises(BadRequest) as error:
        await emulator.bot.send_message(
            USER, "Kies", reply_markup={"inline_keyboard": [[button]]}
        )
    assert "exactly one of the optional fields" in error.value.message.lower()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.nl/file", "unsupported url protocol"),
        ("http://localhost:8080/koppel", "wrong http url"),
        ("https://exa mple.nl", "wrong http url"),
    ],
)
async def test_invalid_button_url_is_rejected(
    emulator: Emulator, url: str, reason: str
) -> None:
    await emulator.started_user()
    markup = keyboard([InlineKeyboardButton("Open", url=url)])
    with pytest.raises(BadRequest) as error:
        await emulator.bot.send_message(USER, "Link", reply_markup=markup)
    message = error.value.message.lower()
    assert f"inline keyboard button url '{url.lower()}' is invalid" in message
    assert reason in message


async def test_tg_and_https_button_urls_are_accepted(emulator: Emulator) -> None:
    await emulator.started_user()
    markup = keyboard(
        [InlineKeyboardButton("Web", url="https://ockto.nl/app")],
        [InlineKeyboardButton("Telegram", url="tg://resolve?domain=ockto")],
    )
    message = await emulator.bot.send_message(USER, "Links", reply_markup=markup)
    assert len(message.reply_markup.inline_keyboard) == 2


async def test_nine_buttons_in_a_row_are_rejected(emulator: Emulator) -> None:
    await emulator.started_user()
    row = [InlineKeyboardButton(str(i), callback_data=str(i)) for i in range(9)]
    with pytest.raises(BadRequest) as error:
        await emulator.bot.send_message(USER, "Rij", reply_markup=keyboard(row))
    assert error.value.message == "Reply markup is too long"


async def test_over_100_buttons_are_rejected(emulator: Emulator) -> None:
    await emulator.started_user()
    rows = [
        [InlineKeyboardButton(f"{r}.{c}", callback_data=f"{r}.{c}") for c in range(8)]
        for r in range(13)
    ]
    with pytest.raises(BadRequest) as error:
        await emulator.bot.send_message(USER, "Veel", reply_markup=keyboard(*rows))
    assert error.value.message == "Reply markup is too long"


async def test_invalid_reply_markup_json_is_rejected(emulator: Emulator) -> None:
    await emulator.started_user()
    status, body = await raw_call(
        emulator.base_url,
        f"/bot{TOKEN}/sendMessage",
        data={"chat_id": str(USER), "text": "x", "reply_markup": "{not json"},
    )
    assert status == 400
    assert body["description"] == (
        "Bad Request: can't parse reply keyboard markup JSON object"
    )


# Chats and users


async def test_unknown_chat_is_not_found(emulator: Emulator) -> None:
    with pytest.raises(BadRequest) as error:
        await emulator.bot.send_message(999999, "Hallo")
    assert error.value.message == "Chat not found"


async def test_user_who_never_started_cannot_be_messaged(emulator: Emulator) -> None:
    await emulator.client.create_user(2002, first_name="Bram")
    with pytest.raises(Forbidden) as error:
        await emulator.bot.send_message(2002, "Hallo")
    assert (
        error.value.message == "Forbidden: bot can't initiate conversation with a user"
    )


async def test_blocked_user_gives_forbidden(emulator: Emulator) -> None:
    await emulator.started_user()
    await emulator.client.block(USER)
    with pytest.raises(Forbidden) as error:
        await emulator.bot.send_message(USER, "Hallo")
    assert error.value.message == "Forbidden: bot was blocked by the user"


async def test_block_and_unblock_send_my_chat_member(emulator: Emulator) -> None:
    await emulator.started_user()
    await emulator.client.block(USER)
    await emulator.client.unblock(USER)
    updates = await emulator.bot.get_updates(timeout=0)
    statuses = [
        (
            u.my_chat_member.old_chat_member.status,
            u.my_chat_member.new_chat_member.status,
        )
        for u in updates
    ]
    assert statuses == [("member", "kicked"), ("kicked", "member")]


async def test_unblocked_user_can_be_messaged_again(emulator: Emulator) -> None:
    await emulator.started_user()
    await emulator.client.block(USER)
    await emulator.client.unblock(USER)
    message = await emulator.bot.send_message(USER, "Welkom terug")
    assert message.chat.id == USER


async def test_blocked_user_cannot_send(emulator: Emulator) -> None:
    await emulator.started_user()
    await emulator.client.block(USER)
    with pytest.raises(EmulatorError) as error:
        await emulator.client.send_text(USER, "hallo")
    assert error.value.status == 409


async def test_get_chat_describes_private_chat(emulator: Emulator) -> None:
    await emulator.started_user()
    chat = await emulator.bot.get_chat(USER)
    assert chat.type == "private"
    assert chat.first_name == "Anna"


async def test_reply_to_missing_message_is_rejected(emulator: Emulator) -> None:
    await emulator.started_user()
    with pytest.raises(BadRequest) as error:
        await emulator.bot.send_message(
            USER, "Antwoord", reply_parameters=ReplyParameters(message_id=999)
        )
    assert error.value.message == "Message to be replied not found"


# Edits and deletion


async def test_editing_missing_message_is_rejected(emulator: Emulator) -> None:
    await emulator.started_user()
    with pytest.raises(BadRequest) as error:
        await emulator.bot.edit_message_text("Nieuw", chat_id=USER, message_id=999)
    assert error.value.message == "Message to edit not found"


async def test_identical_edit_is_not_modified(emulator: Emulator) -> None:
    await emulator.started_user()
    markup = keyboard([InlineKeyboardButton("Ja", callback_data="yes")])
    sent = await emulator.bot.send_message(USER, "Vraag", reply_markup=markup)
    with pytest.raises(BadRequest) as error:
        await sent.edit_text("Vraag", reply_markup=markup)
    assert error.value.message.startswith(
        "Message is not modified: specified new message content and reply markup"
    )


async def test_edit_without_markup_removes_keyboard(emulator: Emulator) -> None:
    await emulator.started_user()
    markup = keyboard([InlineKeyboardButton("Ja", callback_data="yes")])
    sent = await emulator.bot.send_message(USER, "Vraag", reply_markup=markup)
    edited = await sent.edit_text("Vraag")
    assert edited.reply_markup is None
    assert edited.edit_date is not None


async def test_caption_edit_of_text_message_is_rejected(emulator: Emulator) -> None:
    await emulator.started_user()
    sent = await emulator.bot.send_message(USER, "Tekst")
    with pytest.raises(BadRequest) as error:
        await sent.edit_caption("Bijschrift")
    assert error.value.message == "There is no caption in the message to edit"


async def test_reply_markup_edit_changes_buttons(emulator: Emulator) -> None:
    await emulator.started_user()
    sent = await emulator.bot.send_message(
        USER,
        "Vraag",
        reply_markup=keyboard([InlineKeyboardButton("A", callback_data="a")]),
    )
    edited = await sent.edit_reply_markup(
        keyboard([InlineKeyboardButton("B", callback_data="b")])
    )
    assert edited.reply_markup.inline_keyboard[0][0].text == "B"


async def test_deleted_message_leaves_the_chat(emulator: Emulator) -> None:
    await emulator.started_user()
    sent = await emulator.bot.send_message(USER, "Weg ermee")
    assert await sent.delete()
    ids = [message["message_id"] for message in await emulator.client.messages(USER)]
    assert sent.message_id not in ids
    with pytest.raises(BadRequest) as error:
        await sent.delete()
    assert error.value.message == "Message to delete not found"


async def test_message_older_than_48_hours_cannot_be_deleted(
    emulator: Emulator,
) -> None:
    await emulator.started_user()
    sent = await emulator.bot.send_message(USER, "Oud")
    emulator.clock.advance(48 * 3600)
    with pytest.raises(BadRequest) as error:
        await sent.delete()
    assert error.value.message == "Message can't be deleted"


async def test_events_carry_emulator_clock(emulator: Emulator) -> None:
    await emulator.started_user()
    sent = await emulator.bot.send_message(USER, "Eerst")
    emulator.clock.advance(2.5)
    await emulator.bot.edit_message_text("Daarna", USER, sent.message_id)

    sent_event = await emulator.client.next_event(USER)
    edited_event = await emulator.client.next_event(USER)
    assert sent_event["kind"] == "sent"
    assert sent_event["clock"] == 1000.0
    assert edited_event["kind"] == "edited"
    assert edited_event["clock"] == 1002.5


# Callback queries


async def _tapped_query_id(emulator: Emulator) -> str:
    await emulator.started_user()
    sent = await emulator.bot.send_message(
        USER,
        "Kies",
        reply_markup=keyboard([InlineKeyboardButton("Ja", callback_data="yes")]),
    )
    tapped = await emulator.client.tap(USER, sent.message_id, "yes")
    return str(tapped["callback_query_id"])


async def test_callback_query_reaches_bot(emulator: Emulator) -> None:
    query_id = await _tapped_query_id(emulator)
    update = (await emulator.bot.get_updates(timeout=0))[0]
    assert update.callback_query.id == query_id
    assert update.callback_query.data == "yes"
    assert update.callback_query.message.text == "Kies"


async def test_old_callback_query_is_rejected(emulator: Emulator) -> None:
    query_id = await _tapped_query_id(emulator)
    emulator.clock.advance(16)
    with pytest.raises(BadRequest) as error:
        await emulator.bot.answer_callback_query(query_id)
    assert error.value.message == (
        "Query is too old and response timeout expired or query id is invalid"
    )


async def test_callback_query_answered_twice_is_rejected(emulator: Emulator) -> None:
    query_id = await _tapped_query_id(emulator)
    assert await emulator.bot.answer_callback_query(query_id, text="Oké")
    with pytest.raises(BadRequest) as error:
        await emulator.bot.answer_callback_query(query_id)
    assert error.value.message.startswith("Query is too old")


async def test_callback_answer_over_200_characters_is_rejected(
    emulator: Emulator,
) -> None:
    query_id = await _tapped_query_id(emulator)
    with pytest.raises(BadRequest) as error:
        await emulator.bot.answer_callback_query(query_id, text="x" * 201)
    assert error.value.message == "Message_too_long"


async def test_tap_with_unknown_data_is_rejected(emulator: Emulator) -> None:
    await emulator.started_user()
    sent = await emulator.bot.send_message(
        USER,
        "Kies",
        reply_markup=keyboard([InlineKeyboardButton("Ja", callback_data="yes")]),
    )
    with pytest.raises(EmulatorError) as error:
        await emulator.client.tap(USER, sent.message_id, "admin:delete_all")
    assert error.value.status == 400


async def test_forced_tap_sends_forged_data(emulator: Emulator) -> None:
    await emulator.started_user()
    sent = await emulator.bot.send_message(
        USER,
        "Kies",
        reply_markup=keyboard([InlineKeyboardButton("Ja", callback_data="yes")]),
    )
    await emulator.client.tap(USER, sent.message_id, "admin:delete_all", force=True)
    update = (await emulator.bot.get_updates(timeout=0))[0]
    assert update.callback_query.data == "admin:delete_all"


# Rate limits


def _retry_seconds(error: RetryAfter) -> float:
    retry_after = error.retry_after
    if isinstance(retry_after, dtm.timedelta):
        return retry_after.total_seconds()
    return float(retry_after)


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
async def test_private_chat_burst_then_retry_after(limited: Emulator) -> None:
    await limited.started_user()
    for number in range(5):
        await limited.bot.send_message(USER, f"Bericht {number}")
    with pytest.raises(RetryAfter) as error:
        await limited.bot.send_message(USER, "Eén te veel")
    assert _retry_seconds(error.value) == 1
    assert (await limited.client.stats())["rate_limited"] == 1


async def test_private_chat_refills_after_a_second(limited: Emulator) -> None:
    await limited.started_user()
    for number in range(5):
        await limited.bot.send_message(USER, f"Bericht {number}")
    limited.clock.advance(1.0)
    message = await limited.bot.send_message(USER, "Weer toegestaan")
    assert message.text == "Weer toegestaan"


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
async def test_group_allows_20_per_minute(limited: Emulator) -> None:
    group = -1002000
    await limited.client.send_text(
        USER, "/start", chat_id=group, chat_type="supergroup", chat_title="Team"
    )
    for number in range(20):
        await limited.bot.send_message(group, f"Groep {number}")
    with pytest.raises(RetryAfter) as error:
        await limited.bot.send_message(group, "Te veel")
    assert _retry_seconds(error.value) == 3


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
async def test_global_limit_of_30_per_second(limited: Emulator) -> None:
    for user_id in range(3000, 3031):
        await limited.client.send_text(user_id, "/start")
    for user_id in range(3000, 3030):
        await limited.bot.send_message(user_id, "Nieuwsbrief")
    with pytest.raises(RetryAfter):
        await limited.bot.send_message(3030, "Nieuwsbrief")
    calls = await limited.client.calls("sendMessage")
    assert [call["error_code"] for call in calls].count(429) == 1


async def test_disabled_limits_never_answer_429(emulator: Emulator) -> None:
    await emulator.started_user()
    for number in range(40):
        await emulator.bot.send_message(USER, f"Bericht {number}")
    assert (await emulator.client.stats())["rate_limited"] == 0


# Photos and files


async def test_uploaded_photo_bytes_come_back_identical(emulator: Emulator) -> None:
    await emulator.started_user()
    png = qr_png()
    message = await emulator.bot.send_photo(USER, png, caption="Scan de code")
    largest = message.photo[-1]
    assert await emulator.client.file_bytes(largest.file_id) == png
    telegram_file = await emulator.bot.get_file(largest.file_id)
    assert bytes(await telegram_file.download_as_bytearray()) == png


async def test_photo_sizes_match_the_image(emulator: Emulator) -> None:
    await emulator.started_user()
    png = qr_png()
    message = await emulator.bot.send_photo(USER, png)
    largest = message.photo[-1]
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (largest.width, largest.height) == (width, height)
    assert largest.file_size == len(png)


async def test_photo_can_be_resent_by_file_id(emulator: Emulator) -> None:
    await emulator.started_user()
    first = await emulator.bot.send_photo(USER, qr_png())
    again = await emulator.bot.send_photo(USER, first.photo[-1].file_id)
    assert again.photo[-1].file_id == first.photo[-1].file_id


async def test_non_image_upload_is_rejected(emulator: Emulator) -> None:
    await emulator.started_user()
    with pytest.raises(BadRequest) as error:
        await emulator.bot.send_photo(USER, b"not an image at all")
    assert error.value.message == "Image_process_failed"


async def test_unknown_file_id_is_rejected(emulator: Emulator) -> None:
    await emulator.started_user()
    with pytest.raises(BadRequest) as error:
        await emulator.bot.send_photo(USER, "AgACAgUnknownFileId")
    assert error.value.message == "Wrong file identifier/http url specified"


async def test_user_photo_can_be_downloaded_by_bot(emulator: Emulator) -> None:
    png = qr_png()
    await emulator.client.send(
        USER, "photo", photo_base64=base64.b64encode(png).decode(), caption="Mijn pas"
    )
    update = (await emulator.bot.get_updates(timeout=0))[0]
    telegram_file = await update.message.photo[-1].get_file()
    assert bytes(await telegram_file.download_as_bytearray()) == png
    assert update.message.caption == "Mijn pas"


@pytest.mark.parametrize(
    ("kind", "fields", "attribute"),
    [
        ("sticker", {"emoji": "👍"}, "sticker"),
        ("voice", {"duration": 3}, "voice"),
        ("contact", {"phone_number": "+31612345678"}, "contact"),
        ("location", {"latitude": 52.37, "longitude": 4.9}, "location"),
        ("document", {"file_name": "loonstrook.pdf"}, "document"),
    ],
)
async def test_user_message_kinds_parse_in_ptb(
    emulator: Emulator, kind: str, fields: dict[str, Any], attribute: str
) -> None:
    await emulator.client.send(USER, kind, **fields)
    update = (await emulator.bot.get_updates(timeout=0))[0]
    assert getattr(update.message, attribute) is not None


# Commands


async def test_commands_round_trip_per_scope_and_language(emulator: Emulator) -> None:
    await emulator.started_user()
    scope = BotCommandScopeChat(USER)
    await emulator.bot.set_my_commands(
        [BotCommand("start", "Begin opnieuw")], scope=scope, language_code="nl"
    )
    commands = await emulator.bot.get_my_commands(scope=scope, language_code="nl")
    assert [(c.command, c.description) for c in commands] == [
        ("start", "Begin opnieuw")
    ]
    assert await emulator.bot.get_my_commands() == ()
    await emulator.bot.delete_my_commands(scope=scope, language_code="nl")
    assert await emulator.bot.get_my_commands(scope=scope, language_code="nl") == ()


@pytest.mark.parametrize(
    ("commands", "description"),
    [
        ([BotCommand("Start", "Hoofdletter")], "Bot_command_invalid"),
        ([BotCommand("a" * 33, "Te lang")], "Bot_command_invalid"),
        ([BotCommand("help", "d" * 257)], "Bot_command_description_invalid"),
        ([BotCommand(f"c{i}", "Nog een") for i in range(101)], "Bot_commands_too_much"),
    ],
)
async def test_invalid_commands_are_rejected(
    emulator: Emulator, commands: list[BotCommand], description: str
) -> None:
    with pytest.raises(BadRequest) as error:
        await emulator.bot.set_my_commands(commands)
    assert error.value.message == description


# Updates, webhooks and raw HTTP


async def test_unknown_method_answers_404(emulator: Emulator) -> None:
    status, body = await raw_call(emulator.base_url, f"/bot{TOKEN}/sendTelepathy")
    assert status == 404
    assert body == {
        "ok": False,
        "error_code": 404,
        "description": "Not Found: method not found",
    }


async def test_malformed_token_answers_401(emulator: Emulator) -> None:
    status, body = await raw_call(emulator.base_url, "/botnot-a-token/getMe")
    assert status == 401
    assert body["description"] == "Unauthorized"


async def test_malformed_token_raises_invalid_token(emulator: Emulator) -> None:
    bot = Bot("geen-token", base_url=f"{emulator.base_url}/bot")
    with pytest.raises(InvalidToken):
        await bot.get_me()


async def test_method_names_ignore_case_and_accept_json(emulator: Emulator) -> None:
    await emulator.started_user()
    status, body = await raw_call(
        emulator.base_url,
        f"/bot{TOKEN}/SENDMESSAGE",
        json={
            "chat_id": USER,
            "text": "JSON werkt",
            "reply_markup": {"remove_keyboard": True},
        },
    )
    assert status == 200
    assert body["result"]["text"] == "JSON werkt"


async def test_get_request_with_query_parameters_works(emulator: Emulator) -> None:
    status, body = await raw_call(emulator.base_url, f"/bot{TOKEN}/getMe", method="GET")
    assert status == 200
    assert body["result"]["username"] == "gezondverzekerd_test_bot"


async def test_offset_confirms_earlier_updates(emulator: Emulator) -> None:
    for text in ("een", "twee", "drie"):
        await emulator.client.send_text(USER, text)
    updates = await emulator.bot.get_updates(timeout=0)
    remaining = await emulator.bot.get_updates(offset=updates[1].update_id, timeout=0)
    assert [u.message.text for u in remaining] == ["twee", "drie"]


async def test_allowed_updates_filter_message_kinds(emulator: Emulator) -> None:
    await emulator.bot.get_updates(timeout=0, allowed_updates=["callback_query"])
    sent = await emulator.client.send_text(USER, "niet voor de bot")
    assert sent["update_id"] is None


async def test_long_poll_wakes_on_new_update(emulator: Emulator) -> None:
    waiting = ObservedNotifier()
    emulator.state.updates_changed = waiting
    poll = asyncio.create_task(emulator.bot.get_updates(timeout=10))
    await asyncio.wait_for(waiting.waiting.wait(), timeout=5)
    await emulator.client.send_text(USER, "wakker worden")
    updates = await asyncio.wait_for(poll, timeout=5)
    assert updates[0].message.text == "wakker worden"


async def test_second_poller_ends_first_with_conflict(emulator: Emulator) -> None:
    waiting = ObservedNotifier()
    emulator.state.updates_changed = waiting
    first = asyncio.create_task(emulator.bot.get_updates(timeout=10))
    await asyncio.wait_for(waiting.waiting.wait(), timeout=5)
    # A second bot instance with the same token, as when a bot is started twice.
    second_instance = Bot(TOKEN, base_url=f"{emulator.base_url}/bot")
    async with second_instance:
        assert await second_instance.get_updates(timeout=0) == ()
    with pytest.raises(Conflict) as error:
        await asyncio.wait_for(first, timeout=5)
    assert "terminated by other getUpdates request" in error.value.message


async def test_get_updates_conflicts_with_webhook(emulator: Emulator) -> None:
    await emulator.bot.set_webhook("http://127.0.0.1:9/hook")
    with pytest.raises(Conflict) as error:
        await emulator.bot.get_updates(timeout=0)
    assert "can't use getUpdates method while webhook is active" in error.value.message


async def test_webhook_to_public_address_is_rejected(emulator: Emulator) -> None:
    with pytest.raises(BadRequest) as error:
        await emulator.bot.set_webhook("https://example.com/telegram")
    assert "loopback" in error.value.message


async def test_webhook_delivery_retries_with_secret(emulator: Emulator) -> None:
    received: list[tuple[str | None, dict[str, Any]]] = []
    delivered = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        received.append(
            (
                request.headers.get("X-Telegram-Bot-Api-Secret-Token"),
                await request.json(),
            )
        )
        if len(received) == 1:
            return web.Response(status=500)
        delivered.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        await emulator.bot.set_webhook(
            f"http://127.0.0.1:{port}/hook", secret_token="geheim_123"
        )
        await emulator.client.send_text(USER, "via webhook")
        await asyncio.wait_for(delivered.wait(), timeout=5)
        info = await emulator.bot.get_webhook_info()
    finally:
        await runner.cleanup()

    assert [secret for secret, _ in received] == ["geheim_123", "geheim_123"]
    assert received[1][1]["message"]["text"] == "via webhook"
    assert (
        info.last_error_message
        == "Wrong response from the webhook: 500 Internal Server Error"
    )
    assert info.pending_update_count == 0


# Testing API


class ObservedNotifier(Notifier):
    """A Notifier that sets ``waiting`` when a coroutine starts waiting on it.

    ``wakeups`` counts the waits that ended with a notify.
    """

    def __init__(self) -> None:
        super().__init__()
        self.waiting = asyncio.Event()
        self.wakeups = 0

    async def wait(self, timeout: float) -> bool:  # noqa: ASYNC109
        self.waiting.set()
        woken = await super().wait(timeout)
        self.wakeups += woken
        return woken


async def waiting_long_poll(
    emulator: Emulator, user_id: int = USER
) -> tuple[ObservedNotifier, asyncio.Task[dict[str, Any]]]:
    """Start an event long poll of ``user_id`` and return once it waits."""
    waiting = ObservedNotifier()
    emulator.state.chat_events_changed[user_id] = waiting
    poll = asyncio.create_task(emulator.client.next_event(user_id, timeout=10))
    await asyncio.wait_for(waiting.waiting.wait(), timeout=5)
    return waiting, poll


async def test_event_long_poll_wakes_without_sleeping(emulator: Emulator) -> None:
    await emulator.started_user()
    _waiting, next_event = await waiting_long_poll(emulator)
    await emulator.bot.send_message(USER, "Nieuw bericht")
    event = await asyncio.wait_for(next_event, timeout=5)
    assert event["kind"] == "sent"
    assert event["message"]["text"] == "Nieuw bericht"


async def test_event_wakes_only_its_own_chat(emulator: Emulator) -> None:
    other_user = USER + 1
    await emulator.started_user()
    await emulator.started_user(other_user)
    waiting, poll = await waiting_long_poll(emulator)
    other_waiting, other_poll = await waiting_long_poll(emulator, other_user)

    await emulator.bot.send_message(other_user, "Alleen voor de ander")
    event = await asyncio.wait_for(other_poll, timeout=5)
    poll_done = poll.done()
    poll.cancel()

    assert event["message"]["text"] == "Alleen voor de ander"
    assert other_waiting.wakeups == 1
    assert waiting.wakeups == 0
    assert not poll_done


async def test_events_after_skips_other_chats(emulator: Emulator) -> None:
    state = emulator.state
    for number in range(3):
        state.record_event(USER, "sent", {"number": number})
        state.record_event(USER + 1, "sent", {"number": number})
    first = state.events_after(USER, 0)[0]

    later = state.events_after(USER, first.seq)

    assert [event.data["number"] for event in later] == [1, 2]
    assert {event.chat_id for event in later} == {USER}
    assert state.events_after(USER, later[-1].seq) == []
    assert state.events_after(USER + 2, 0) == []


async def test_reset_wakes_event_long_poll(emulator: Emulator) -> None:
    await emulator.started_user()
    waiting, poll = await waiting_long_poll(emulator)

    emulator.state.reset()
    # The reset drops the chat's notifier, so only a poll that the reset woke
    # and that waits again on a new notifier receives this event.
    emulator.state.record_event(USER, "sent", {"after": "reset"})
    event = await asyncio.wait_for(poll, timeout=5)

    assert waiting.wakeups == 1
    assert event["after"] == "reset"


async def test_next_event_times_out_with_clear_message(emulator: Emulator) -> None:
    with pytest.raises(TimeoutError) as error:
        await emulator.client.next_event(USER, timeout=0.2)
    assert f"no event in chat {USER}" in str(error.value)


async def test_events_keep_order_and_cursor(emulator: Emulator) -> None:
    await emulator.started_user()
    first = await emulator.bot.send_message(USER, "Een")
    await first.edit_text("Een bewerkt")
    await first.delete()
    kinds = [(await emulator.client.next_event(USER))["kind"] for _ in range(3)]
    assert kinds == ["sent", "edited", "deleted"]


async def test_reply_keyboard_appears_in_event(emulator: Emulator) -> None:
    await emulator.started_user()
    await emulator.bot.send_message(
        USER,
        "Kies",
        reply_markup=ReplyKeyboardMarkup([["Ja", "Nee"]], one_time_keyboard=True),
    )
    event = await emulator.client.next_event(USER)
    assert event["reply_keyboard"]["keyboard"] == [[{"text": "Ja"}, {"text": "Nee"}]]
    assert "reply_markup" not in event["message"]


async def test_messages_show_both_directions_in_order(emulator: Emulator) -> None:
    await emulator.started_user(text="/start")
    await emulator.bot.send_message(USER, "Antwoord")
    await emulator.client.send_text(USER, "Nog iets")
    messages = await emulator.client.messages(USER)
    assert [m["text"] for m in messages] == ["/start", "Antwoord", "Nog iets"]
    assert [m["from"]["is_bot"] for m in messages] == [False, True, False]


async def test_user_edit_sends_edited_message(emulator: Emulator) -> None:
    sent = await emulator.client.send_text(USER, "typfout")
    await emulator.client.edit(USER, sent["message_id"], "verbeterd")
    updates = await emulator.bot.get_updates(timeout=0)
    assert updates[-1].edited_message.text == "verbeterd"


async def test_group_privacy_hides_plain_messages(emulator: Emulator) -> None:
    group = {"chat_id": -4001, "chat_type": "group", "chat_title": "Familie"}
    plain = await emulator.client.send_text(USER, "hallo allemaal", **group)
    command = await emulator.client.send_text(USER, "/start", **group)
    assert plain["update_id"] is None
    assert command["update_id"] is not None


async def test_calls_log_method_outcome_and_chat(emulator: Emulator) -> None:
    await emulator.started_user()
    await emulator.bot.send_message(USER, "Gelogd")
    with pytest.raises(BadRequest):
        await emulator.bot.send_message(424242, "Nergens")
    calls = await emulator.client.calls("sendMessage")
    assert [(c["ok"], c["error_code"], c["chat_id"]) for c in calls] == [
        (True, None, USER),
        (False, 400, 424242),
    ]


async def test_reset_clears_state_but_not_update_ids(emulator: Emulator) -> None:
    first = await emulator.client.send_text(USER, "voor")
    await emulator.client.reset()
    second = await emulator.client.send_text(USER, "na")
    assert await emulator.client.messages(USER) != []
    assert second["update_id"] > first["update_id"]
    assert (await emulator.client.stats())["messages_from_users"] == 1


async def test_button_helpers_flatten_keyboard(emulator: Emulator) -> None:
    await emulator.started_user()
    await emulator.bot.send_message(
        USER,
        "Kies",
        reply_markup=keyboard(
            [InlineKeyboardButton("Ja, ga door", callback_data="go")],
            [InlineKeyboardButton("Meer info", url="https://example.nl/info")],
        ),
    )
    message = (await emulator.client.next_event(USER))["message"]
    assert [button["text"] for button in buttons(message)] == [
        "Ja, ga door",
        "Meer info",
    ]
    assert button_data(message, "ga door") == "go"
    with pytest.raises(LookupError):
        button_data(message, "Meer info")


async def test_chat_page_is_self_contained(emulator: Emulator) -> None:
    async with aiohttp.ClientSession() as session:
        pages = {}
        for path in ("/chat", "/chat/chat.js", "/chat/chat.css"):
            async with session.get(f"{emulator.base_url}{path}") as response:
                assert response.status == 200
                pages[path] = await response.text()
    assert '<label for="text">' in pages["/chat"]
    for text in pages.values():
        assert "http://" not in text
        assert "https://" not in text


async def test_emulator_refuses_public_bind_address() -> None:
    with pytest.raises(ValueError):
        await start_emulator(host="0.0.0.0")


async def test_emulator_refuses_lan_address_with_wildcard_allowed() -> None:
    # Only 0.0.0.0 and :: are let through, for a container's published ports.
    with pytest.raises(ValueError):
        await start_emulator(host="192.0.2.1", allow_all_interfaces=True)


async def test_error_body_has_telegram_format(emulator: Emulator) -> None:
    status, body = await raw_call(
        emulator.base_url,
        f"/bot{TOKEN}/sendMessage",
        data={"chat_id": "31337", "text": "x"},
    )
    assert status == 400
    assert body == {
        "ok": False,
        "error_code": 400,
        "description": "Bad Request: chat not found",
    }


async def test_429_body_has_retry_after_parameter(limited: Emulator) -> None:
    await limited.started_user()
    for number in range(5):
        await limited.bot.send_message(USER, f"Bericht {number}")
    status, body = await raw_call(
        limited.base_url,
        f"/bot{TOKEN}/sendMessage",
        data={"chat_id": str(USER), "text": "te veel"},
    )
    assert status == 429
    assert body == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 1",
        "parameters": {"retry_after": 1},
    }
