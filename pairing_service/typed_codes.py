"""The typed pairing code for a client who cannot scan the QR code.

A typed code is 8 letters from ``ALPHABET``, shown as ``XXXX-XXXX``. It is a
split token: the first half (the selector) finds the case through a global
index key, and the second half (the verifier) proves the code. Redis stores
only HMAC-SHA256 digests of both under a server key, because a bare hash of so
small a space is reversed by trying every code.

The split makes "5 wrong attempts per code" possible: a wrong verifier counts
against the code its selector found. A guess succeeds only if its selector is
in use (active codes / 20**4) and its verifier matches (1 / 20**4). A code
locks after ``MAX_TYPED_ATTEMPTS`` wrong verifiers, so a single code is
guessed with a probability of at most 5 / 160,000 over its lifetime.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
"""Consonants only: no vowels means no words, and no 0/O or 1/I confusion."""

CODE_LENGTH = 8
"""8 letters from 20 carry 34.6 bits; the attempt limits make up the rest."""

SELECTOR_LENGTH = 4
"""The first half finds the case; the second half is the secret to check."""

MAX_TYPED_ATTEMPTS = 5
"""Wrong verifiers for one code before it locks; a person who mistypes the
code twice still has three tries left."""

MAX_SELECTOR_TRIES = 10
"""New random selectors tried when the drawn one is in use by another case.
With 1,000 active codes out of 160,000 selectors, 10 tries all collide with a
probability far below one in a billion."""

_SEPARATORS = re.compile(r"[\s\-]+")
_TYPED_PATTERN = re.compile(f"[{ALPHABET}]{{{CODE_LENGTH}}}")
_KEY_INFO = b"gv-typed-code/1 hmac key"


@dataclass(frozen=True, slots=True)
class TypedCode:
    """A typed code in its normalised form: 8 upper-case letters, no dash."""

    letters: str

    @property
    def selector(self) -> str:
        """The first half, which locates the case."""
        return self.letters[:SELECTOR_LENGTH]

    def display(self) -> str:
        """Return the code as the client sees it: ``XXXX-XXXX``."""
        return f"{self.letters[:SELECTOR_LENGTH]}-{self.letters[SELECTOR_LENGTH:]}"


def new_typed_code() -> TypedCode:
    """Return a random typed code drawn with ``secrets``."""
    letters = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
    return TypedCode(letters)


def parse_typed_code(text: str) -> TypedCode | None:
    """Return the typed code in ``text``, or None if it is not one.

    Case, spaces and dashes do not matter, so ``bcdf ghjk`` and ``BCDF-GHJK``
    are the same code.
    """
    letters = _SEPARATORS.sub("", text).upper()
    if not _TYPED_PATTERN.fullmatch(letters):
        return None
    return TypedCode(letters)


def derive_key(service_token: str, configured_secret: str = "") -> bytes:
    """Return the HMAC key of typed codes.

    ``configured_secret`` (``TYPED_CODE_SECRET``) is used when set. Otherwise
    the key is derived from the service token with HKDF-SHA256, so every
    service process that shares the token computes the same digests.
    """
    material = configured_secret or service_token
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO).derive(
        material.encode("utf-8")
    )


def selector_digest(key: bytes, code: TypedCode) -> str:
    """Return the digest that names the code's index key (32 hex characters)."""
    message = b"selector:" + code.selector.encode("ascii")
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def code_digest(key: bytes, code: TypedCode) -> str:
    """Return the digest of the whole code that the pairing stores (64 hex)."""
    message = b"code:" + code.letters.encode("ascii")
    return hmac.new(key, message, hashlib.sha256).hexdigest()
