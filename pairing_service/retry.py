"""When to try a failed webhook delivery again.

Each retry waits a random delay between zero and the schedule's entry for that
retry ("full jitter", as in the AWS Architecture Blog's "Exponential Backoff
And Jitter"), so receivers that come back after an outage are not hit by every
sender at once. A ``Retry-After`` header moves the retry later, never earlier.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime

DEFAULT_RETRY_SCHEDULE: tuple[float, ...] = (
    5,
    30,
    2 * 60,
    10 * 60,
    30 * 60,
    60 * 60,
    2 * 3600,
    4 * 3600,
    8 * 3600,
)
"""Maximum delay before retry 1, 2, ... in seconds: ten attempts within about
16 hours, which covers a receiver's night-long outage and ends well within the
day an encrypted package may wait."""

MAX_RETRY_AFTER_SECONDS = 3600
"""A receiver's ``Retry-After`` is honoured up to an hour; a longer one would
keep the package in Redis past its planned lifetime."""

Jitter = Callable[[float], float]
"""Returns a delay between 0 and the given maximum."""


def full_jitter(maximum: float) -> float:
    """Return a uniformly random delay between 0 and ``maximum`` seconds."""
    return random.uniform(0, maximum)


def retry_delay(
    attempt: int,
    schedule: tuple[float, ...],
    *,
    retry_after: float | None = None,
    jitter: Jitter = full_jitter,
) -> float | None:
    """Return the seconds to wait after failed attempt ``attempt`` (1-based).

    Returns None when the schedule has no retry left. ``retry_after`` is the
    receiver's ``Retry-After`` in seconds; it raises the delay up to
    ``MAX_RETRY_AFTER_SECONDS``.
    """
    if attempt < 1 or attempt > len(schedule):
        return None
    delay = jitter(schedule[attempt - 1])
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
    return delay


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Parse a ``Retry-After`` header (RFC 9110 §10.2.3) into seconds from ``now``.

    The header is either a number of seconds or an HTTP date. Returns None for
    a missing or unreadable header, and 0 for a date in the past.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now)
