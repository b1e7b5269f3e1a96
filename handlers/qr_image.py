"""The QR code image of an app link, as sent in the QR step's photo message."""

from __future__ import annotations

import io

import segno

QR_ERROR_CORRECTION = "m"
"""Level M restores 15% of the symbol: enough for a photo of a screen."""

QR_SCALE = 10
"""Pixels per module. An app link of 75 to 86 characters is a version 5 or 6
symbol at level M (37 or 41 modules), so the image with its quiet zone is 450
to 490 pixels wide. A test decodes it after scaling to 320 pixels and JPEG
quality 60, rougher than Telegram's recompression of a photo."""

QR_QUIET_ZONE = 4
"""Light modules around the symbol; ISO/IEC 18004 requires at least four."""


def render_qr_png(app_link: str) -> bytes:
    """Return a PNG image of the QR code for ``app_link``."""
    code = segno.make(app_link, error=QR_ERROR_CORRECTION, micro=False)
    buffer = io.BytesIO()
    code.save(buffer, kind="png", scale=QR_SCALE, border=QR_QUIET_ZONE)
    return buffer.getvalue()
