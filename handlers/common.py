"""Helpers every step handler shares: finding the case, guarding buttons, replying.

The case is read from Redis on every update; nothing about the conversation
is kept in process memory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from telegram import CallbackQuery, Update
from telegram.error import BadRequest
from telegram.ext import ContextTypes

from bot.i18n import (
    DEFAULT_LANGUAGE,
    SUPPORTED_LANGUAGES,
    normalize_language,
    translate,
)
from bot.services import get_services
from handlers.callback_data import ButtonData, case_tag, decode
from handlers.render import Reply, render_no_case, render_step
from journey import keys
from journey.model import Case
from journey.steps import Event, TransitionRejected
from journey.store import CaseNotFound

logger = logging.getLogger(__name__)

Context = ContextTypes.DEFAULT_TYPE


def chat_id_of(update: Update) -> int | None:
    """Return the id of the chat the update came from, or None."""
    chat = update.effective_chat
    return chat.id if chat is not None else None


def language_of(update: Update, case: Case | None = None) -> str:
    """Return the reply language: the case's, else the client's app language."""
    if case is not None:
        return case.language
    user = update.effective_user
    if user is not None and user.language_code:
        return normalize_language(user.language_code)
    return DEFAULT_LANGUAGE


async def reply_language(
    update: Update, context: Context, case: Case | None = None
) -> str:
    """Return the reply language: the case's, the chat's /taal choice, the app's.

    Use this where the chat may have no case. With a case at hand
    ``language_of`` returns the same language without a Redis read.
    """
    if case is not None:
        return case.language
    chat_id = chat_id_of(update)
    if chat_id is not None:
        chosen = await get_services(context).store.redis.get(
            keys.chat_language(chat_id)
        )
        if chosen in SUPPORTED_LANGUAGES:
            return str(chosen)
    return language_of(update)


async def set_chat_language(context: Context, chat_id: int, language: str) -> None:
    """Store the language a chat without a case chose with /taal."""
    await get_services(context).store.redis.set(
        keys.chat_language(chat_id), language, ex=keys.CHAT_LANGUAGE_TTL_SECONDS
    )


async def take_chat_language(context: Context, chat_id: int) -> str | None:
    """Return and delete the chat's /taal choice, for a case that starts now."""
    chosen = await get_services(context).store.redis.getdel(keys.chat_language(chat_id))
    return str(chosen) if chosen in SUPPORTED_LANGUAGES else None


async def find_case(update: Update, context: Context) -> Case | None:
    """Return the open case linked to the update's chat, or None."""
    chat_id = chat_id_of(update)
    if chat_id is None:
        return None
    return await get_services(context).store.find_by_chat(chat_id)


async def send(update: Update, context: Context, reply: Reply) -> None:
    """Send ``reply`` to the update's chat."""
    chat_id = chat_id_of(update)
    if chat_id is None:
        return
    await reply.send(context.bot, chat_id)


async def send_step(
    update: Update, context: Context, case: Case, *, notice: str | None = None
) -> None:
    """Send the current step of ``case``, with an optional notice above it."""
    await send(update, context, render_step(case, get_services(context), notice=notice))


async def send_notice_and_step(
    update: Update, context: Context, notice_key: str, case: Case | None = None
) -> None:
    """Send a notice from the catalog followed by the current step.

    Reads the case when none is given; without an open case the notice is
    followed by the "use your invitation link" text.
    """
    if case is None:
        case = await find_case(update, context)
    language = await reply_language(update, context, case)
    notice = translate(notice_key, language)
    if case is None:
        await send(update, context, render_no_case(language, notice=notice))
        return
    await send_step(update, context, case, notice=notice)


async def guard_button(
    update: Update, context: Context, *, allow_any_step: bool = False
) -> tuple[Case, ButtonData] | None:
    """Answer the callback query and check that its button is still valid.

    A button is valid when it carries the tag of the chat's open case and,
    unless ``allow_any_step``, the case is still in the button's step. For an
    invalid button the client gets "this button belongs to an earlier step"
    and the current step, or "this button no longer works" when the chat has
    no open case, and None is returned.
    """
    query = update.callback_query
    assert query is not None
    await answer_query(query)

    case = await find_case(update, context)
    data = decode(query.data)
    if case is None:
        await send_notice_and_step(update, context, "fallback.old_button_no_case")
        return None

    if data is None or data.tag != case_tag(case):
        logger.info("button of another case case=%s", case.ref)
        await send_old_button(update, context, case)
        return None
    if not allow_any_step and data.step is not case.step:
        logger.info(
            "button of another step case=%s step=%s button_step=%s",
            case.ref,
            case.step,
            data.scope,
        )
        await send_old_button(update, context, case)
        return None
    return case, data


async def send_old_button(
    update: Update, context: Context, case: Case | None = None
) -> None:
    """Tell the client that a button is outdated and show the current step."""
    await send_notice_and_step(update, context, "fallback.old_button", case)


async def answer_query(query: CallbackQuery) -> None:
    """Answer a callback query once; a second answer or a stale query is ignored.

    Telegram shows a spinner on the button until the query is answered, and
    rejects a late answer with "query is too old".
    """
    try:
        await query.answer()
    except BadRequest as error:
        logger.debug("callback query not answered error=%s", error.message)


async def remove_keyboard(update: Update) -> None:
    """Remove the buttons from the message whose button was tapped.

    Old buttons then disappear from the chat; one that is still tapped (a
    double tap) is answered by ``guard_button``.
    """
    query = update.callback_query
    if query is None or query.message is None:
        return
    try:
        await query.edit_message_reply_markup(reply_markup=None)
    except BadRequest as error:
        # "message is not modified" after a double tap, or the message is too
        # old to edit: the buttons then stay, which guard_button handles.
        logger.debug("keyboard not removed error=%s", error.message)


async def advance(
    update: Update,
    context: Context,
    case: Case,
    event: Event,
    *,
    updates: Mapping[str, Any] | None = None,
) -> Case | None:
    """Apply ``event`` to ``case`` in the step it was read in, then show the new step.

    The transition is pinned to ``case.step``, so a double tap moves the case
    once: the second tap finds the case in the next step and gets the
    "earlier step" answer. Returns the case after the event, or None when
    the transition was rejected or the case is gone.
    """
    store = get_services(context).store
    try:
        moved = await store.apply(
            case.case_id, event, expected_step=case.step, updates=updates
        )
    except TransitionRejected:
        logger.info("transition rejected case=%s event=%s", case.ref, event)
        await send_old_button(update, context)
        return None
    except CaseNotFound:
        language = language_of(update, case)
        notice = translate("fallback.old_button_no_case", language)
        await send(update, context, render_no_case(language, notice=notice))
        return None

    await remove_keyboard(update)
    await send_step(update, context, moved)
    return moved
