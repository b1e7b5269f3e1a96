"""Times as the APIs and the webhook payload write them."""

from __future__ import annotations

from datetime import UTC, datetime


def as_datetime(seconds: float) -> datetime:
    """Return a Unix time as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, tz=UTC)


def iso_utc(seconds: float) -> str:
    """Return a Unix time as ISO 8601 UTC to the second: 2026-12-04T10:00:00Z."""
    return as_datetime(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")
