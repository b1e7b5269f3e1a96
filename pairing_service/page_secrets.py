"""Keeping a pairing code readable for its QR page without storing it in the clear.

The QR page must draw the code, but Redis may hold only the code's hash. So the
page id in the page's URL is a secret too: Redis stores the page under a
lookup id derived from it, and the code encrypted with a key derived from it.
Read access to Redis reveals neither the page id nor the code. The page URL
is enough to show the QR, which is what the URL is for.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PAGE_ID_BYTES = 16
"""128 random bits, like every other secret of the service."""

_PAGE_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")
_NONCE_BYTES = 12
"""AES-GCM's standard nonce length (NIST SP 800-38D)."""
_LOOKUP_INFO = b"gv-pairing-page/1 lookup"
_KEY_INFO = b"gv-pairing-page/1 code key"


def new_page_id() -> str:
    """Return a new random page id (22 URL-safe characters)."""
    return secrets.token_urlsafe(PAGE_ID_BYTES)


def is_page_id(text: str) -> bool:
    """Tell whether ``text`` has the form of a page id."""
    return bool(_PAGE_ID_PATTERN.fullmatch(text))


def page_lookup_id(page_id: str) -> str:
    """Return the id under which Redis stores the page (one-way from the page id)."""
    return _derive(page_id, _LOOKUP_INFO).hex()[:32]


def seal_code(page_id: str, code: str) -> str:
    """Encrypt a pairing code with the page's key; returns URL-safe base64."""
    nonce = secrets.token_bytes(_NONCE_BYTES)
    sealed = AESGCM(_derive(page_id, _KEY_INFO)).encrypt(
        nonce, code.encode("ascii"), page_lookup_id(page_id).encode("ascii")
    )
    return base64.urlsafe_b64encode(nonce + sealed).decode("ascii")


def open_code(page_id: str, sealed_text: str) -> str | None:
    """Decrypt a pairing code sealed by ``seal_code``; None if it does not open."""
    try:
        raw = base64.urlsafe_b64decode(sealed_text)
        plain = AESGCM(_derive(page_id, _KEY_INFO)).decrypt(
            raw[:_NONCE_BYTES],
            raw[_NONCE_BYTES:],
            page_lookup_id(page_id).encode("ascii"),
        )
    except (InvalidTag, ValueError, binascii.Error):
        return None
    return plain.decode("ascii")


def _derive(page_id: str, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
        page_id.encode("ascii")
    )
