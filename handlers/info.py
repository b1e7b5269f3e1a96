"""Step 3: what the journey is, and the button that starts it."""

from __future__ import annotations

from typing import Any

from telegram import Update
from telegram.ext import BaseHandler, CallbackQueryHandler

from handlers.callback_data import Action, scope_pattern
from handlers.common import Context, advance, guard_button, send_old_button
from journey.steps import Event, Step


async def handle_start_button(update: Update, context: Context) -> None:
    """Move the case from the information step to the first checklist item."""
    guarded = await guard_button(update, context)
    if guarded is None:
        return
    case, data = guarded
    if data.action is not Action.START:
        await send_old_button(update, context, case)
        return
    await advance(update, context, case, Event.START)


def build_handlers() -> list[BaseHandler[Update, Context, Any]]:
    """Return the handlers of this step."""
    return [
        CallbackQueryHandler(handle_start_button, pattern=scope_pattern(Step.INFO)),
    ]
