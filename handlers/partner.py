"""The partner question and the partner's two checklist items.

A partner delivers in the same app session, so the question warns that the
partner must be present and needs an own DigiD with SMS verification. "Ja"
leads to the partner's DigiD and SMS items, "Nee" straight to the app step.
"""

from __future__ import annotations

from typing import Any

from telegram import Update
from telegram.ext import BaseHandler, CallbackQueryHandler

from handlers.callback_data import Action, scope_pattern
from handlers.checklist import handle_item_button
from handlers.common import Context, advance, guard_button, send_old_button
from journey.steps import PARTNER_CHECKLIST_STEPS, Event, Step


async def handle_partner_answer(update: Update, context: Context) -> None:
    """Record whether the client has a partner and move on."""
    guarded = await guard_button(update, context)
    if guarded is None:
        return
    case, data = guarded

    if data.action is Action.YES:
        await advance(
            update, context, case, Event.PARTNER_YES, updates={"has_partner": True}
        )
    elif data.action is Action.NO:
        await advance(
            update, context, case, Event.PARTNER_NO, updates={"has_partner": False}
        )
    else:
        await send_old_button(update, context, case)


def build_handlers() -> list[BaseHandler[Update, Context, Any]]:
    """Return the handlers of the partner question and the partner's items."""
    return [
        CallbackQueryHandler(
            handle_partner_answer, pattern=scope_pattern(Step.PARTNER_QUESTION)
        ),
        CallbackQueryHandler(
            handle_item_button, pattern=scope_pattern(*PARTNER_CHECKLIST_STEPS)
        ),
    ]
