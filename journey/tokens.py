"""Secret tokens: invitation links, pairing codes, app sessions.

A token is the case id followed by a secret, both 128 random bits in
URL-safe base64. The case id locates the case's keys (and so its Redis
Cluster slot) without a global index; the secret proves the holder's right.
Only a SHA-256 hash of the secret is stored, and hashes are compared in
constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

RANDOM_BYTES = 16
"""128 bits, the minimum for a bearer secret (OWASP ASVS 3.2.2, RFC 8628 §5.1)."""

PART_LENGTH = 22
"""Length of 16 bytes in unpadded URL-safe base64."""

TOKEN_LENGTH = 2 * PART_LENGTH

MIN_SERVICE_TOKEN_LENGTH = 32
"""Shortest service token the bot and the service accept: 32 URL-safe
characters carry 192 bits, well above the 128 bits asked of secrets."""

_PART_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")
_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{44}")


class MalformedToken(ValueError):
    """Raised when a string cannot be a token: wrong length or characters."""


@dataclass(frozen=True, slots=True)
class Token:
    """A parsed token: the case it points to and its secret part."""

    case_id: str
    secret: str

    def __str__(self) -> str:
        return self.case_id + self.secret

    @property
    def secret_hash(self) -> str:
        """Hex SHA-256 of the secret, the only form that is stored."""
        return hash_secret(self.secret)


def new_case_id() -> str:
    """Return a new random case id (128 bits)."""
    return secrets.token_urlsafe(RANDOM_BYTES)


def new_token(case_id: str) -> Token:
    """Return a new token for ``case_id`` with a fresh 128-bit secret."""
    if not _PART_PATTERN.fullmatch(case_id):
        raise MalformedToken("case id must be 22 URL-safe base64 characters")
    return Token(case_id, secrets.token_urlsafe(RANDOM_BYTES))


def parse_token(text: str) -> Token:
    """Split a token into its case id and secret.

    Raises:
        MalformedToken: ``text`` is not 44 URL-safe base64 characters.
    """
    if len(text) != TOKEN_LENGTH or not _TOKEN_PATTERN.fullmatch(text):
        raise MalformedToken("a token is 44 URL-safe base64 characters")
    return Token(text[:PART_LENGTH], text[PART_LENGTH:])


def is_case_id(text: str) -> bool:
    """Tell whether ``text`` has the form of a case id."""
    return bool(_PART_PATTERN.fullmatch(text))


def hash_secret(secret: str) -> str:
    """Return the hex SHA-256 of a secret."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Compare a secret with a stored hash in constant time."""
    return hmac.compare_digest(hash_secret(secret).encode(), stored_hash.encode())


def case_reference(case_id: str) -> str:
    """Return the short reference of a case for logs and support.

    The reference is derived from the case id by a one-way hash, so it can be
    logged and shown to an agent without revealing the id that tokens start with.
    """
    digest = hashlib.blake2s(case_id.encode("ascii"), digest_size=5).hexdigest()
    return f"GV-{digest.upper()}"
