"""Recording what the app reports while it fetches: logins, sources, review.

Progress is stored in ``case.progress`` as
``{"client": {"digid": true, "sources": {"uwv": "done", "belastingdienst":
"failed"}}, "partner": {...}}`` and published to the bot as a ``progress``
event. It records which sources were fetched, never what they contained.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from journey.events import EventType
from journey.model import Case
from journey.sources import PERSONS, SOURCES
from journey.steps import Event, Step, TransitionRejected
from pairing_service.bodies import string_field
from pairing_service.errors import ApiError
from pairing_service.services import Services

logger = logging.getLogger(__name__)

APP_EVENT_TYPES: tuple[str, ...] = (
    "digid_login",
    "source_fetched",
    "source_failed",
    "partner_done",
    "review_ready",
)

SOURCE_DONE = "done"
SOURCE_FAILED = "failed"

_PROGRESS_STEPS: frozenset[Step] = frozenset({Step.FETCHING, Step.REVIEW})
"""Steps in which the app may still report progress."""


async def record_app_event(
    services: Services, case: Case, document: dict[str, Any]
) -> Step:
    """Apply one event that the app reported and return the case's step after it.

    Raises:
        ApiError: 422 ``invalid_field`` or ``no_partner`` for an event that
            does not fit the case, 409 ``step_conflict`` when the case is past
            the fetching steps, 409 ``partner_not_done`` for ``review_ready``
            in a case whose partner has not finished.
        TransitionRejected: ``review_ready`` when the case is past fetching.
    """
    event_type = string_field(document, "type", choices=APP_EVENT_TYPES)

    if event_type == "review_ready":
        return await _review_ready(services, case)

    if event_type == "partner_done":
        person = "partner"
        change: dict[str, Any] = {"done": True}
    else:
        person = str(string_field(document, "person", choices=PERSONS))
        if event_type == "digid_login":
            change = {"digid": True}
        else:
            source = str(string_field(document, "source", choices=SOURCES))
            state = SOURCE_DONE if event_type == "source_fetched" else SOURCE_FAILED
            change = {"sources": {source: state}}

    if person == "partner" and not case.has_partner:
        raise ApiError(422, "no_partner", "this case has no partner")

    def merge(current: Case) -> dict[str, Any]:
        # Runs again on a write conflict, with the newer progress.
        progress = copy.deepcopy(current.progress)
        entry = progress.setdefault(person, {})
        for name, value in change.items():
            if isinstance(value, dict):
                entry.setdefault(name, {}).update(value)
            else:
                entry[name] = value
        return {"progress": progress}

    try:
        updated = await services.store.modify(
            case.case_id, merge, allowed_steps=_PROGRESS_STEPS
        )
    except TransitionRejected as rejected:
        # The store names a stand-in event, so the message names the app's own.
        raise ApiError(
            409,
            "step_conflict",
            f"event {event_type!r} is not accepted in step "
            f"{rejected.step.value!r}, which takes no more progress",
        ) from None
    await services.events.publish(
        EventType.PROGRESS, case.case_id, progress=updated.progress
    )
    logger.debug(
        "progress recorded case=%s type=%s person=%s", case.ref, event_type, person
    )
    return updated.step


def require_partner_done(case: Case, action: str) -> None:
    """Reject ``action`` for a case with a partner who has not finished in the app.

    The municipality needs the data of both partners, so the app may not
    move to the review or send the package before ``partner_done``.

    Raises:
        ApiError: 409 ``partner_not_done``.
    """
    if not case.has_partner:
        return
    partner = case.progress.get("partner")
    if isinstance(partner, dict) and partner.get("done") is True:
        return
    logger.info(
        "partner not done, request rejected case=%s action=%s", case.ref, action
    )
    raise ApiError(
        409,
        "partner_not_done",
        f"{action} needs the partner's data first; send partner_done when the "
        "partner has logged in and their sources are fetched",
    )


async def _review_ready(services: Services, case: Case) -> Step:
    # The app may repeat the event after a lost response. A case already in
    # review stays there and nothing is published twice.
    if case.step is Step.REVIEW:
        return case.step
    if case.step is Step.FETCHING:
        require_partner_done(case, "review_ready")
    updated = await services.store.apply(
        case.case_id, Event.REVIEW_READY, expected_step=Step.FETCHING
    )
    await services.events.publish(
        EventType.REVIEW_READY, case.case_id, step=updated.step.value
    )
    logger.info("review ready case=%s", case.ref)
    return updated.step
