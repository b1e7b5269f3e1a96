"""Security headers on every response, and the content policy of the HTML pages."""

from __future__ import annotations

import secrets

from aiohttp import web

API_CONTENT_SECURITY_POLICY = "default-src 'none'; frame-ancestors 'none'"
"""JSON responses load nothing and may not be framed."""


def page_content_security_policy(nonce: str) -> str:
    """Return the policy of an HTML page whose inline style and script carry ``nonce``.

    The page may fetch its own status (``connect-src 'self'``) and nothing else.
    """
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src 'nonce-{nonce}'",
            f"style-src 'nonce-{nonce}'",
            "connect-src 'self'",
            "img-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


def new_nonce() -> str:
    """Return a fresh nonce for one page's content policy."""
    return secrets.token_urlsafe(16)


async def add_security_headers(
    _request: web.Request, response: web.StreamResponse
) -> None:
    """Set the headers that every response carries, unless a handler set them.

    Nothing is cached (responses carry tokens, codes or live status), no
    referrer leaves a page (its URL is a secret) and no type is sniffed.
    """
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Cache-Control", "no-store")
    headers.setdefault("Content-Security-Policy", API_CONTENT_SECURITY_POLICY)
