"""Steps 6 and 7: the QR code and the "open the app" button, in one photo message.

A client chatting on a computer scans the QR code with the phone; a client
chatting on the phone taps "Open de Ockto app" and skips the scan. Both lead
to the same ``app_link``. "Nieuwe code" requests a fresh pairing from the
service when the old code expired or was lost.
"""

from __future__ import annotations

import logging
from typing import Any

from telegram import Update
from telegram.ext import BaseHandler, CallbackQueryHandler

from bot.service_client import UNAVAILABLE, ServiceError
from bot.services import get_services
from handlers.callback_data import Action, scope_pattern
from handlers.common import (
    Context,
    chat_id_of,
    guard_button,
    remove_keyboard,
    send,
    send_notice_and_step,
    send_old_button,
)
from handlers.render import Reply, render_qr_message, render_step
from handlers.support import offer_help
from journey.model import Case
from journey.steps import Step

logger = logging.getLogger(__name__)


async def issue_pairing(update: Update, context: Context, case: Case) -> None:
    """Ask the service for a pairing and send the QR photo with its buttons.

    The service moves the case from ``app`` to ``qr``, or renews the code in
    ``qr``; the bot itself does not apply that transition.
    """
    services = get_services(context)
    try:
        pairing = await services.service.create_pairing(case.case_id)
    except ServiceError as error:
        await _answer_service_error(update, context, case, error)
        return

    chat_id = chat_id_of(update)
    if chat_id is None:
        return
    await remove_keyboard(update)

    # The photo's buttons belong to the QR step, which the case is in now.
    qr_case = await services.store.find(case.case_id) or case
    reply = render_qr_message(qr_case, pairing, services)
    await reply.send(context.bot, chat_id)
    logger.info("pairing sent case=%s", case.ref)
    if case.step is Step.QR:
        # A renewal: the earlier code expired or got lost.
        await offer_help(update, context, case)


async def handle_qr_button(update: Update, context: Context) -> None:
    """Handle "Nieuwe code": renew the pairing."""
    guarded = await guard_button(update, context)
    if guarded is None:
        return
    case, data = guarded
    if data.action is not Action.RENEW:
        await send_old_button(update, context, case)
        return
    await issue_pairing(update, context, case)


async def _answer_service_error(
    update: Update, context: Context, case: Case, error: ServiceError
) -> None:
    services = get_services(context)
    if error.code == UNAVAILABLE or error.status >= 500:
        logger.warning(
            "pairing not issued case=%s code=%s status=%s",
            case.ref,
            error.code,
            error.status,
        )
        if case.step is Step.QR:
            # Rendering the QR step again would request a second pairing, and
            # the step's text for a missing code is this notice already.
            shown = render_step(case, services)
            await send(update, context, Reply(shown.text, shown.markup))
        else:
            await send_notice_and_step(update, context, "qr.unavailable")
        return
    # A 4xx response means the case is no longer in a step that may pair, e.g.
    # after a double tap; the client then sees where the case is now.
    logger.info(
        "pairing rejected case=%s code=%s status=%s", case.ref, error.code, error.status
    )
    await send_old_button(update, context)


def build_handlers() -> list[BaseHandler[Update, Context, Any]]:
    """Return the handlers of the QR step."""
    return [
        CallbackQueryHandler(handle_qr_button, pattern=scope_pattern(Step.QR)),
    ]
