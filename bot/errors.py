"""The PTB error handler: log the failure, reply to the client in plain Dutch.

The client never sees a stack trace or an error text: only "something went
wrong, try again" and the step they are in.
"""

from __future__ import annotations

import logging

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from telegram import Chat, Update
from telegram.error import Forbidden, TelegramError
from telegram.ext import ContextTypes

from bot.i18n import DEFAULT_LANGUAGE, translate
from bot.services import get_services
from handlers.common import language_of
from handlers.render import Reply, render_no_case, render_step
from journey.model import Case

logger = logging.getLogger(__name__)


async def handle_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log an exception raised by a handler and tell the client to try again."""
    error = context.error
    if not isinstance(update, Update):
        # Errors outside an update, e.g. in getUpdates; PTB retries those.
        logger.error(
            "bot error outside an update error=%s",
            type(error).__name__,
            exc_info=error,
        )
        return

    if isinstance(error, (RedisConnectionError, RedisTimeoutError)):
        await _reply_redis_unavailable(update, context, error)
        return

    case = await _find_case(update, context)
    reference = case.ref if case is not None else "-"
    if isinstance(error, Forbidden):
        logger.info("client blocked the bot case=%s", reference)
        return
    logger.error(
        "update failed case=%s update_id=%s error=%s",
        reference,
        update.update_id,
        type(error).__name__,
        exc_info=error,
    )

    chat = await _private_chat(update)
    if chat is None:
        return
    language = case.language if case is not None else DEFAULT_LANGUAGE
    notice = translate("error.generic", language)
    if case is None:
        reply = render_no_case(language, notice=notice)
    else:
        reply = render_step(case, get_services(context), notice=notice)
    try:
        await reply.send(context.bot, chat.id)
    except TelegramError as send_error:
        logger.warning(
            "error reply not sent case=%s error=%s",
            reference,
            type(send_error).__name__,
        )


async def _reply_redis_unavailable(
    update: Update, context: ContextTypes.DEFAULT_TYPE, error: RedisError
) -> None:
    # Without Redis neither the case nor its step can be read, so the client
    # gets only a short "try again in a moment"; the step is still in Redis and
    # the next tap after the outage goes on from there.
    logger.warning(
        "redis unreachable during update update_id=%s error=%s",
        update.update_id,
        type(error).__name__,
    )
    chat = await _private_chat(update)
    if chat is None:
        return
    try:
        await Reply(translate("error.try_again_soon", language_of(update))).send(
            context.bot, chat.id
        )
    except TelegramError as send_error:
        logger.warning("error reply not sent error=%s", type(send_error).__name__)


async def _private_chat(update: Update) -> Chat | None:
    """Stop the spinner of a tapped button and return the chat to reply in.

    Returns None outside a private chat: the bot answers errors to clients only.
    """
    if update.callback_query is not None:
        try:
            await update.callback_query.answer()
        except TelegramError:
            pass  # answered already, or too old to answer
    chat = update.effective_chat
    if chat is None or chat.type != chat.PRIVATE:
        return None
    return chat


async def _find_case(update: Update, context: ContextTypes.DEFAULT_TYPE) -> Case | None:
    chat = update.effective_chat
    if chat is None:
        return None
    try:
        return await get_services(context).store.find_by_chat(chat.id)
    except (RedisError, ValueError, KeyError) as error:
        logger.warning("case not read in error handler error=%s", type(error).__name__)
        return None
