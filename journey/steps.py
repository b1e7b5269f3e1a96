"""The steps of the journey and the events that move a case between them.

This module is the journey as a pure state machine: no I/O, no clock, no
Redis. Both processes ask it whether an event is allowed in a step before
they write anything, and the store applies the answer atomically.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Step(enum.StrEnum):
    """The position of a case in the journey."""

    INVITED = "invited"
    """The case and its invitation exist; no chat is linked yet."""
    INFO = "info"
    """The client opened the link and reads what the journey is."""
    CHECK_DIGID = "check_digid"
    CHECK_SMS = "check_sms"
    CHECK_MIJNOVERHEID = "check_mijnoverheid"
    CHECK_PHONE = "check_phone"
    PARTNER_QUESTION = "partner_question"
    PARTNER_CHECK_DIGID = "partner_check_digid"
    PARTNER_CHECK_SMS = "partner_check_sms"
    APP = "app"
    """The client installs the Ockto app or confirms having it."""
    QR = "qr"
    """A pairing code is issued and waits for the app to claim it."""
    FETCHING = "fetching"
    """The app is paired and fetches the sources."""
    REVIEW = "review"
    """The client checks in the app what was fetched."""
    CONSENT = "consent"
    """The encrypted package is held and waits for the client's consent."""
    CONSENT_PARTNER = "consent_partner"
    """The client consented; the partner's consent is still needed."""
    DELIVERING = "delivering"
    """Every consent is given and the delivery to the municipality runs."""
    DELIVERED = "delivered"
    REFUSED = "refused"
    DELIVERY_FAILED = "delivery_failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


TERMINAL_STEPS: frozenset[Step] = frozenset(
    {Step.DELIVERED, Step.REFUSED, Step.CANCELLED, Step.EXPIRED}
)
"""Steps after which the case is reduced to a tombstone."""

CHECKLIST_STEPS: tuple[Step, ...] = (
    Step.CHECK_DIGID,
    Step.CHECK_SMS,
    Step.CHECK_MIJNOVERHEID,
    Step.CHECK_PHONE,
)
PARTNER_CHECKLIST_STEPS: tuple[Step, ...] = (
    Step.PARTNER_CHECK_DIGID,
    Step.PARTNER_CHECK_SMS,
)


class Event(enum.StrEnum):
    """Something that happened to a case and may move it to another step."""

    LINK_CHAT = "link_chat"
    START = "start"
    CONFIRM = "confirm"
    """The client answered "yes" to the current checklist item."""
    PARTNER_YES = "partner_yes"
    PARTNER_NO = "partner_no"
    APP_READY = "app_ready"
    RENEW_PAIRING = "renew_pairing"
    PAIRING_CLAIMED = "pairing_claimed"
    REVIEW_READY = "review_ready"
    PACKAGE_RECEIVED = "package_received"
    CLIENT_CONSENTS = "client_consents"
    PARTNER_CONSENTS = "partner_consents"
    REFUSE = "refuse"
    DELIVERED = "delivered"
    DELIVERY_FAILED = "delivery_failed"
    REDELIVER = "redeliver"
    CANCEL = "cancel"
    EXPIRE = "expire"


class TransitionRejected(Exception):
    """Raised when an event is not allowed in the case's current step."""

    def __init__(self, step: Step, event: Event) -> None:
        super().__init__(f"event {event.value!r} is not allowed in step {step.value!r}")
        self.step = step
        self.event = event


@dataclass(frozen=True, slots=True)
class _Rule:
    target: Step
    requires_partner: bool | None = None
    """None if the rule always applies, else whether the case must have a partner."""


_RULES: dict[tuple[Step, Event], tuple[_Rule, ...]] = {
    (Step.INVITED, Event.LINK_CHAT): (_Rule(Step.INFO),),
    (Step.INFO, Event.START): (_Rule(Step.CHECK_DIGID),),
    (Step.CHECK_DIGID, Event.CONFIRM): (_Rule(Step.CHECK_SMS),),
    (Step.CHECK_SMS, Event.CONFIRM): (_Rule(Step.CHECK_MIJNOVERHEID),),
    (Step.CHECK_MIJNOVERHEID, Event.CONFIRM): (_Rule(Step.CHECK_PHONE),),
    (Step.CHECK_PHONE, Event.CONFIRM): (_Rule(Step.PARTNER_QUESTION),),
    (Step.PARTNER_QUESTION, Event.PARTNER_YES): (_Rule(Step.PARTNER_CHECK_DIGID),),
    (Step.PARTNER_QUESTION, Event.PARTNER_NO): (_Rule(Step.APP),),
    (Step.PARTNER_CHECK_DIGID, Event.CONFIRM): (_Rule(Step.PARTNER_CHECK_SMS),),
    (Step.PARTNER_CHECK_SMS, Event.CONFIRM): (_Rule(Step.APP),),
    (Step.APP, Event.APP_READY): (_Rule(Step.QR),),
    # A new code replaces an expired or lost one without leaving the step.
    (Step.QR, Event.RENEW_PAIRING): (_Rule(Step.QR),),
    (Step.QR, Event.PAIRING_CLAIMED): (_Rule(Step.FETCHING),),
    (Step.FETCHING, Event.REVIEW_READY): (_Rule(Step.REVIEW),),
    # The app may upload the package without a separate review event.
    (Step.FETCHING, Event.PACKAGE_RECEIVED): (_Rule(Step.CONSENT),),
    (Step.REVIEW, Event.PACKAGE_RECEIVED): (_Rule(Step.CONSENT),),
    (Step.CONSENT, Event.CLIENT_CONSENTS): (
        _Rule(Step.CONSENT_PARTNER, requires_partner=True),
        _Rule(Step.DELIVERING, requires_partner=False),
    ),
    (Step.CONSENT_PARTNER, Event.PARTNER_CONSENTS): (_Rule(Step.DELIVERING),),
    (Step.CONSENT, Event.REFUSE): (_Rule(Step.REFUSED),),
    (Step.CONSENT_PARTNER, Event.REFUSE): (_Rule(Step.REFUSED),),
    (Step.DELIVERING, Event.DELIVERED): (_Rule(Step.DELIVERED),),
    (Step.DELIVERING, Event.DELIVERY_FAILED): (_Rule(Step.DELIVERY_FAILED),),
    (Step.DELIVERY_FAILED, Event.REDELIVER): (_Rule(Step.DELIVERING),),
}

# Cancelling and expiring are allowed from every step that is not final, except
# while a delivery is in flight: the municipality may already hold the data.
for _step in Step:
    if _step in TERMINAL_STEPS:
        continue
    if _step is not Step.DELIVERING:
        _RULES[(_step, Event.CANCEL)] = (_Rule(Step.CANCELLED),)
        _RULES[(_step, Event.EXPIRE)] = (_Rule(Step.EXPIRED),)
del _step


def next_step(step: Step, event: Event, *, has_partner: bool = False) -> Step:
    """Return the step that ``event`` leads to from ``step``.

    Raises:
        TransitionRejected: the event is not allowed in this step.
    """
    for rule in _RULES.get((step, event), ()):
        if rule.requires_partner is None or rule.requires_partner == has_partner:
            return rule.target
    raise TransitionRejected(step, event)


def is_allowed(step: Step, event: Event, *, has_partner: bool = False) -> bool:
    """Tell whether ``event`` is allowed in ``step``."""
    try:
        next_step(step, event, has_partner=has_partner)
    except TransitionRejected:
        return False
    return True


def events_allowed(step: Step) -> frozenset[Event]:
    """Return every event that has a rule in ``step``, whatever the partner."""
    return frozenset(event for (source, event) in _RULES if source is step)


def transitions() -> list[tuple[Step, Event, Step, bool | None]]:
    """Return the whole transition table as (step, event, target, requires_partner)."""
    table = []
    for (source, event), rules in _RULES.items():
        for rule in rules:
            table.append((source, event, rule.target, rule.requires_partner))
    return table
