"""Recording the client's and the partner's consent, or their refusal.

A yes is stored as ``{"role", "at"}`` in ``case.consents``. The last yes moves
the case to ``delivering`` and queues the delivery; a no deletes the package
and reduces the case to a tombstone.
"""

from __future__ import annotations

import logging

from journey import keys
from journey.events import EventType
from journey.model import Case, Role
from journey.steps import TERMINAL_STEPS, Event, Step, TransitionRejected, next_step
from pairing_service.deliveries import DeliveryQueue, new_delivery_id
from pairing_service.errors import ApiError
from pairing_service.services import Services
from pairing_service.timefmt import iso_utc

logger = logging.getLogger(__name__)

DELIVERY_MARGIN_SECONDS = 3600
"""Extra life given to the case and its package beyond the last retry, so
neither runs out while the final attempt is still in flight."""

_CONSENT_EVENTS: dict[Role, Event] = {
    "client": Event.CLIENT_CONSENTS,
    "partner": Event.PARTNER_CONSENTS,
}
_CONSENT_STEPS: dict[Role, Step] = {
    "client": Step.CONSENT,
    "partner": Step.CONSENT_PARTNER,
}


async def record_consent(
    services: Services, case_id: str, role: Role, consent: bool
) -> Case:
    """Record a yes or a no to the consent question and return the case after it.

    Raises:
        CaseNotFound: no such case.
        TransitionRejected: the case does not wait for this role's consent.
        ApiError: 422 ``no_partner`` for a partner's consent on a case without
            a partner, 410 ``package_expired`` when the package ran out of
            time before the last consent.
    """
    case = await services.store.get(case_id)
    if role == "partner" and not case.has_partner:
        raise ApiError(422, "no_partner", "this case has no partner")
    if not consent:
        return await _refuse(services, case)

    event = _CONSENT_EVENTS[role]
    expected = _CONSENT_STEPS[role]
    if case.tombstone or case.step is not expected:
        raise TransitionRejected(case.step, event)
    target = next_step(case.step, event, has_partner=bool(case.has_partner))
    consents = [*case.consents, {"role": role, "at": iso_utc(services.clock())}]

    if target is not Step.DELIVERING:
        updated = await services.store.apply(
            case_id, event, expected_step=expected, updates={"consents": consents}
        )
        logger.info("consent recorded case=%s role=%s", case.ref, role)
        return updated

    if not await services.redis.exists(keys.package(case_id)):
        raise ApiError(
            410,
            "package_expired",
            "the package is no longer held; the app must send it again",
        )

    # The case and its package must outlive every retry of the delivery.
    window = int(sum(services.settings.delivery_retry_schedule))
    keep_for = window + DELIVERY_MARGIN_SECONDS
    remaining = int(case.expires_at - services.clock())
    delivery_id = new_delivery_id()
    updated = await services.store.apply(
        case_id,
        event,
        expected_step=expected,
        updates={"consents": consents, "delivery_id": delivery_id},
        lifetime=keep_for if remaining < keep_for else None,
    )
    await services.redis.expire(keys.package(case_id), keep_for, gt=True)

    # NOTE: a crash between the write above and this enqueue leaves the case in
    # "delivering" without a delivery. Nothing picks such a case up again.
    await DeliveryQueue(services.redis, clock=services.clock).enqueue(
        delivery_id, updated
    )
    logger.info("consent complete case=%s role=%s", case.ref, role)
    return updated


async def _refuse(services: Services, case: Case) -> Case:
    if case.tombstone or case.step not in (Step.CONSENT, Step.CONSENT_PARTNER):
        raise TransitionRejected(case.step, Event.REFUSE)
    finished = await services.store.finish(case.case_id, Event.REFUSE)
    if finished.step in TERMINAL_STEPS:
        await services.events.publish(
            EventType.REFUSED,
            case.case_id,
            step=finished.step.value,
            chat_id=case.chat_id,
            language=case.language,
        )
    logger.info("consent rejected case=%s", case.ref)
    return finished
