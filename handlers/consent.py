"""Step 11: explicit consent, per person, before the package goes out.

The client answers first; with a partner, the partner answers next in the
same chat. A "no" is confirmed once more, because it deletes the package.
The bot writes no consent itself: it calls the service's consent API, which
records the yes, queues the delivery after the last yes, or deletes the
package after a no.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from telegram import Update
from telegram.ext import BaseHandler, CallbackQueryHandler

from bot.i18n import translate
from bot.service_client import UNAVAILABLE, ServiceError
from bot.services import get_services
from handlers.callback_data import Action, scope_pattern
from handlers.common import (
    Context,
    guard_button,
    remove_keyboard,
    send,
    send_notice_and_step,
    send_old_button,
    send_step,
)
from handlers.render import FINAL_TEXT_KEYS, Reply, refuse_markup
from journey.model import Case, Role
from journey.steps import Step

logger = logging.getLogger(__name__)

PACKAGE_EXPIRED = "package_expired"
"""Service error code: the package ran out of time before the last consent."""

ROLE_OF_STEP: dict[Step, Role] = {
    Step.CONSENT: "client",
    Step.CONSENT_PARTNER: "partner",
}


async def handle_consent_button(update: Update, context: Context) -> None:
    """Handle Ja, Nee, the confirmed Nee and Terug under a consent question."""
    guarded = await guard_button(update, context)
    if guarded is None:
        return
    case, data = guarded

    if data.action is Action.YES:
        await _give(update, context, case, consent=True)
    elif data.action is Action.NO:
        await remove_keyboard(update)
        text = translate("consent.refuse_confirm", case.language)
        await send(update, context, Reply(text, refuse_markup(case)))
    elif data.action is Action.REFUSE:
        await _give(update, context, case, consent=False)
    elif data.action is Action.BACK:
        await remove_keyboard(update)
        await send_step(update, context, case)
    else:
        await send_old_button(update, context, case)


async def _give(update: Update, context: Context, case: Case, *, consent: bool) -> None:
    services = get_services(context)
    role = ROLE_OF_STEP[case.step]
    try:
        step = await services.service.give_consent(case.case_id, role, consent)
    except ServiceError as error:
        if error.code == PACKAGE_EXPIRED:
            logger.info("consent too late, package expired case=%s", case.ref)
            await remove_keyboard(update)
            text = translate("consent.package_expired", case.language)
            await send(update, context, Reply(text))
        elif error.code == UNAVAILABLE or error.status >= 500:
            logger.warning(
                "consent not recorded case=%s code=%s status=%s",
                case.ref,
                error.code,
                error.status,
            )
            await send_notice_and_step(update, context, "error.service_unavailable")
        else:
            logger.info(
                "consent rejected case=%s code=%s status=%s",
                case.ref,
                error.code,
                error.status,
            )
            await send_old_button(update, context)
        return

    logger.info("consent recorded case=%s role=%s consent=%s", case.ref, role, consent)
    await remove_keyboard(update)
    if step in FINAL_TEXT_KEYS:
        # The case is a tombstone now; its municipality code is still there.
        municipality = services.municipality_name(case.municipality_code)
        text = translate(
            FINAL_TEXT_KEYS[step], case.language, municipality=municipality
        )
        await send(update, context, Reply(text))
        return

    if step is Step.DELIVERING:
        # The worker may finish before this reply, so a fresh read can find
        # the case delivered already. The reply shows the step this consent
        # led to, and the event consumer's "delivered" message follows it.
        delivering = dataclasses.replace(case, step=Step.DELIVERING)
        await send_step(update, context, delivering)
        return

    current = await services.store.find(case.case_id)
    await send_step(update, context, current if current is not None else case)


def build_handlers() -> list[BaseHandler[Update, Context, Any]]:
    """Return the handlers of the consent questions."""
    return [
        CallbackQueryHandler(
            handle_consent_button,
            pattern=scope_pattern(Step.CONSENT, Step.CONSENT_PARTNER),
        ),
    ]
