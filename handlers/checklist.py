"""Step 4: the checklist, one item at a time with Ja/Nee buttons.

"Ja" moves to the next item. "Nee" shows concrete help for that item with
two buttons: "Ik heb het nu geregeld" (counts as Ja) and "Herinner me
later". The answers are kept in ``case.checklist`` as ``{step: answer}``
with answer ``yes``, ``no`` or ``later``. The partner's two items use the
same flow (see ``handlers.partner``).
"""

from __future__ import annotations

import logging
from typing import Any

from telegram import Update
from telegram.ext import BaseHandler, CallbackQueryHandler

from bot.i18n import translate
from bot.reminders import scheduler_of
from bot.services import get_services
from handlers.callback_data import Action, scope_pattern
from handlers.common import (
    Context,
    advance,
    guard_button,
    remove_keyboard,
    send,
    send_old_button,
    send_step,
)
from handlers.render import CHECKLIST_ITEM_KEYS, Reply, help_markup
from journey.model import Case
from journey.steps import CHECKLIST_STEPS, Event, TransitionRejected
from journey.store import CaseNotFound

logger = logging.getLogger(__name__)

ANSWER_YES = "yes"
ANSWER_NO = "no"
ANSWER_LATER = "later"


async def handle_item_button(update: Update, context: Context) -> None:
    """Handle Ja, Nee, "Ik heb het nu geregeld" and "Herinner me later"."""
    guarded = await guard_button(update, context)
    if guarded is None:
        return
    case, data = guarded

    if data.action in (Action.YES, Action.DONE):
        checklist = {**case.checklist, case.step.value: ANSWER_YES}
        await advance(
            update, context, case, Event.CONFIRM, updates={"checklist": checklist}
        )
    elif data.action is Action.NO:
        await _show_help(update, context, case)
    elif data.action is Action.LATER:
        await _remind_later(update, context, case)
    else:
        await send_old_button(update, context, case)


async def _show_help(update: Update, context: Context, case: Case) -> None:
    recorded = await _record_answer(update, context, case, ANSWER_NO)
    if recorded is None:
        return
    await remove_keyboard(update)
    text = translate(f"{CHECKLIST_ITEM_KEYS[case.step]}.help", case.language)
    await send(update, context, Reply(text, help_markup(recorded)))


async def _remind_later(update: Update, context: Context, case: Case) -> None:
    recorded = await _record_answer(update, context, case, ANSWER_LATER)
    if recorded is None:
        return
    scheduler = scheduler_of(context.bot_data)
    if scheduler is not None:
        await scheduler.schedule_later(case.case_id, await scheduler.now())
    logger.info("reminder requested case=%s step=%s", case.ref, case.step)
    await remove_keyboard(update)
    await send_step(
        update, context, recorded, notice=translate("checklist.later", case.language)
    )


async def _record_answer(
    update: Update, context: Context, case: Case, answer: str
) -> Case | None:
    store = get_services(context).store
    step = case.step
    try:
        return await store.modify(
            case.case_id,
            lambda current: {"checklist": {**current.checklist, step.value: answer}},
            allowed_steps=[step],
        )
    except (TransitionRejected, CaseNotFound):
        await send_old_button(update, context)
        return None


def build_handlers() -> list[BaseHandler[Update, Context, Any]]:
    """Return the handlers of the client's four checklist items."""
    return [
        CallbackQueryHandler(
            handle_item_button, pattern=scope_pattern(*CHECKLIST_STEPS)
        ),
    ]
