"""Encryption of the data package for the municipality, with HPKE (RFC 9180).

The package is sealed with the municipality's public key the moment it
arrives, so only the municipality can read it. The HPKE ``info`` binds the
ciphertext to the format version, the case reference and the municipality
code: a ciphertext copied into another delivery does not decrypt.

Keys are exchanged as URL-safe base64 of their raw bytes. A hybrid
``MLKEM768_X25519`` key is the ML-KEM-768 key followed by the X25519 key.
"""

from __future__ import annotations

import base64
import enum
import hashlib
from dataclasses import dataclass
from typing import TypeAlias

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

FORMAT_VERSION = "gv-package/1"
"""Version of the package format and of the ``info`` layout."""

MAX_PACKAGE_BYTES = 4 * 1024 * 1024
"""Largest package the app may upload: a full set of government sources for two
people is a few hundred kilobytes, so 4 MiB leaves ample room."""

_X25519_BYTES = 32
_MLKEM768_PUBLIC_BYTES = 1184
_MLKEM768_SEED_BYTES = 64


class SuiteName(enum.StrEnum):
    """The HPKE suites a municipality can choose."""

    X25519 = "X25519"
    """DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM."""
    MLKEM768_X25519 = "MLKEM768_X25519"
    """The post-quantum hybrid ML-KEM-768 + X25519, HKDF-SHA256, AES-256-GCM."""


_SUITES: dict[SuiteName, hpke.Suite] = {
    SuiteName.X25519: hpke.Suite(
        hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM
    ),
    SuiteName.MLKEM768_X25519: hpke.Suite(
        hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM
    ),
}

PublicKey: TypeAlias = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey
PrivateKey: TypeAlias = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey


class InvalidKey(ValueError):
    """Raised when key bytes do not fit the suite."""


@dataclass(frozen=True, slots=True)
class SealedPackage:
    """A package encrypted for one municipality."""

    suite: SuiteName
    key_id: str
    ciphertext: bytes
    sha256: str
    """Hex SHA-256 of the plaintext, for the consent record and the receiver's check."""
    size: int
    """Length of the plaintext in bytes."""


def hpke_info(case_ref: str, municipality_code: str) -> bytes:
    """Return the HPKE ``info`` that binds a ciphertext to its case and municipality."""
    return f"{FORMAT_VERSION}|{case_ref}|{municipality_code}".encode("ascii")


def seal(
    plaintext: bytes,
    *,
    public_key: PublicKey,
    suite: SuiteName,
    key_id: str,
    case_ref: str,
    municipality_code: str,
) -> SealedPackage:
    """Encrypt a package for a municipality's public key."""
    ciphertext = _SUITES[suite].encrypt(
        plaintext, public_key, info=hpke_info(case_ref, municipality_code)
    )
    return SealedPackage(
        suite=suite,
        key_id=key_id,
        ciphertext=ciphertext,
        sha256=hashlib.sha256(plaintext).hexdigest(),
        size=len(plaintext),
    )


def open_sealed(
    ciphertext: bytes,
    *,
    private_key: PrivateKey,
    suite: SuiteName,
    case_ref: str,
    municipality_code: str,
) -> bytes:
    """Decrypt a package; the municipality's side of ``seal``.

    Raises:
        cryptography.exceptions.InvalidTag: wrong key, or the ciphertext or
            its case reference or municipality code was changed.
    """
    return _SUITES[suite].decrypt(
        ciphertext, private_key, info=hpke_info(case_ref, municipality_code)
    )


def decode_public_key(text: str, suite: SuiteName) -> PublicKey:
    """Parse a public key from URL-safe base64.

    Raises:
        InvalidKey: the bytes have the wrong length for ``suite``.
    """
    if suite is SuiteName.X25519:
        raw = _decode_exact(text, _X25519_BYTES, "an X25519 public key")
        return x25519.X25519PublicKey.from_public_bytes(raw)
    raw = _decode_exact(
        text, _MLKEM768_PUBLIC_BYTES + _X25519_BYTES, "an MLKEM768_X25519 public key"
    )
    return hpke.MLKEM768X25519PublicKey(
        mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM768_PUBLIC_BYTES]),
        x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM768_PUBLIC_BYTES:]),
    )


def decode_private_key(text: str, suite: SuiteName) -> PrivateKey:
    """Parse a private key from URL-safe base64.

    Raises:
        InvalidKey: the bytes have the wrong length for ``suite``.
    """
    if suite is SuiteName.X25519:
        raw = _decode_exact(text, _X25519_BYTES, "an X25519 private key")
        return x25519.X25519PrivateKey.from_private_bytes(raw)
    raw = _decode_exact(
        text, _MLKEM768_SEED_BYTES + _X25519_BYTES, "an MLKEM768_X25519 private key"
    )
    return hpke.MLKEM768X25519PrivateKey(
        mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:_MLKEM768_SEED_BYTES]),
        x25519.X25519PrivateKey.from_private_bytes(raw[_MLKEM768_SEED_BYTES:]),
    )


def _decode_exact(text: str, length: int, what: str) -> bytes:
    raw = _unb64(text)
    if len(raw) != length:
        raise InvalidKey(f"{what} is {length} bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A newly generated key pair in its exchange form."""

    suite: SuiteName
    public_key: str
    private_key: str


def generate_key_pair(suite: SuiteName = SuiteName.X25519) -> KeyPair:
    """Generate a key pair and return both halves as URL-safe base64."""
    classical = x25519.X25519PrivateKey.generate()
    if suite is SuiteName.X25519:
        return KeyPair(
            suite,
            _b64(classical.public_key().public_bytes_raw()),
            _b64(classical.private_bytes_raw()),
        )
    lattice = mlkem.MLKEM768PrivateKey.generate()
    public = (
        lattice.public_key().public_bytes_raw()
        + classical.public_key().public_bytes_raw()
    )
    private = lattice.private_bytes_raw() + classical.private_bytes_raw()
    return KeyPair(suite, _b64(public), _b64(private))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as error:
        raise InvalidKey(f"not URL-safe base64: {error}") from None
