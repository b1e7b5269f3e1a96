"""The message that shows a case's current step, for any step.

Every handler that needs to show "where the client is" uses ``render_step``:
after a transition, after unexpected input, for /status and /start, and when
a conversation is handed back. Texts come from the catalogs; this module only
chooses keys, fills placeholders and builds the buttons.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Message
from telegram.constants import MessageLimit

from bot.i18n import translate
from bot.service_client import UNAVAILABLE, Pairing, ServiceError
from bot.services import BotServices
from handlers.callback_data import SCOPE_HELP, SCOPE_STOP, Action, encode_for
from handlers.qr_image import render_qr_png
from journey.keys import PAIRING_TTL_SECONDS
from journey.model import Case
from journey.sources import PERSONS, SOURCES
from journey.steps import CHECKLIST_STEPS, PARTNER_CHECKLIST_STEPS, Step

logger = logging.getLogger(__name__)

CHECKLIST_ITEM_KEYS: dict[Step, str] = {
    Step.CHECK_DIGID: "checklist.digid",
    Step.CHECK_SMS: "checklist.sms",
    Step.CHECK_MIJNOVERHEID: "checklist.mijnoverheid",
    Step.CHECK_PHONE: "checklist.phone",
    Step.PARTNER_CHECK_DIGID: "partner.digid",
    Step.PARTNER_CHECK_SMS: "partner.sms",
}
"""Catalog key prefix of each checklist item; ``.question`` and ``.help`` follow."""

STATUS_GROUPS: dict[Step, str] = {
    Step.INVITED: "info",
    Step.INFO: "info",
    **{step: "checklist" for step in CHECKLIST_STEPS},
    Step.PARTNER_QUESTION: "partner",
    **{step: "partner" for step in PARTNER_CHECKLIST_STEPS},
    Step.APP: "app",
    Step.QR: "qr",
    Step.FETCHING: "fetching",
    Step.REVIEW: "review",
    Step.CONSENT: "consent",
    Step.CONSENT_PARTNER: "consent",
    Step.DELIVERING: "delivering",
    Step.DELIVERY_FAILED: "delivery_failed",
}
"""The part of the journey each open step belongs to, for /status."""

FINAL_TEXT_KEYS: dict[Step, str] = {
    Step.DELIVERED: "delivered.body",
    Step.REFUSED: "refused.body",
    Step.CANCELLED: "stop.done",
    Step.EXPIRED: "expired.body",
}

PARAGRAPH = "\n\n"

_FETCHED_STATES = frozenset({"fetched", "done", "ok", "true"})
_FAILED_STATES = frozenset({"failed", "error"})


@dataclass(frozen=True, slots=True)
class Reply:
    """A text message with its inline keyboard, ready to send."""

    text: str
    markup: InlineKeyboardMarkup | None = None

    async def send(self, bot: Bot, chat_id: int) -> Message:
        """Send this reply to ``chat_id``."""
        return await bot.send_message(
            chat_id, _fit(self.text), reply_markup=self.markup
        )


@dataclass(frozen=True, slots=True)
class PhotoReply:
    """A photo with its caption and inline keyboard, ready to send."""

    photo: bytes
    caption: str
    markup: InlineKeyboardMarkup | None = None

    async def send(self, bot: Bot, chat_id: int) -> Message:
        """Send this photo to ``chat_id``."""
        return await bot.send_photo(
            chat_id,
            photo=self.photo,
            caption=_fit(self.caption, MessageLimit.CAPTION_LENGTH),
            reply_markup=self.markup,
        )


@dataclass(frozen=True, slots=True)
class QrStepReply(Reply):
    """The QR step shown again: a fresh pairing in the QR step's photo message.

    The bot keeps no pairing code (Redis contains only its hash), so the only way
    to show the "Open de Ockto app" link again is a new code. ``text`` and
    ``markup`` are the message sent instead when the service cannot issue one.
    """

    case: Case | None = None
    services: BotServices | None = None
    notice: str | None = None

    async def send(self, bot: Bot, chat_id: int) -> Message:
        """Renew the case's pairing and send its photo, or the text when that fails."""
        assert self.case is not None and self.services is not None
        try:
            pairing = await self.services.service.create_pairing(self.case.case_id)
        except ServiceError as error:
            logger.warning(
                "pairing not renewed for a shown step case=%s code=%s status=%s",
                self.case.ref,
                error.code,
                error.status,
            )
            if error.code != UNAVAILABLE and error.status < 500:
                # A 4xx response: the case left the QR step meanwhile, e.g.
                # because the app claimed the code; show where it is now.
                current = await self.services.store.find(self.case.case_id)
                if current is not None and current.step is not Step.QR:
                    moved = render_step(current, self.services, notice=self.notice)
                    return await moved.send(bot, chat_id)
            return await Reply.send(self, bot, chat_id)
        logger.info("pairing sent case=%s", self.case.ref)
        reply = render_qr_message(self.case, pairing, self.services, notice=self.notice)
        return await reply.send(bot, chat_id)


def render_step(
    case: Case, services: BotServices, *, notice: str | None = None
) -> Reply:
    """Render the message of ``case``'s current step.

    ``notice`` (already translated) goes above the step's own text in the same
    message, e.g. "this button belongs to an earlier step".
    """
    text, markup = _step_content(case, services)
    if notice:
        text = notice + PARAGRAPH + text
    if services.settings.support_group_id is not None and case.step in STATUS_GROUPS:
        markup = _with_help_button(case, markup)
    if case.step is Step.QR:
        return QrStepReply(text, markup, case=case, services=services, notice=notice)
    return Reply(text, markup)


def render_qr_message(
    case: Case, pairing: Pairing, services: BotServices, *, notice: str | None = None
) -> PhotoReply:
    """Render the QR step's photo message for ``pairing``.

    Every message of the QR step comes from here, the first one and each one
    shown again, so they all carry the same codes and buttons. ``case`` must
    be in the QR step; ``notice`` goes above the caption.
    """
    language = case.language
    caption = translate(
        "qr.caption",
        language,
        code=pairing.confirmation_code,
        minutes=_minutes_left(pairing),
    )
    if pairing.typed_code is not None:
        typed = translate("qr.caption_typed", language, typed_code=pairing.typed_code)
        caption = caption + PARAGRAPH + typed
    if notice:
        caption = notice + PARAGRAPH + caption

    markup = InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(
                    translate("button.open_app", language), url=pairing.app_link
                )
            ],
            [
                InlineKeyboardButton(
                    translate("button.qr_page", language), url=pairing.page_url
                )
            ],
            [_button(case, "button.renew", Action.RENEW, Step.QR)],
        ]
    )
    if services.settings.support_group_id is not None:
        markup = _with_help_button(case, markup)
    return PhotoReply(render_qr_png(pairing.app_link), caption, markup)


def _with_help_button(
    case: Case, markup: InlineKeyboardMarkup | None
) -> InlineKeyboardMarkup:
    # Only with a support group: without one, /hulp in the menu already gives
    # the contact details, and the button would promise a person.
    help_row = [_button(case, "button.need_help", Action.HELP, SCOPE_HELP)]
    rows = list(markup.inline_keyboard) if markup is not None else []
    return InlineKeyboardMarkup([*rows, help_row])


def render_status(case: Case, services: BotServices) -> Reply:
    """Render /status: where the client is, what comes next, then the step."""
    group = STATUS_GROUPS.get(case.step)
    if group is None:
        return render_step(case, services)
    summary = translate(
        "status.summary",
        case.language,
        where=translate(f"status.where.{group}", case.language),
        next=translate(f"status.next.{group}", case.language),
    )
    return render_step(case, services, notice=summary)


def render_no_case(language: str, *, notice: str | None = None) -> Reply:
    """Render the reply for a chat without an open case."""
    text = translate("start.no_case", language)
    return Reply(notice + PARAGRAPH + text if notice else text)


def render_progress(case: Case) -> str:
    """Render the progress of fetching as text, one line per item.

    ``case.progress`` is written by the pairing service. The expected shape is
    ``{"client": {"digid": true, "sources": {"uwv": "done", ...}}, ...}``.
    A person's ``sources`` may also be a list of fetched source ids. A state
    other than fetched (or done) and failed counts as pending.
    """
    language = case.language
    lines = [translate("progress.title", language)]
    persons = PERSONS if case.has_partner else PERSONS[:1]
    for person in persons:
        entry = case.progress.get(person)
        person_progress: Mapping[str, Any] = entry if isinstance(entry, dict) else {}
        lines.append("")
        lines.append(translate(f"progress.person.{person}", language))
        digid = person_progress.get("digid", person_progress.get("digid_login"))
        lines.append(
            translate(
                "progress.digid.done" if digid else "progress.digid.pending", language
            )
        )
        states = _source_states(person_progress.get("sources"))
        for source in SOURCES:
            label = translate(f"source.{source}", language)
            state = states.get(source, "pending")
            lines.append(translate(f"progress.source.{state}", language, source=label))
    return "\n".join(lines)


def yes_no_markup(case: Case) -> InlineKeyboardMarkup:
    """Return Ja/Nee buttons for the case's current step."""
    return InlineKeyboardMarkup(
        [
            [
                _button(case, "button.yes", Action.YES),
                _button(case, "button.no", Action.NO),
            ]
        ]
    )


def help_markup(case: Case) -> InlineKeyboardMarkup:
    """Return the buttons under a checklist item's help text."""
    return InlineKeyboardMarkup(
        [
            [_button(case, "button.done", Action.DONE)],
            [_button(case, "button.later", Action.LATER)],
        ]
    )


def stop_markup(case: Case) -> InlineKeyboardMarkup:
    """Return the buttons that confirm or cancel /stop."""
    return InlineKeyboardMarkup(
        [
            [_button(case, "button.stop_confirm", Action.YES, SCOPE_STOP)],
            [_button(case, "button.stop_keep", Action.NO, SCOPE_STOP)],
        ]
    )


def refuse_markup(case: Case) -> InlineKeyboardMarkup:
    """Return the buttons that confirm a "no" to consent or go back."""
    return InlineKeyboardMarkup(
        [
            [_button(case, "button.refuse_confirm", Action.REFUSE)],
            [_button(case, "button.back", Action.BACK)],
        ]
    )


def _step_content(
    case: Case, services: BotServices
) -> tuple[str, InlineKeyboardMarkup | None]:
    language = case.language
    municipality = services.municipality_name(case.municipality_code)
    step = case.step

    if step in (Step.INVITED, Step.INFO):
        markup = InlineKeyboardMarkup([[_button(case, "button.start", Action.START)]])
        return translate("info.body", language, municipality=municipality), markup

    if step in CHECKLIST_STEPS:
        counter = translate(
            "checklist.counter",
            language,
            number=CHECKLIST_STEPS.index(step) + 1,
            total=len(CHECKLIST_STEPS),
        )
        question = translate(f"{CHECKLIST_ITEM_KEYS[step]}.question", language)
        return counter + "\n" + question, yes_no_markup(case)

    if step is Step.PARTNER_QUESTION:
        return translate("partner.question", language), yes_no_markup(case)

    if step in PARTNER_CHECKLIST_STEPS:
        question = translate(f"{CHECKLIST_ITEM_KEYS[step]}.question", language)
        return question, yes_no_markup(case)

    if step is Step.APP:
        settings = services.settings
        markup = InlineKeyboardMarkup(
            [
                [
                    InlineKeyboardButton(
                        translate("button.app_store", language),
                        url=settings.app_store_url,
                    )
                ],
                [
                    InlineKeyboardButton(
                        translate("button.google_play", language),
                        url=settings.google_play_url,
                    )
                ],
                [_button(case, "button.have_app", Action.HAVE_APP)],
            ]
        )
        return translate("app.body", language), markup

    if step is Step.QR:
        # The text of a QrStepReply, sent only when no new code can be made.
        markup = InlineKeyboardMarkup([[_button(case, "button.renew", Action.RENEW)]])
        return translate("qr.unavailable", language), markup

    if step is Step.FETCHING:
        return (
            translate("fetching.body", language) + PARAGRAPH + render_progress(case),
            None,
        )

    if step is Step.REVIEW:
        return translate("review.body", language), None

    if step in (Step.CONSENT, Step.CONSENT_PARTNER):
        key = "consent.client" if step is Step.CONSENT else "consent.partner"
        markup = InlineKeyboardMarkup(
            [
                [_button(case, "button.consent_yes", Action.YES)],
                [_button(case, "button.consent_no", Action.NO)],
            ]
        )
        return translate(key, language, municipality=municipality), markup

    if step is Step.DELIVERING:
        return translate("delivering.body", language, municipality=municipality), None

    if step is Step.DELIVERY_FAILED:
        return translate("delivery_failed.body", language), None

    return translate(FINAL_TEXT_KEYS[step], language, municipality=municipality), None


def _button(
    case: Case, key: str, action: Action, scope: Step | str | None = None
) -> InlineKeyboardButton:
    return InlineKeyboardButton(
        translate(key, case.language), callback_data=encode_for(case, action, scope)
    )


def _source_states(raw: object) -> dict[str, str]:
    if isinstance(raw, list):
        return {str(source): "fetched" for source in raw}
    if not isinstance(raw, dict):
        return {}
    states: dict[str, str] = {}
    for source, value in raw.items():
        text = str(value).lower()
        if text in _FETCHED_STATES:
            states[str(source)] = "fetched"
        elif text in _FAILED_STATES:
            states[str(source)] = "failed"
    return states


def _fit(text: str, limit: int = MessageLimit.MAX_TEXT_LENGTH) -> str:
    # Catalog texts are far below the limit; a cut message is better than a
    # BadRequest that leaves the client without a reply.
    if len(text) <= limit:
        return text
    logger.warning("message text cut length=%s limit=%s", len(text), limit)
    return text[:limit]


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
