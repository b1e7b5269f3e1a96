"""The Redis key layout, in one place.

Every key of a case carries the case id as a hash tag (``{...}``), so all keys
of one case live in one Redis Cluster slot and a Lua script may touch them
together. Keys that index a case from outside (a chat, a QR page) hold only
the case id and are read before the case's own keys.

Every key has a TTL; the lifetimes below are the defaults and the reason for
each. Callers may pass shorter or longer values from configuration.
"""

from __future__ import annotations

PREFIX = "gv"

INVITATION_TTL_SECONDS = 21 * 24 * 3600
"""A case lives as long as its invitation: the last reminder goes out on day 14,
and the client then has another week to finish."""

TOMBSTONE_TTL_SECONDS = 28 * 24 * 3600
"""A finished case is kept as a tombstone for four weeks, long enough to stop
late reminders and duplicate deliveries, with no personal data in it."""

PAIRING_TTL_SECONDS = 10 * 60
"""A QR code or app link can be claimed for ten minutes (RFC 8628 suggests a
short lifetime for user codes)."""

APP_SESSION_TTL_SECONDS = 60 * 60
"""The app's session after a claim: fetching all sources, the partner's too,
takes well under an hour."""

PACKAGE_TTL_SECONDS = 24 * 3600
"""The encrypted package waits at most a day for consent, then it is gone."""

EVENT_STREAM_TTL_SECONDS = 7 * 24 * 3600
"""The event stream expires a week after its last event; a bot that is down
longer than that has lost more than events."""

EVENT_STREAM_MAX_LENGTH = 100_000
"""Approximate cap on stored events; acknowledged events are trimmed first."""


def case(case_id: str) -> str:
    """Hash with the case's fields (see ``journey.model.Case``)."""
    return f"{PREFIX}:{{{case_id}}}:case"


def pairing(case_id: str) -> str:
    """Hash with the case's current pairing: code hash, page id, status."""
    return f"{PREFIX}:{{{case_id}}}:pairing"


def app_session(case_id: str) -> str:
    """Hash with the hash of the app session token given at the claim."""
    return f"{PREFIX}:{{{case_id}}}:session"


def package(case_id: str) -> str:
    """Hash with the HPKE ciphertext of the data package and its metadata."""
    return f"{PREFIX}:{{{case_id}}}:package"


def chat(chat_id: int) -> str:
    """String with the id of the open case linked to a Telegram chat."""
    return f"{PREFIX}:chat:{{{chat_id}}}"


def pairing_page(page_id: str) -> str:
    """String with the case id behind a QR web page id."""
    return f"{PREFIX}:page:{{{page_id}}}"


def events() -> str:
    """Stream of events from the pairing service to the bot."""
    return f"{PREFIX}:events"


def deliveries() -> str:
    """Stream of deliveries waiting for a delivery worker."""
    return f"{PREFIX}:deliveries"


def delivery(delivery_id: str) -> str:
    """Hash with one delivery's state and attempt count (no personal data)."""
    return f"{PREFIX}:delivery:{{{delivery_id}}}"


def dead_letters() -> str:
    """List of deliveries that failed for good (metadata only)."""
    return f"{PREFIX}:dead-letters"


DELIVERY_RECORD_TTL_SECONDS = 7 * 24 * 3600
"""A delivery's record outlives its last retry (well under a day) by a week, so
support can still look up how a delivery ended. It contains ids and counts only."""

DELIVERY_QUEUE_TTL_SECONDS = 7 * 24 * 3600
"""The delivery stream and the retry schedule expire a week after their last
write, long after every delivery in them was sent or given up."""

DEAD_LETTER_TTL_SECONDS = 28 * 24 * 3600
"""Failed deliveries stay listed for support as long as the case's tombstone."""


def delivery_schedule() -> str:
    """Sorted set of delivery ids scored by the time of their next attempt."""
    return f"{PREFIX}:delivery-schedule"


def claim_failures(case_id: str) -> str:
    """Counter of claims with a wrong code for the case, to slow brute force."""
    return f"{PREFIX}:{{{case_id}}}:claim-failures"


def rate_limit(scope: str, subject: str) -> str:
    """Counter of requests in one rate-limit window (``subject`` is a hash)."""
    return f"{PREFIX}:rate:{scope}:{{{subject}}}"
