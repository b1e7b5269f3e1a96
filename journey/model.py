"""The case: one application by one client (and partner), as stored in Redis."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from journey.steps import Step
from journey.tokens import case_reference

Role = str
"""``"client"`` or ``"partner"``."""

ROLES: tuple[Role, ...] = ("client", "partner")

PERSONAL_FIELDS: frozenset[str] = frozenset(
    {"chat_id", "email", "checklist", "progress", "consents", "language"}
)
"""Fields that say something about a person; a tombstone keeps none of them."""


@dataclass(slots=True)
class Case:
    """A case as read from its Redis hash.

    Times are seconds since the Unix epoch. ``version`` grows by one with every
    write, so a writer can detect that someone else changed the case meanwhile.
    """

    case_id: str
    step: Step
    version: int
    municipality_code: str
    created_at: float
    expires_at: float
    invite_hash: str = ""
    chat_id: int | None = None
    language: str = "nl"
    email: str | None = None
    has_partner: bool | None = None
    checklist: dict[str, str] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)
    consents: list[dict[str, Any]] = field(default_factory=list)
    progress_message_id: int | None = None
    pairing_page_id: str | None = None
    package_digest: str | None = None
    delivery_id: str | None = None
    finished_at: float | None = None
    tombstone: bool = False
    support_state: str | None = None
    """``"requested"`` while a help request waits for an agent, ``"active"``
    while an agent has the conversation, else None (see ``bot.support``)."""
    support_topic_id: int | None = None
    """``message_thread_id`` of the case's topic in the support group."""
    support_requested_at: float | None = None
    qr_renewals: int = 0
    """Times the client asked for a new QR code; repeated renewals offer help."""
    last_error: str | None = None
    """Stable code of the last problem the client met, for the support summary."""

    @property
    def ref(self) -> str:
        """Short reference for logs and support; reveals nothing of the id."""
        return case_reference(self.case_id)

    @classmethod
    def from_hash(cls, case_id: str, raw: dict[str, str]) -> Case:
        """Build a case from the strings of its Redis hash."""

        def optional_int(name: str) -> int | None:
            value = raw.get(name)
            return int(value) if value else None

        def optional_str(name: str) -> str | None:
            return raw.get(name) or None

        partner = raw.get("has_partner", "")
        return cls(
            case_id=case_id,
            step=Step(raw["step"]),
            version=int(raw["version"]),
            municipality_code=raw.get("municipality_code", ""),
            created_at=float(raw.get("created_at", "0")),
            expires_at=float(raw.get("expires_at", "0")),
            invite_hash=raw.get("invite_hash", ""),
            chat_id=optional_int("chat_id"),
            language=raw.get("language") or "nl",
            email=optional_str("email"),
            has_partner=None if partner == "" else partner == "1",
            checklist=json.loads(raw.get("checklist") or "{}"),
            progress=json.loads(raw.get("progress") or "{}"),
            consents=json.loads(raw.get("consents") or "[]"),
            progress_message_id=optional_int("progress_message_id"),
            pairing_page_id=optional_str("pairing_page_id"),
            package_digest=optional_str("package_digest"),
            delivery_id=optional_str("delivery_id"),
            finished_at=float(raw["finished_at"]) if raw.get("finished_at") else None,
            tombstone=raw.get("tombstone") == "1",
            support_state=optional_str("support_state"),
            support_topic_id=optional_int("support_topic_id"),
            support_requested_at=(
                float(raw["support_requested_at"])
                if raw.get("support_requested_at")
                else None
            ),
            qr_renewals=int(raw.get("qr_renewals") or 0),
            last_error=optional_str("last_error"),
        )

    def consented(self, role: Role) -> bool:
        """Tell whether ``role`` has given consent for this case."""
        return any(record.get("role") == role for record in self.consents)


def hash_from_flat(fields: Sequence[str]) -> dict[str, str]:
    """Return a hash that a Lua script's ``HGETALL`` gave as a flat list.

    Inside a script ``HGETALL`` returns field, value, field, value, ... and
    redis-py passes a script's reply on without turning it into a dict.
    """
    return dict(zip(fields[::2], fields[1::2], strict=True))


def encode_fields(values: Mapping[str, Any]) -> dict[str, str]:
    """Turn Python values into the strings stored in a case hash.

    Dicts and lists become JSON, booleans ``"1"``/``"0"``, None an empty string.
    """
    encoded: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            encoded[name] = ""
        elif isinstance(value, bool):
            encoded[name] = "1" if value else "0"
        elif isinstance(value, dict | list):
            encoded[name] = json.dumps(value, separators=(",", ":"), sort_keys=True)
        elif isinstance(value, Step):
            encoded[name] = value.value
        else:
            encoded[name] = str(value)
    return encoded
