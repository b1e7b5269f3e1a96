"""The summary an agent reads at the top of a case's topic.

It shows where the client is without asking them: reference, municipality,
step, checklist answers, partner, pairing and delivery status, reminders sent
and the last problem. It never contains financial data, progress details,
contact details, the chat id or any token.
"""

from __future__ import annotations

from bot.i18n import DEFAULT_LANGUAGE, translate
from bot.services import BotServices
from journey.model import Case
from journey.steps import CHECKLIST_STEPS, PARTNER_CHECKLIST_STEPS, Step

AGENT_LANGUAGE = DEFAULT_LANGUAGE
"""Agents work in Dutch, whatever language the client chose."""

_BEFORE_PAIRING = frozenset(
    {
        Step.INVITED,
        Step.INFO,
        *CHECKLIST_STEPS,
        Step.PARTNER_QUESTION,
        *PARTNER_CHECKLIST_STEPS,
        Step.APP,
    }
)

_DELIVERY_STATUS: dict[Step, str] = {
    Step.CONSENT: "waiting_consent",
    Step.CONSENT_PARTNER: "waiting_consent",
    Step.DELIVERING: "delivering",
    Step.DELIVERED: "delivered",
    Step.DELIVERY_FAILED: "failed",
    Step.REFUSED: "refused",
}


def agent_text(key: str, **values: object) -> str:
    """Translate a support text for agents."""
    return translate(key, AGENT_LANGUAGE, **values)


def topic_name(case: Case, services: BotServices) -> str:
    """Return the topic's name: the case reference and the municipality."""
    municipality = services.municipality_name(case.municipality_code)
    return agent_text("label.topic_name", ref=case.ref, municipality=municipality)


def render_summary(case: Case, services: BotServices, reminders_sent: int) -> str:
    """Render the pinned summary of ``case`` for the agents."""
    none = agent_text("label.summary_none")
    return agent_text(
        "support.summary",
        ref=case.ref,
        municipality=services.municipality_name(case.municipality_code),
        code=case.municipality_code,
        step=case.step.value,
        checklist=_checklist(case) or none,
        partner=_partner(case),
        pairing=agent_text(f"label.pairing.{_pairing_status(case)}"),
        delivery=agent_text(
            f"label.delivery.{_DELIVERY_STATUS.get(case.step, 'none')}"
        ),
        reminders=reminders_sent,
        error=case.last_error or none,
    )


def _checklist(case: Case) -> str:
    answers = []
    for step in (*CHECKLIST_STEPS, *PARTNER_CHECKLIST_STEPS):
        answer = case.checklist.get(step.value)
        if answer in ("yes", "no", "later"):
            label = agent_text(f"label.check.{step.value}")
            answers.append(f"{label} {agent_text(f'label.answer.{answer}')}")
    return ", ".join(answers)


def _partner(case: Case) -> str:
    if case.has_partner is None:
        return agent_text("label.partner.unknown")
    return agent_text("label.partner.yes" if case.has_partner else "label.partner.no")


def _pairing_status(case: Case) -> str:
    if case.step in _BEFORE_PAIRING:
        return "none"
    if case.step is Step.QR:
        return "waiting"
    if case.step in (Step.CANCELLED, Step.EXPIRED):
        return "none"
    return "paired"
