"""Step 5: install the Ockto app, or confirm that it is already installed.

The store buttons are URL buttons and need no handler. "Ik heb de Ockto app"
asks the service for a pairing, which moves the case to the QR step.
"""

from __future__ import annotations

from typing import Any

from telegram import Update
from telegram.ext import BaseHandler, CallbackQueryHandler

from handlers.callback_data import Action, scope_pattern
from handlers.common import Context, guard_button, send_old_button
from handlers.qr import issue_pairing
from journey.steps import Step


async def handle_have_app(update: Update, context: Context) -> None:
    """Handle "Ik heb de Ockto app": issue the pairing and send the QR code."""
    guarded = await guard_button(update, context)
    if guarded is None:
        return
    case, data = guarded
    if data.action is not Action.HAVE_APP:
        await send_old_button(update, context, case)
        return
    await issue_pairing(update, context, case)


def build_handlers() -> list[BaseHandler[Update, Context, Any]]:
    """Return the handlers of the app step."""
    return [
        CallbackQueryHandler(handle_have_app, pattern=scope_pattern(Step.APP)),
    ]
