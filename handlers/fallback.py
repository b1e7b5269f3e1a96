"""Replies to everything no step expects.

Free text, stickers, photos, voice, contacts, locations, edited messages,
unknown commands and buttons of no known kind each get a short reply and the
current step again. Typed text without an open case is read as the name of a
municipality. In a group the bot says it only works in a private chat.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from telegram import (
    ChatMemberUpdated,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Update,
)
from telegram.constants import ChatMemberStatus, ChatType
from telegram.ext import (
    BaseHandler,
    CallbackQueryHandler,
    ChatMemberHandler,
    MessageHandler,
    filters,
)

from bot.i18n import translate
from handlers.callback_data import decode
from handlers.common import (
    Context,
    answer_query,
    find_case,
    language_of,
    send,
    send_notice_and_step,
    send_old_button,
)
from handlers.render import Reply
from handlers.start import handle_municipality_name

logger = logging.getLogger(__name__)

PRIVATE = filters.ChatType.PRIVATE
NOT_PRIVATE = filters.ChatType.GROUPS

MEDIA = (
    filters.PHOTO
    | filters.VIDEO
    | filters.VIDEO_NOTE
    | filters.VOICE
    | filters.AUDIO
    | filters.Document.ALL
    | filters.ANIMATION
)

_JOINED = frozenset({ChatMemberStatus.MEMBER, ChatMemberStatus.ADMINISTRATOR})
_GROUP_TYPES = frozenset({ChatType.GROUP, ChatType.SUPERGROUP})


async def handle_text(update: Update, context: Context) -> None:
    """Look up text as a municipality name when no case is open, else reply."""
    case = await find_case(update, context)
    if case is None:
        await handle_municipality_name(update, context)
        return
    await send_notice_and_step(update, context, "fallback.text", case)


async def handle_sticker(update: Update, context: Context) -> None:
    """Reply to a sticker, then show the current step."""
    await send_notice_and_step(update, context, "fallback.sticker")


async def handle_media(update: Update, context: Context) -> None:
    """Reply to a photo, file, video or voice message, then show the current step."""
    await send_notice_and_step(update, context, "fallback.media")


async def handle_contact(update: Update, context: Context) -> None:
    """Reply to a shared contact, then show the current step."""
    await send_notice_and_step(update, context, "fallback.contact")


async def handle_location(update: Update, context: Context) -> None:
    """Reply to a shared location or venue, then show the current step."""
    await send_notice_and_step(update, context, "fallback.location")


async def handle_edited(update: Update, context: Context) -> None:
    """Reply to an edited message, then show the current step."""
    await send_notice_and_step(update, context, "fallback.edited")


async def handle_unknown_command(update: Update, context: Context) -> None:
    """Reply to a command the bot does not have, then show the current step."""
    await send_notice_and_step(update, context, "fallback.command")


async def handle_other(update: Update, context: Context) -> None:
    """Reply to any other message (a poll, a dice, ...), then show the current step."""
    await send_notice_and_step(update, context, "fallback.text")


async def handle_unknown_button(update: Update, context: Context) -> None:
    """Reply to a button that no step handler took: old format or an old step."""
    query = update.callback_query
    assert query is not None
    await answer_query(query)
    if decode(query.data) is None:
        logger.info("button of unknown format rejected")
    await send_old_button(update, context)


async def handle_group_message(update: Update, context: Context) -> None:
    """Tell a group that the bot only works in a private chat."""
    # The helpdesk's support group is exempt through build_group_handlers.
    await send(update, context, _private_chat_reply(update, context))


async def handle_added_to_group(update: Update, context: Context) -> None:
    """Say once, when added to a group, that the bot only works in a private chat."""
    change: ChatMemberUpdated | None = update.my_chat_member
    if change is None or change.chat.type not in _GROUP_TYPES:
        # In a private chat this update means the client blocked or
        # unblocked the bot.
        return
    if change.new_chat_member.status not in _JOINED:
        return
    if change.old_chat_member.status in _JOINED:
        return
    await send(update, context, _private_chat_reply(update, context))


def _private_chat_reply(update: Update, context: Context) -> Reply:
    language = language_of(update)
    username = context.bot.username
    markup = InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(
                    translate("button.private_chat", language),
                    url=f"https://t.me/{username}",
                )
            ]
        ]
    )
    return Reply(translate("fallback.group", language), markup)


def build_group_handlers(
    exempt_chat_ids: Collection[int] = (),
) -> list[BaseHandler[Update, Context, Any]]:
    """Return the handlers for groups; they must run before every other handler.

    Args:
        exempt_chat_ids: groups that get no "private chat only" reply, such as
            the helpdesk's support group, whose messages other handlers take.
    """
    exempt = frozenset(exempt_chat_ids)
    groups: filters.BaseFilter = NOT_PRIVATE
    if exempt:
        groups = groups & ~filters.Chat(chat_id=sorted(exempt))

    async def handle_added(update: Update, context: Context) -> None:
        chat = update.effective_chat
        if chat is not None and chat.id in exempt:
            return
        await handle_added_to_group(update, context)

    return [
        MessageHandler(
            groups & filters.UpdateType.MESSAGE & ~filters.StatusUpdate.ALL,
            handle_group_message,
        ),
        ChatMemberHandler(handle_added, ChatMemberHandler.MY_CHAT_MEMBER),
    ]


def build_handlers() -> list[BaseHandler[Update, Context, Any]]:
    """Return the fallback handlers; they must run after every step handler."""
    return [
        CallbackQueryHandler(handle_unknown_button),
        MessageHandler(PRIVATE & filters.UpdateType.EDITED_MESSAGE, handle_edited),
        MessageHandler(
            PRIVATE & filters.UpdateType.MESSAGE & filters.COMMAND,
            handle_unknown_command,
        ),
        MessageHandler(
            PRIVATE & filters.UpdateType.MESSAGE & filters.TEXT, handle_text
        ),
        MessageHandler(PRIVATE & filters.Sticker.ALL, handle_sticker),
        MessageHandler(PRIVATE & filters.CONTACT, handle_contact),
        MessageHandler(PRIVATE & (filters.LOCATION | filters.VENUE), handle_location),
        MessageHandler(PRIVATE & MEDIA, handle_media),
        MessageHandler(
            PRIVATE & filters.UpdateType.MESSAGE & ~filters.StatusUpdate.ALL,
            handle_other,
        ),
    ]
