"""Steps 6 and 7: the QR code and the "open the app" button, in one photo message.

A client chatting on a computer scans the QR code with the phone; a client
chatting on the phone taps "Open de Ockto app" and skips the scan. Both lead
to the same ``app_link``. "Nieuwe code" requests a fresh pairing from the
service when the old code expired or was lost.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import math
import time
from typing import Any

import segno
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.constants import MessageLimit
from telegram.ext import BaseHandler, CallbackQueryHandler

from bot.i18n import translate
from bot.service_client import UNAVAILABLE, Pairing, ServiceError
from bot.services import get_services
from handlers.callback_data import Action, encode_for, scope_pattern
from handlers.common import (
    Context,
    chat_id_of,
    guard_button,
    remove_keyboard,
    send_notice_and_step,
    send_old_button,
)
from handlers.support import help_button, offer_help
from journey.keys import PAIRING_TTL_SECONDS
from journey.model import Case
from journey.steps import Step

logger = logging.getLogger(__name__)

QR_ERROR_CORRECTION = "m"
"""Level M restores 15% of the symbol: enough for a photo of a screen."""

QR_SCALE = 10
"""Pixels per module. An app link of 75 to 86 characters is a version 5 or 6
symbol at level M (37 or 41 modules), so the image with its quiet zone is 450
to 490 pixels wide. A test decodes it after scaling to 320 pixels and JPEG
quality 60, rougher than Telegram's recompression of a photo."""

QR_QUIET_ZONE = 4
"""Light modules around the symbol; ISO/IEC 18004 requires at least four."""


def render_qr_png(app_link: str) -> bytes:
    """Return a PNG image of the QR code for ``app_link``."""
    code = segno.make(app_link, error=QR_ERROR_CORRECTION, micro=False)
    buffer = io.BytesIO()
    code.save(buffer, kind="png", scale=QR_SCALE, border=QR_QUIET_ZONE)
    return buffer.getvalue()


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
    caption = translate(
        "qr.caption",
        case.language,
        code=pairing.confirmation_code,
        minutes=_minutes_left(pairing),
    )
    if pairing.typed_code is not None:
        typed = translate(
            "qr.caption_typed", case.language, typed_code=pairing.typed_code
        )
        caption = f"{caption}\n\n{typed}"
    markup = InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(
                    translate("button.open_app", case.language), url=pairing.app_link
                )
            ],
            [
                InlineKeyboardButton(
                    translate("button.qr_page", case.language), url=pairing.page_url
                )
            ],
            [
                InlineKeyboardButton(
                    translate("button.renew", case.language),
                    callback_data=encode_for(qr_case, Action.RENEW, Step.QR),
                )
            ],
        ]
    )
    if services.settings.support_group_id is not None:
        rows = [*markup.inline_keyboard, [help_button(qr_case)]]
        markup = InlineKeyboardMarkup(rows)
    await context.bot.send_photo(
        chat_id,
        photo=render_qr_png(pairing.app_link),
        caption=caption[: MessageLimit.CAPTION_LENGTH],
        reply_markup=markup,
    )
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
    if error.code == UNAVAILABLE or error.status >= 500:
        logger.warning(
            "pairing not issued case=%s code=%s status=%s",
            case.ref,
            error.code,
            error.status,
        )
        await send_notice_and_step(update, context, "qr.unavailable")
        return
    # A 4xx response means the case is no longer in a step that may pair, e.g.
    # after a double tap; the client then sees where the case is now.
    logger.info(
        "pairing rejected case=%s code=%s status=%s", case.ref, error.code, error.status
    )
    await send_old_button(update, context)


def _minutes_left(pairing: Pairing) -> int:
    expires_at = _parse_time(pairing.expires_at)
    if expires_at is None:
        return PAIRING_TTL_SECONDS // 60
    return max(1, math.ceil((expires_at - time.time()) / 60))


def _parse_time(value: str) -> float | None:
    # The contract leaves the format of expires_at open: accept Unix seconds
    # and ISO 8601.
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def build_handlers() -> list[BaseHandler[Update, Context, Any]]:
    """Return the handlers of the QR step."""
    return [
        CallbackQueryHandler(handle_qr_button, pattern=scope_pattern(Step.QR)),
    ]
