"""The journey's state machine, without Redis."""

from __future__ import annotations

import pytest

from journey.steps import (
    CHECKLIST_STEPS,
    TERMINAL_STEPS,
    Event,
    Step,
    TransitionRejected,
    events_allowed,
    is_allowed,
    next_step,
    transitions,
)

HAPPY_PATH_WITHOUT_PARTNER = [
    (Step.INVITED, Event.LINK_CHAT, Step.INFO),
    (Step.INFO, Event.START, Step.CHECK_DIGID),
    (Step.CHECK_DIGID, Event.CONFIRM, Step.CHECK_SMS),
    (Step.CHECK_SMS, Event.CONFIRM, Step.CHECK_MIJNOVERHEID),
    (Step.CHECK_MIJNOVERHEID, Event.CONFIRM, Step.CHECK_PHONE),
    (Step.CHECK_PHONE, Event.CONFIRM, Step.PARTNER_QUESTION),
    (Step.PARTNER_QUESTION, Event.PARTNER_NO, Step.APP),
    (Step.APP, Event.APP_READY, Step.QR),
    (Step.QR, Event.PAIRING_CLAIMED, Step.FETCHING),
    (Step.FETCHING, Event.REVIEW_READY, Step.REVIEW),
    (Step.REVIEW, Event.PACKAGE_RECEIVED, Step.CONSENT),
    (Step.CONSENT, Event.CLIENT_CONSENTS, Step.DELIVERING),
    (Step.DELIVERING, Event.DELIVERED, Step.DELIVERED),
]


@pytest.mark.parametrize(("step", "event", "target"), HAPPY_PATH_WITHOUT_PARTNER)
def test_happy_path_step(step: Step, event: Event, target: Step) -> None:
    assert next_step(step, event) == target


def test_partner_path_asks_partner_checks_and_consent() -> None:
    step = next_step(Step.PARTNER_QUESTION, Event.PARTNER_YES)
    assert step == Step.PARTNER_CHECK_DIGID
    step = next_step(step, Event.CONFIRM)
    assert step == Step.PARTNER_CHECK_SMS
    assert next_step(step, Event.CONFIRM) == Step.APP
    consent = next_step(Step.CONSENT, Event.CLIENT_CONSENTS, has_partner=True)
    assert consent == Step.CONSENT_PARTNER
    assert next_step(consent, Event.PARTNER_CONSENTS) == Step.DELIVERING


def test_partner_consent_without_partner_rejected() -> None:
    with pytest.raises(TransitionRejected):
        next_step(Step.CONSENT, Event.PARTNER_CONSENTS)


def test_skipping_a_step_is_rejected() -> None:
    with pytest.raises(TransitionRejected) as raised:
        next_step(Step.CHECK_DIGID, Event.APP_READY)
    assert raised.value.step == Step.CHECK_DIGID
    assert raised.value.event == Event.APP_READY


def test_final_steps_allow_nothing() -> None:
    for step in TERMINAL_STEPS:
        assert events_allowed(step) == frozenset(), step


def test_cancel_allowed_in_every_open_step_but_delivering() -> None:
    for step in Step:
        expected = step not in TERMINAL_STEPS and step is not Step.DELIVERING
        assert is_allowed(step, Event.CANCEL) is expected, step


def test_expire_allowed_in_every_open_step_but_delivering() -> None:
    # The worker may have sent the data already. The delivery's own outcome
    # ends the case, so a late expiry must not hide it from the client.
    for step in Step:
        expected = step not in TERMINAL_STEPS and step is not Step.DELIVERING
        assert is_allowed(step, Event.EXPIRE) is expected, step


def test_every_step_reachable_from_invited() -> None:
    reachable = {Step.INVITED}
    frontier = [Step.INVITED]
    table = transitions()
    while frontier:
        current = frontier.pop()
        for source, _event, target, _partner in table:
            if source is current and target not in reachable:
                reachable.add(target)
                frontier.append(target)
    assert reachable == set(Step)


def test_checklist_confirm_walks_items_in_order() -> None:
    step = Step.CHECK_DIGID
    seen = [step]
    while step in CHECKLIST_STEPS[:-1]:
        step = next_step(step, Event.CONFIRM)
        seen.append(step)
    assert tuple(seen) == CHECKLIST_STEPS
