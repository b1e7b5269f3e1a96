"""The commands that work in every step: /hulp, /status and /stop."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from telegram import Update
from telegram.ext import BaseHandler, CallbackQueryHandler, CommandHandler, filters

from bot.i18n import translate
from bot.service_client import UNAVAILABLE, ServiceError
from bot.services import get_services
from handlers.callback_data import SCOPE_STOP, Action, scope_pattern
from handlers.common import (
    Context,
    find_case,
    guard_button,
    remove_keyboard,
    send,
    send_notice_and_step,
    send_old_button,
    send_step,
)
from handlers.render import Reply, render_status, stop_markup
from handlers.support import request_help
from journey.steps import Step

logger = logging.getLogger(__name__)

HELP_COMMANDS = ("hulp", "help")
STATUS_COMMAND = "status"
STOP_COMMAND = "stop"

PRIVATE_MESSAGE = filters.ChatType.PRIVATE & filters.UpdateType.MESSAGE


async def handle_help(update: Update, context: Context) -> None:
    """Hand the conversation to an agent, or send the helpdesk's contact details."""
    await request_help(update, context)


async def handle_status(update: Update, context: Context) -> None:
    """Tell where the client is and what comes next, then show the step."""
    case = await find_case(update, context)
    if case is None:
        await send_notice_and_step(update, context, "status.no_case")
        return
    await send(update, context, render_status(case, get_services(context)))


async def handle_stop(update: Update, context: Context) -> None:
    """Ask the client to confirm that the case is cancelled and erased."""
    case = await find_case(update, context)
    if case is None:
        await send_notice_and_step(update, context, "stop.no_case")
        return
    if case.step is Step.DELIVERING:
        await send_step(
            update, context, case, notice=translate("stop.not_now", case.language)
        )
        return
    text = translate("stop.confirm", case.language)
    await send(update, context, Reply(text, stop_markup(case)))


async def handle_stop_button(update: Update, context: Context) -> None:
    """Erase the case after "Ja, stop", or carry on after "Nee"."""
    guarded = await guard_button(update, context, allow_any_step=True)
    if guarded is None:
        return
    case, data = guarded
    await remove_keyboard(update)

    if data.action is Action.NO:
        await send_step(
            update, context, case, notice=translate("stop.kept", case.language)
        )
        return
    if data.action is not Action.YES:
        await send_old_button(update, context, case)
        return

    try:
        await get_services(context).service.erase_case(case.case_id)
    except ServiceError as error:
        logger.warning(
            "case not erased case=%s code=%s status=%s",
            case.ref,
            error.code,
            error.status,
        )
        if error.code == UNAVAILABLE or error.status >= 500:
            await send_notice_and_step(update, context, "error.service_unavailable")
        elif error.status == HTTPStatus.NOT_FOUND:
            # Erased already, e.g. by a double tap on "Ja, stop".
            await send(update, context, Reply(translate("stop.done", case.language)))
        else:
            # The service refuses to cancel while the delivery runs.
            await send_notice_and_step(update, context, "stop.not_now")
        return

    logger.info("case erased by client case=%s", case.ref)
    await send(update, context, Reply(translate("stop.done", case.language)))


def build_handlers() -> list[BaseHandler[Update, Context, Any]]:
    """Return the command handlers and the /stop confirmation handler."""
    return [
        CommandHandler(HELP_COMMANDS, handle_help, filters=PRIVATE_MESSAGE),
        CommandHandler(STATUS_COMMAND, handle_status, filters=PRIVATE_MESSAGE),
        CommandHandler(STOP_COMMAND, handle_stop, filters=PRIVATE_MESSAGE),
        CallbackQueryHandler(handle_stop_button, pattern=scope_pattern(SCOPE_STOP)),
    ]
