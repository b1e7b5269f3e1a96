"""Step 4: the checklist, one item at a time with Ja/Nee buttons.

"Ja" moves to the next item. "Nee" shows concrete help for that item with
two buttons: "Ik heb het nu geregeld" (counts as Ja) and "Herinner me
later". The answers are kept in ``case.checklist`` as ``{step: answer}``
with answer ``yes``, ``no`` or ``later``. The partner's two items use the
same flow (see ``handlers.partner``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from telegram import Update
from telegram.ext import BaseHandler, CallbackQueryHandler

from bot.i18n import translate
from bot.reminders import scheduler_of
from bot.services import get_services
from bot.support.hours import WEEKDAYS, format_minutes
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
from journey.reminders import SendWindow
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
    if scheduler is None:
        # Only before the bot has started: no reminder can be queued.
        logger.warning("reminder not queued case=%s step=%s", case.ref, case.step)
        notice = translate("checklist.later_unavailable", case.language)
    else:
        requested_at = await scheduler.now()
        due = await scheduler.schedule_later(case.case_id, requested_at)
        logger.info("reminder requested case=%s step=%s", case.ref, case.step)
        when = describe_due_time(due, requested_at, scheduler.window, case.language)
        notice = translate("checklist.later", case.language, when=when)
    await remove_keyboard(update)
    await send_step(update, context, recorded, notice=notice)


def describe_due_time(due: float, now: float, window: SendWindow, language: str) -> str:
    """Describe the Unix time ``due`` as a day and a time in ``window``'s zone.

    The day is "morgen" when ``due`` falls on the local day after ``now``,
    else its weekday. A "later" reminder is due at most two days ahead, so a
    weekday names one day without a date.
    """
    local_due = datetime.fromtimestamp(due, window.zone)
    local_now = datetime.fromtimestamp(now, window.zone)
    clock_time = format_minutes(local_due.hour * 60 + local_due.minute)
    if local_due.date() == local_now.date() + timedelta(days=1):
        return translate("checklist.later_when.tomorrow", language, time=clock_time)
    weekday = translate(f"label.weekday.{WEEKDAYS[local_due.weekday()]}", language)
    return translate(
        "checklist.later_when.weekday", language, weekday=weekday, time=clock_time
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
