"""The registry of municipalities that receive deliveries.

The registry is a JSON file that operators maintain::

    {
      "municipalities": [
        {
          "code": "GM0193",
          "name": "Zwolle",
          "participates": true,
          "webhook_url": "https://zwolle.example/ockto/webhook",
          "signing_secret": "whsec_...",
          "hpke": {"suite": "X25519", "key_id": "zwolle-2026-01", "public_key": "..."}
        }
      ]
    }

``signing_secret`` may instead be given as ``signing_secret_env``, the name of
an environment variable that holds it, so secrets stay out of the file. During
a rotation of the signing secret, ``previous_signing_secret`` (or
``previous_signing_secret_env``) contains the secret being retired: every
delivery is then signed with both, and the ``webhook-signature`` header carries
two signatures. A municipality that does not take part needs only ``code``,
``name`` and ``"participates": false``. Every error names the entry and the
field.
"""

from __future__ import annotations

import base64
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from journey.package import InvalidKey, PublicKey, SuiteName, decode_public_key

CBS_CODE = re.compile(r"GM\d{4}")
"""CBS municipality codes are "GM" and four digits, e.g. GM0363 for Amsterdam."""


class RegistryError(ValueError):
    """Raised when the registry file is invalid; the message names entry and field."""


@dataclass(frozen=True, slots=True)
class Municipality:
    """One municipality and, when it takes part, how to deliver to it."""

    code: str
    name: str
    participates: bool
    webhook_url: str = ""
    signing_secret: str = ""
    """The current Standard Webhooks secret (``whsec_...``)."""
    previous_signing_secret: str = ""
    """The secret being retired during a rotation, or empty outside one."""
    suite: SuiteName = SuiteName.X25519
    key_id: str = ""
    public_key_text: str = ""

    @property
    def signing_secrets(self) -> tuple[str, ...]:
        """The secrets every delivery is signed with: current first, then previous."""
        if self.previous_signing_secret:
            return (self.signing_secret, self.previous_signing_secret)
        return (self.signing_secret,)

    @property
    def public_key(self) -> PublicKey:
        """The HPKE public key, parsed."""
        return decode_public_key(self.public_key_text, self.suite)


class MunicipalityRegistry:
    """Municipalities by CBS code, with lookup by name."""

    def __init__(self, municipalities: Iterable[Municipality]) -> None:
        self._by_code: dict[str, Municipality] = {}
        for municipality in municipalities:
            if municipality.code in self._by_code:
                raise RegistryError(
                    f"municipality {municipality.code}: code appears twice"
                )
            self._by_code[municipality.code] = municipality

    @classmethod
    def load(
        cls, path: str | Path, *, environ: Mapping[str, str] | None = None
    ) -> MunicipalityRegistry:
        """Read and validate a registry file.

        Raises:
            RegistryError: the file is missing, not JSON, or an entry is invalid.
        """
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as error:
            raise RegistryError(
                f"municipality registry {path}: cannot read: {error}"
            ) from None
        except json.JSONDecodeError as error:
            raise RegistryError(
                f"municipality registry {path}: invalid JSON: {error}"
            ) from None
        return cls.from_document(
            document, environ=os.environ if environ is None else environ
        )

    @classmethod
    def from_document(
        cls, document: Any, *, environ: Mapping[str, str] | None = None
    ) -> MunicipalityRegistry:
        """Validate a parsed registry document.

        Raises:
            RegistryError: an entry is invalid.
        """
        if not isinstance(document, dict) or not isinstance(
            document.get("municipalities"), list
        ):
            raise RegistryError(
                'municipality registry: expected {"municipalities": [...]}'
            )
        environ = os.environ if environ is None else environ
        entries = [
            _parse_entry(index, entry, environ)
            for index, entry in enumerate(document["municipalities"])
        ]
        return cls(entries)

    def get(self, code: str) -> Municipality | None:
        """Return the municipality with this CBS code, or None."""
        return self._by_code.get(code)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_code.values())

    def __len__(self) -> int:
        return len(self._by_code)

    def find_by_name(self, name: str) -> Municipality | None:
        """Return the municipality whose name matches, ignoring case and accents."""
        wanted = normalize_name(name)
        for municipality in self._by_code.values():
            if normalize_name(municipality.name) == wanted:
                return municipality
        return None


def normalize_name(name: str) -> str:
    """Fold a municipality name for comparison.

    Accents, case, apostrophes, hyphens and dots are dropped, so "'s-Gravenhage"
    and "s gravenhage" compare equal.
    """
    decomposed = unicodedata.normalize("NFKD", name)
    letters = "".join(char for char in decomposed if not unicodedata.combining(char))
    folded = re.sub(r"[\s'\u2019`\-.]+", " ", letters.casefold())
    return folded.strip()


def _parse_entry(index: int, entry: Any, environ: Mapping[str, str]) -> Municipality:
    label = f"municipality #{index + 1}"
    if not isinstance(entry, dict):
        raise RegistryError(f"{label}: expected an object")

    code = entry.get("code")
    if not isinstance(code, str) or not CBS_CODE.fullmatch(code):
        raise RegistryError(
            f"{label}: field 'code' must be a CBS code like GM0363, got {code!r}"
        )
    label = f"municipality {code}"

    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RegistryError(f"{label}: field 'name' is missing or empty")
    participates = entry.get("participates")
    if not isinstance(participates, bool):
        raise RegistryError(f"{label}: field 'participates' must be true or false")
    if not participates:
        return Municipality(code=code, name=name, participates=False)

    webhook_url = entry.get("webhook_url")
    parts = urlsplit(webhook_url) if isinstance(webhook_url, str) else None
    if parts is None or parts.scheme not in ("https", "http") or not parts.hostname:
        raise RegistryError(f"{label}: field 'webhook_url' must be an http(s) URL")

    secret = _signing_secret(label, entry, "signing_secret", environ)
    if secret is None:
        raise RegistryError(
            f"{label}: field 'signing_secret' is missing; give it or "
            "'signing_secret_env'"
        )
    previous_secret = _signing_secret(label, entry, "previous_signing_secret", environ)
    if previous_secret == secret:
        raise RegistryError(
            f"{label}: field 'previous_signing_secret' equals 'signing_secret'; "
            "remove it or give the retired secret"
        )

    key = entry.get("hpke")
    if not isinstance(key, dict):
        raise RegistryError(
            f"{label}: field 'hpke' must be an object with suite, key_id and public_key"
        )
    try:
        suite = SuiteName(key.get("suite", SuiteName.X25519.value))
    except ValueError:
        choices = ", ".join(member.value for member in SuiteName)
        raise RegistryError(
            f"{label}: field 'hpke.suite' must be one of {choices}"
        ) from None
    key_id = key.get("key_id")
    if not isinstance(key_id, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", key_id):
        raise RegistryError(
            f"{label}: field 'hpke.key_id' must be 1-64 letters, digits, . _ or -"
        )
    public_key = key.get("public_key")
    try:
        decode_public_key(public_key if isinstance(public_key, str) else "", suite)
    except (InvalidKey, ValueError) as error:
        raise RegistryError(
            f"{label}: field 'hpke.public_key' is invalid: {error}"
        ) from None

    return Municipality(
        code=code,
        name=name,
        participates=True,
        webhook_url=str(webhook_url),
        signing_secret=secret,
        previous_signing_secret=previous_secret or "",
        suite=suite,
        key_id=key_id,
        public_key_text=str(public_key),
    )


MIN_SIGNING_SECRET_CHARS = 30
"""``whsec_`` plus at least 24 base64 characters (18 random bytes, 144 bits), so
a secret cannot be guessed."""


def _signing_secret(
    label: str, entry: dict[str, Any], field: str, environ: Mapping[str, str]
) -> str | None:
    # Read a secret given inline as ``field`` or by name as ``field_env``.
    secret = entry.get(field)
    variable_field = f"{field}_env"
    variable = entry.get(variable_field)
    if secret is None and variable is None:
        return None
    if secret is None:
        if not isinstance(variable, str) or not variable:
            raise RegistryError(
                f"{label}: field '{variable_field}' must name an environment variable"
            )
        secret = environ.get(variable)
        if not secret:
            raise RegistryError(
                f"{label}: field '{variable_field}' names {variable}, which is not set"
            )
    if (
        not isinstance(secret, str)
        or not secret.startswith("whsec_")
        or len(secret) < MIN_SIGNING_SECRET_CHARS
        or not _is_base64(secret.removeprefix("whsec_"))
    ):
        raise RegistryError(
            f"{label}: field '{field}' must be a Standard Webhooks secret "
            f"(whsec_ and base64, at least {MIN_SIGNING_SECRET_CHARS} characters)"
        )
    return secret


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:
        return False
    return True
