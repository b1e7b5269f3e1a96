"""Handlers of the support handover: asking for help, agents in the topics.

- In ``GUARD_GROUP``, before the steps: every update of a private chat
  passes the guard. While a help request waits, the client's messages are
  also copied to the topic. While an agent has the conversation they are
  only copied, and the bot stays silent. ``/stop`` and its buttons still
  work then, so a client can always cancel and erase.
- Also in ``GUARD_GROUP``: everything in the support group. Agents use
  ``/overnemen`` (take over), ``/teruggeven`` (hand back) and ``/sluiten``
  (close), and their other messages go to the client. Only members of the
  support group can act, and their messages outside a case's topic are
  ignored.
- In group 0: the "Ik heb hulp nodig" button.
- ``request_help`` serves ``/hulp`` too (``handlers.commands``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.ext import (
    ApplicationHandlerStop,
    BaseHandler,
    CallbackQueryHandler,
    MessageHandler,
    filters,
)

from bot.i18n import translate
from bot.services import get_services
from bot.support.desk import (
    RELAYED_STATES,
    SUPPORT_ACTIVE,
    HelpOutcome,
    SupportDesk,
)
from handlers.callback_data import (
    SCOPE_HELP,
    SCOPE_STOP,
    Action,
    decode,
    encode_for,
    scope_pattern,
)
from handlers.common import Context, answer_query, find_case, reply_language, send
from handlers.render import Reply
from journey.model import Case
from journey.steps import TransitionRejected
from journey.store import CaseNotFound

logger = logging.getLogger(__name__)

SUPPORT_DESK_KEY = "support_desk"
"""Key of the ``SupportDesk`` in ``application.bot_data``; absent without a group."""

GUARD_GROUP = -1
"""PTB handler group of the guard; it runs after the reminders' group -2,
which only records activity, and before the steps in group 0."""

TAKE_OVER_COMMAND = "overnemen"
HAND_BACK_COMMAND = "teruggeven"
CLOSE_COMMAND = "sluiten"

HELP_OFFER_AFTER_RENEWALS = 2
"""A client who needed a new QR code twice is offered a person's help."""

STOP_COMMAND = "/stop"


def support_desk(context: Context) -> SupportDesk | None:
    """Return the application's support desk, or None without a support group."""
    desk: SupportDesk | None = context.bot_data.get(SUPPORT_DESK_KEY)
    return desk


def help_button(case: Case) -> InlineKeyboardButton:
    """Return the "Ik heb hulp nodig" button of ``case``."""
    return InlineKeyboardButton(
        translate("button.need_help", case.language),
        callback_data=encode_for(case, Action.HELP, SCOPE_HELP),
    )


# Asking for help


async def request_help(update: Update, context: Context) -> None:
    """Hand the conversation to the helpdesk, or send its contact details.

    Contact details come without a support group, without an open case, when
    the desk is unusable or the request failed. Outside the opening hours the
    hours come with them.
    """
    case = await find_case(update, context)
    language = await reply_language(update, context, case)
    desk = support_desk(context)
    if desk is None or not desk.available or case is None:
        await send(update, context, Reply(translate("help.body", language)))
        return
    if not desk.is_open():
        text = translate(
            "support.client.closed_hours", language, hours=desk.hours_text(language)
        )
        await send(update, context, Reply(text))
        return

    outcome = await desk.request_help(case)
    if outcome is HelpOutcome.ALREADY:
        await send(
            update, context, Reply(translate("support.client.already", language))
        )
    elif outcome is HelpOutcome.REQUESTED:
        await send(
            update, context, Reply(translate("support.client.requested", language))
        )
    else:
        await send(update, context, Reply(translate("help.body", language)))


async def handle_help_button(update: Update, context: Context) -> None:
    """Handle "Ik heb hulp nodig" as ``/hulp``."""
    query = update.callback_query
    assert query is not None
    await answer_query(query)
    await request_help(update, context)
    raise ApplicationHandlerStop


async def offer_help(update: Update, context: Context, case: Case) -> None:
    """Count a QR renewal and offer a person's help when renewals repeat."""
    store = get_services(context).store
    try:
        counted = await store.modify(
            case.case_id, lambda current: {"qr_renewals": current.qr_renewals + 1}
        )
    except (CaseNotFound, TransitionRejected):
        return
    if counted.qr_renewals != HELP_OFFER_AFTER_RENEWALS:
        return
    await store.update(case.case_id, {"last_error": "qr_renewed_twice"})
    if support_desk(context) is None:
        return
    markup = InlineKeyboardMarkup([[help_button(counted)]])
    text = translate("support.client.offer", counted.language)
    await send(update, context, Reply(text, markup))


# The guard of private chats


def _passes_during_support(update: Update) -> bool:
    """Tell whether an update reaches the bot's own handlers while an agent talks.

    Only ``/stop`` and its confirmation buttons do.
    """
    message = update.effective_message
    if update.callback_query is not None:
        data = decode(update.callback_query.data)
        return data is not None and data.scope == SCOPE_STOP
    text = (message.text or "") if message is not None else ""
    return text.split("@")[0].strip().lower() == STOP_COMMAND


async def guard_private_chat(update: Update, context: Context) -> None:
    """Copy the client's messages to the topic; silence the bot while an agent talks."""
    desk = support_desk(context)
    chat = update.effective_chat
    if desk is None or chat is None or chat.type != chat.PRIVATE:
        return
    # bot.update_order runs one chat's updates one after another, so the
    # copies are queued in the order the client wrote.
    case = await find_case(update, context)
    if case is None or case.support_state not in RELAYED_STATES:
        return
    message = update.message or update.edited_message
    if message is not None:
        desk.relay_to_topic(case, message.message_id)
    if case.support_state != SUPPORT_ACTIVE or _passes_during_support(update):
        return
    if update.callback_query is not None:
        await answer_query(update.callback_query)
    logger.debug("update held for support case=%s", case.ref)
    raise ApplicationHandlerStop


# The support group


async def handle_support_group(update: Update, context: Context) -> None:
    """Run an agent's command or copy an agent's message to the client."""
    desk = support_desk(context)
    message = update.message
    if desk is None or message is None or message.from_user is None:
        raise ApplicationHandlerStop
    thread_id = message.message_thread_id if message.is_topic_message else None
    if thread_id is None or message.from_user.is_bot:
        raise ApplicationHandlerStop

    if not await desk.is_agent(message.from_user.id):
        logger.info("support group message from a non-member ignored")
        raise ApplicationHandlerStop
    case = await desk.case_of_topic(thread_id)
    command = _command_of(message.text, context.bot.username)
    if case is None:
        await desk.note_in_thread(thread_id, "support.note.no_case")
        raise ApplicationHandlerStop
    try:
        await _act(desk, case, command, message)
    except (CaseNotFound, TransitionRejected):
        await desk.note_in_thread(thread_id, "support.note.no_case")
    raise ApplicationHandlerStop


async def _act(
    desk: SupportDesk, case: Case, command: str | None, message: Message
) -> None:
    if command == TAKE_OVER_COMMAND:
        if case.support_state == SUPPORT_ACTIVE:
            await desk.note(case, "support.note.already_active")
        else:
            await desk.take_over(case)
    elif command == HAND_BACK_COMMAND:
        if case.support_state != SUPPORT_ACTIVE:
            await desk.note(case, "support.note.not_active")
        else:
            await desk.hand_back(case)
    elif command == CLOSE_COMMAND:
        await desk.close(case)
    elif command is not None:
        await desk.note(case, "support.note.unknown_command")
    elif case.support_state != SUPPORT_ACTIVE:
        await desk.note(case, "support.note.take_over_first")
    else:
        await desk.relay_to_client(case, message)


def _command_of(text: str | None, bot_username: str) -> str | None:
    """Return the command of ``/command`` or ``/command@bot``, else None."""
    if not text or not text.startswith("/"):
        return None
    word = text.split()[0][1:]
    name, _, addressee = word.partition("@")
    if addressee and addressee.lower() != bot_username.lower():
        return None
    return name.lower()


def build_handlers(
    group_id: int,
) -> dict[int, Sequence[BaseHandler[Update, Context, Any]]]:
    """Return the support handlers by handler group, for ``add_handlers``.

    The guard and the support group's handler go in ``GUARD_GROUP``, which
    runs before the steps. The help button goes in group 0, so it must be
    added before the fallbacks.
    """
    return {
        GUARD_GROUP: [
            MessageHandler(filters.ChatType.PRIVATE, guard_private_chat),
            CallbackQueryHandler(guard_private_chat),
            MessageHandler(filters.Chat(chat_id=group_id), handle_support_group),
        ],
        0: [
            CallbackQueryHandler(handle_help_button, pattern=scope_pattern(SCOPE_HELP)),
        ],
    }
