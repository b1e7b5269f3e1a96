"""/taal: switch the conversation between Dutch and English.

With an open case the choice is written to the case, so every later message
(events and reminders included) uses it. Without a case it waits in a small
per-chat key until the chat starts or links a case (``journey.keys``).
"""

from __future__ import annotations

import logging
from typing import Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.ext import BaseHandler, CallbackQueryHandler, CommandHandler, filters

from bot.i18n import SUPPORTED_LANGUAGES, translate
from bot.services import get_services
from handlers.callback_data import (
    SCOPE_LANGUAGE,
    Action,
    case_tag,
    decode,
    encode,
    scope_pattern,
)
from handlers.common import (
    Context,
    answer_query,
    chat_id_of,
    find_case,
    remove_keyboard,
    reply_language,
    send,
    send_old_button,
    send_step,
    set_chat_language,
)
from handlers.render import Reply, render_no_case
from journey.model import Case
from journey.steps import TransitionRejected
from journey.store import CaseNotFound

logger = logging.getLogger(__name__)

LANGUAGE_COMMANDS = ("taal", "language")
"""``/language`` is an alias for a client who does not read the Dutch menu."""

NO_CASE_TAG = "none"
"""Tag of the language buttons shown in a chat without a case."""

ACTION_OF_LANGUAGE: dict[str, Action] = {
    "nl": Action.LANGUAGE_NL,
    "en": Action.LANGUAGE_EN,
}
LANGUAGE_OF_ACTION = {
    action: language for language, action in ACTION_OF_LANGUAGE.items()
}
assert set(ACTION_OF_LANGUAGE) == set(SUPPORTED_LANGUAGES)


def language_markup(case: Case | None, language: str) -> InlineKeyboardMarkup:
    """Return one button per supported language, each labelled in its own language."""
    tag = case_tag(case) if case is not None else NO_CASE_TAG
    rows = [
        [
            InlineKeyboardButton(
                translate(f"button.language_{code}", language),
                callback_data=encode(SCOPE_LANGUAGE, tag, ACTION_OF_LANGUAGE[code]),
            )
        ]
        for code in SUPPORTED_LANGUAGES
    ]
    return InlineKeyboardMarkup(rows)


async def handle_language_command(update: Update, context: Context) -> None:
    """Offer the supported languages as buttons."""
    case = await find_case(update, context)
    language = await reply_language(update, context, case)
    text = translate("language.choose", language)
    await send(update, context, Reply(text, language_markup(case, language)))


async def handle_language_button(update: Update, context: Context) -> None:
    """Store the chosen language and repeat the current step in it."""
    query = update.callback_query
    assert query is not None
    await answer_query(query)
    chat_id = chat_id_of(update)
    data = decode(query.data)
    if chat_id is None or data is None or data.action not in LANGUAGE_OF_ACTION:
        await send_old_button(update, context)
        return
    chosen = LANGUAGE_OF_ACTION[data.action]

    case = await find_case(update, context)
    expected_tag = case_tag(case) if case is not None else NO_CASE_TAG
    if data.tag != expected_tag:
        # A button from before the chat's current case started, or from a case
        # that has ended since.
        await send_old_button(update, context, case)
        return
    await remove_keyboard(update)
    notice = translate("language.changed", chosen)

    if case is None:
        await set_chat_language(context, chat_id, chosen)
        logger.info("language chosen without case language=%s", chosen)
        await send(update, context, render_no_case(chosen, notice=notice))
        return

    try:
        changed = await get_services(context).store.update(
            case.case_id, {"language": chosen}
        )
    except (TransitionRejected, CaseNotFound):
        await send_old_button(update, context)
        return
    logger.info("language changed case=%s language=%s", case.ref, chosen)
    await send_step(update, context, changed, notice=notice)


def build_handlers() -> list[BaseHandler[Update, Context, Any]]:
    """Return the /taal handler and the handler of its buttons."""
    return [
        CommandHandler(
            LANGUAGE_COMMANDS,
            handle_language_command,
            filters=filters.ChatType.PRIVATE & filters.UpdateType.MESSAGE,
        ),
        CallbackQueryHandler(
            handle_language_button, pattern=scope_pattern(SCOPE_LANGUAGE)
        ),
    ]
