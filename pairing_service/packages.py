"""Receiving the data package from the app and sealing it for the municipality.

The plaintext exists only in this process's memory, between reading the body
and sealing it: it is never written to Redis, a log or a file. Redis contains
the HPKE ciphertext and its metadata in ``keys.package(case_id)`` for at most
``keys.PACKAGE_TTL_SECONDS``.
"""

from __future__ import annotations

import base64
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from journey import keys
from journey.events import EventType
from journey.model import Case, encode_fields
from journey.package import FORMAT_VERSION, MAX_PACKAGE_BYTES, SealedPackage, seal
from journey.steps import Event, Step, TransitionRejected
from pairing_service.bodies import read_limited
from pairing_service.errors import ApiError
from pairing_service.progress import require_partner_done
from pairing_service.services import Services

logger = logging.getLogger(__name__)

PACKAGE_CONTENT_TYPE = "application/octet-stream"

_UPLOAD_STEPS: frozenset[Step] = frozenset({Step.FETCHING, Step.REVIEW})

_PACKAGE_HELD_STEPS: frozenset[Step] = frozenset(
    {Step.CONSENT, Step.CONSENT_PARTNER, Step.DELIVERING, Step.DELIVERY_FAILED}
)
"""Steps of a case whose package has arrived and is not yet delivered or deleted."""

# KEYS[1] package hash. ARGV[1] TTL, then field/value pairs.
# Stores the package only if the case has none yet, so a repeated or a
# concurrent upload cannot replace the package the client is asked about.
_STORE_IF_ABSENT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for index = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[index], ARGV[index + 1])
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""

# KEYS[1] package hash. ARGV[1] the upload id that must own it.
_DELETE_IF_OWNED = """
if redis.call('HGET', KEYS[1], 'upload_id') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class StoredPackage:
    """The sealed package as kept in Redis, without the plaintext."""

    format: str
    suite: str
    key_id: str
    sha256: str
    size: int
    ciphertext_b64: str
    received_at: float

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> StoredPackage:
        """Build it from the strings of ``keys.package(case_id)``."""
        return cls(
            format=raw.get("format", FORMAT_VERSION),
            suite=raw["suite"],
            key_id=raw["key_id"],
            sha256=raw["sha256"],
            size=int(raw["size"]),
            ciphertext_b64=raw["ciphertext"],
            received_at=float(raw.get("received_at", "0")),
        )

    def to_payload(self) -> dict[str, Any]:
        """Return the ``package`` object of the webhook payload."""
        return {
            "format": self.format,
            "suite": self.suite,
            "key_id": self.key_id,
            "sha256": self.sha256,
            "size": self.size,
            "ciphertext": self.ciphertext_b64,
        }


async def load_package(services: Services, case_id: str) -> StoredPackage | None:
    """Return the sealed package of a case, or None when there is none."""
    raw: dict[str, str] = await services.redis.hgetall(keys.package(case_id))  # type: ignore[misc]
    if not raw:
        return None
    return StoredPackage.from_hash(raw)


async def store_sealed(
    services: Services, case_id: str, sealed: SealedPackage
) -> str | None:
    """Store a sealed package for a case that has none; return its upload id.

    Returns None when the case already has a package, which stays unchanged.
    """
    upload_id = secrets.token_urlsafe(12)
    fields: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "suite": sealed.suite.value,
        "key_id": sealed.key_id,
        "sha256": sealed.sha256,
        "size": sealed.size,
        "ciphertext": base64.b64encode(sealed.ciphertext).decode("ascii"),
        "received_at": services.clock(),
        "upload_id": upload_id,
    }
    pairs = [item for pair in encode_fields(fields).items() for item in pair]
    store_if_absent = services.redis.register_script(_STORE_IF_ABSENT)
    stored = await store_if_absent(
        keys=[keys.package(case_id)], args=[keys.PACKAGE_TTL_SECONDS, *pairs]
    )
    return upload_id if stored else None


async def receive_package(
    services: Services, case: Case, request: web.Request
) -> SealedPackage:
    """Read an uploaded package, seal it at once and move the case to consent.

    Raises:
        ApiError: 415 for another content type, 413 ``package_too_large``, 422
            ``empty_package``, 409 ``package_already_received``, 409
            ``partner_not_done`` when the case has a partner who has not
            finished, or 409 ``municipality_unavailable`` when the
            municipality takes no deliveries.
        TransitionRejected: the case is not fetching or in review.
    """
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
    if content_type.lower() != PACKAGE_CONTENT_TYPE:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"the package must be sent as {PACKAGE_CONTENT_TYPE}",
        )
    # An app that lost the response to its upload and sends it again learns
    # that the first one arrived, rather than getting a step conflict.
    if case.step in _PACKAGE_HELD_STEPS:
        raise _already_received()
    if case.step not in _UPLOAD_STEPS:
        raise TransitionRejected(case.step, Event.PACKAGE_RECEIVED)
    require_partner_done(case, "the package")
    municipality = services.registry.get(case.municipality_code)
    if municipality is None or not municipality.participates:
        raise ApiError(
            409,
            "municipality_unavailable",
            f"municipality {case.municipality_code} takes no deliveries",
        )

    plaintext = await read_limited(request, MAX_PACKAGE_BYTES, code="package_too_large")
    if not plaintext:
        raise ApiError(422, "empty_package", "the package is empty")
    sealed = seal(
        plaintext,
        public_key=municipality.public_key,
        suite=municipality.suite,
        key_id=municipality.key_id,
        case_ref=case.ref,
        municipality_code=municipality.code,
    )
    # Drop the only reference to the plaintext before any further await.
    del plaintext

    upload_id = await store_sealed(services, case.case_id, sealed)
    if upload_id is None:
        raise _already_received()

    try:
        updated = await services.store.apply(
            case.case_id,
            Event.PACKAGE_RECEIVED,
            updates={"package_digest": sealed.sha256},
        )
    except Exception:
        # The case moved on (or went away) meanwhile: keep no orphaned package.
        delete_if_owned = services.redis.register_script(_DELETE_IF_OWNED)
        await delete_if_owned(keys=[keys.package(case.case_id)], args=[upload_id])
        raise

    await services.events.publish(
        EventType.CONSENT_NEEDED,
        case.case_id,
        step=updated.step.value,
        has_partner=bool(updated.has_partner),
    )
    logger.info(
        "package sealed case=%s size=%s suite=%s key_id=%s",
        case.ref,
        sealed.size,
        sealed.suite.value,
        sealed.key_id,
    )
    return sealed


def _already_received() -> ApiError:
    return ApiError(409, "package_already_received", "this case already has a package")
