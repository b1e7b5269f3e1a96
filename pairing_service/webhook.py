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
    package_fields = package.to_payload()
    ciphertext = package_fields["ciphertext"]
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
            # The ciphertext is the last member of the last objects, so the
            # text can end with it (see below).
            "package": package_fields | {"ciphertext": ""},
        },
    }
    text = json.dumps(document, separators=(",", ":"))
    plain = _plain_json_bytes(ciphertext)
    if plain is None or not text.endswith(_EMPTY_CIPHERTEXT_END):
        document["data"]["package"]["ciphertext"] = ciphertext
        return json.dumps(document, separators=(",", ":")).encode("utf-8")
    # The base64 text of a package is most of the body. It needs no escapes,
    # so it is put in place as it is instead of being scanned by the encoder.
    head = text[: -len('""}}}')].encode("ascii")
    return b"".join((head, b'"', plain, b'"}}}'))


_EMPTY_CIPHERTEXT_END = '"ciphertext":""}}}'
"""The end of the payload text while its ciphertext is still empty."""

_PLAIN_JSON_BYTES = bytes(
    byte for byte in range(0x20, 0x7F) if byte not in (ord('"'), ord("\\"))
)
"""The bytes that JSON writes inside a string as they are: printable ASCII
except the quote and the backslash. Base64 uses only these."""


def _plain_json_bytes(text: str) -> bytes | None:
    # The ASCII bytes of text when json.dumps would write it unchanged inside
    # quotes, else None. bytes.translate runs in C, where a regular expression
    # or str.isprintable takes several times longer on a large package.
    try:
        encoded = text.encode("ascii")
    except UnicodeEncodeError:
        return None
    if encoded.translate(None, _PLAIN_JSON_BYTES):
        return None
    return encoded


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
