"""Decrypting the package of a delivery with the municipality's private keys.

The ``package`` object of the payload names its HPKE suite and the ``key_id``
of the public key it was sealed with. A ``KeyRing`` contains every private key
that deliveries may still use, so during a key rotation the old key keeps
opening deliveries sealed before the switch.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag

from journey.package import (
    FORMAT_VERSION,
    InvalidKey,
    KeyPair,
    PrivateKey,
    SuiteName,
    decode_private_key,
    open_sealed,
)


class PackageError(Exception):
    """Raised when a delivery's package cannot be opened; ``code`` names the cause."""

    code = "package_error"


class MalformedPayload(PackageError):
    """A field of the payload is missing or has the wrong type."""

    code = "malformed_payload"


class UnknownKeyId(PackageError):
    """The package was sealed for a key this receiver does not hold."""

    code = "unknown_key_id"


class DecryptionFailed(PackageError):
    """The ciphertext, its case reference or its municipality code was changed,
    or the key does not match."""

    code = "decryption_failed"


class ChecksumMismatch(PackageError):
    """The decrypted bytes do not match the payload's ``sha256`` or ``size``."""

    code = "checksum_mismatch"


@dataclass(frozen=True, slots=True)
class OpenedPackage:
    """A decrypted package and the payload fields that describe it."""

    case_ref: str
    municipality_code: str
    key_id: str
    plaintext: bytes
    consent: list[dict[str, Any]]
    sources: dict[str, list[str]]


@dataclass(frozen=True, slots=True)
class _Key:
    suite: SuiteName
    private_key: PrivateKey


class KeyRing:
    """The receiver's HPKE private keys by key id."""

    def __init__(self) -> None:
        self._keys: dict[str, _Key] = {}

    def add(self, key_id: str, suite: SuiteName, private_key: PrivateKey | str) -> None:
        """Add a private key, parsed or as URL-safe base64.

        Raises:
            journey.package.InvalidKey: the text does not fit the suite.
        """
        if isinstance(private_key, str):
            private_key = decode_private_key(private_key, suite)
        self._keys[key_id] = _Key(suite, private_key)

    def add_file(self, path: Path) -> str:
        """Add the key in a file written by ``keygen``; return its key id.

        Raises:
            ValueError: the file is not a key file.
            journey.package.InvalidKey: the key does not fit its suite.
        """
        document = json.loads(path.read_text(encoding="utf-8"))
        try:
            key_id = str(document["key_id"])
            suite = SuiteName(document["suite"])
            private_key = str(document["private_key"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"{path}: not a key file (key_id, suite, private_key): {error}"
            ) from None
        self.add(key_id, suite, private_key)
        return key_id

    def _key_for(self, key_id: str) -> _Key | None:
        return self._keys.get(key_id)

    def key_ids(self) -> list[str]:
        """Return the ids of the keys held."""
        return list(self._keys)

    def open(self, payload: Any) -> OpenedPackage:
        """Decrypt the package of a verified payload and check its SHA-256.

        Raises:
            MalformedPayload, UnknownKeyId, DecryptionFailed, ChecksumMismatch.
        """
        try:
            data = payload["data"]
            package = data["package"]
            case_ref = str(data["case_ref"])
            municipality_code = str(data["municipality_code"])
            key_id = str(package["key_id"])
            suite = SuiteName(package["suite"])
            package_format = package["format"]
            ciphertext = base64.b64decode(package["ciphertext"], validate=True)
            expected_sha256 = str(package["sha256"])
            expected_size = int(package["size"])
            consent = list(data["consent"])
            sources = dict(data["sources"])
        except (KeyError, TypeError, ValueError, binascii.Error) as error:
            raise MalformedPayload(f"invalid payload field: {error!r}") from None
        if package_format != FORMAT_VERSION:
            raise MalformedPayload(
                f"package format {package_format!r} is not {FORMAT_VERSION}"
            )

        key = self._key_for(key_id)
        if key is None:
            raise UnknownKeyId(f"no private key with key_id {key_id!r}")
        if key.suite is not suite:
            raise DecryptionFailed(
                f"key {key_id} is {key.suite.value}, the package is {suite.value}"
            )
        try:
            plaintext = open_sealed(
                ciphertext,
                private_key=key.private_key,
                suite=suite,
                case_ref=case_ref,
                municipality_code=municipality_code,
            )
        except InvalidTag:
            raise DecryptionFailed(
                "the package does not decrypt with this key, case_ref and "
                "municipality_code"
            ) from None

        if len(plaintext) != expected_size:
            raise ChecksumMismatch(
                f"size is {len(plaintext)} bytes, the payload states {expected_size}"
            )
        if hashlib.sha256(plaintext).hexdigest() != expected_sha256:
            raise ChecksumMismatch("sha256 of the decrypted package does not match")
        return OpenedPackage(
            case_ref=case_ref,
            municipality_code=municipality_code,
            key_id=key_id,
            plaintext=plaintext,
            consent=consent,
            sources=sources,
        )


def write_key_file(path: Path, key_id: str, key_pair: KeyPair) -> None:
    """Write a key pair as JSON, readable by its owner only.

    Raises:
        FileExistsError: the file exists; a key is never overwritten.
    """
    document = {
        "key_id": key_id,
        "suite": key_pair.suite.value,
        "public_key": key_pair.public_key,
        "private_key": key_pair.private_key,
    }
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        json.dump(document, file, indent=2)
        file.write("\n")


__all__ = [
    "ChecksumMismatch",
    "DecryptionFailed",
    "InvalidKey",
    "KeyRing",
    "MalformedPayload",
    "OpenedPackage",
    "PackageError",
    "UnknownKeyId",
    "write_key_file",
]
