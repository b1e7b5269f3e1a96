"""The webhook request to a municipality: payload and Standard Webhooks headers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from standardwebhooks import Webhook

from journey.model import Case
from journey.sources import PERSONS, SOURCES
from pairing_service.packages import StoredPackage
from pairing_service.progress import SOURCE_DONE
from pairing_service.timefmt import as_datetime, iso_utc

EVENT_TYPE = "package.delivered"
"""The ``type`` of the payload, in the dotted style of Standard Webhooks."""


def delivered_sources(case: Case) -> dict[str, list[str]]:
    """Return per person the sources the app fetched, in the app's order."""
    fetched: dict[str, list[str]] = {}
    for person in PERSONS:
        states = case.progress.get(person, {}).get("sources", {})
        done = [source for source in SOURCES if states.get(source) == SOURCE_DONE]
        if done:
            fetched[person] = done
    return fetched


def build_payload(case: Case, package: StoredPackage, *, created_at: float) -> bytes:
    """Return the JSON body of the delivery, the same bytes on every attempt.

    ``created_at`` is when the delivery was queued; it is the payload's
    ``timestamp``, while each attempt carries its own ``webhook-timestamp``.
    """
    document: dict[str, Any] = {
        "type": EVENT_TYPE,
        "timestamp": iso_utc(created_at),
        "data": {
            "case_ref": case.ref,
            "municipality_code": case.municipality_code,
            "consent": [
                {"role": record["role"], "at": record["at"]} for record in case.consents
            ],
            "sources": delivered_sources(case),
            "package": package.to_payload(),
        },
    }
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def signed_headers(
    secrets: str | Sequence[str], delivery_id: str, body: bytes, *, now: float
) -> dict[str, str]:
    """Return the Standard Webhooks headers for one attempt of a delivery.

    With several secrets (a rotation in progress) the ``webhook-signature``
    header carries one signature per secret, separated by spaces, so a
    receiver that holds either secret accepts the request.
    """
    moment = as_datetime(now)
    secret_list = [secrets] if isinstance(secrets, str) else list(secrets)
    if not secret_list:
        raise ValueError("at least one signing secret is required")
    signatures = [
        Webhook(secret).sign(delivery_id, moment, body) for secret in secret_list
    ]
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": " ".join(signatures),
        "Content-Type": "application/json",
    }
