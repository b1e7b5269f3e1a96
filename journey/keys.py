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


CHAT_LANGUAGE_TTL_SECONDS = INVITATION_TTL_SECONDS
"""A language chosen with /taal before a case exists waits as long as an
invitation does; the first case of the chat takes it over and deletes the key."""


def chat_language(chat_id: int) -> str:
    """String with the language a chat without a case chose (``nl`` or ``en``)."""
    return f"{PREFIX}:chat-language:{{{chat_id}}}"


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


ENDPOINT_DISABLED_TTL_SECONDS = 7 * 24 * 3600
"""A webhook endpoint that returned ``410 Gone`` stays disabled for a week
unless an operator re-enables it sooner. After that the next delivery tries it
again, so a forgotten flag cannot block a municipality for good."""


def endpoint_disabled(municipality_code: str) -> str:
    """Hash that marks a municipality's webhook endpoint as disabled, and why."""
    return f"{PREFIX}:endpoint-disabled:{{{municipality_code}}}"


def claim_failures(case_id: str) -> str:
    """Counter of claims with a wrong code for the case, to slow brute force."""
    return f"{PREFIX}:{{{case_id}}}:claim-failures"


def rate_limit(scope: str, subject: str) -> str:
    """Counter of requests in one rate-limit window (``subject`` is a hash)."""
    return f"{PREFIX}:rate:{scope}:{{{subject}}}"


REMINDER_QUEUE_TTL_SECONDS = INVITATION_TTL_SECONDS + 24 * 3600
"""The reminder queues expire a day after the longest case could still need
them; every write renews the TTL, so they only lapse when no case is open."""

REMINDER_STATE_TTL_SECONDS = INVITATION_TTL_SECONDS + 24 * 3600
"""A case's reminder marks outlive the case by a day, so a mark is never gone
while its case could still get that reminder again."""


def reminders_due() -> str:
    """Sorted set of ``<case_id>:<kind>`` members scored by their due Unix time."""
    return f"{PREFIX}:{{reminders}}:due"


def reminders_claimed() -> str:
    """Sorted set of claimed reminders scored by the end of the claim's lease."""
    return f"{PREFIX}:{{reminders}}:claimed"


def reminder_state(case_id: str) -> str:
    """Hash with a case's reminder marks and its paused and blocked flags."""
    return f"{PREFIX}:{{{case_id}}}:reminders"


def telegram_global_rate() -> str:
    """String with the bot's next free send time (GCRA), shared by all processes."""
    return f"{PREFIX}:{{telegram}}:rate"


def telegram_pause() -> str:
    """String that exists while Telegram's ``retry_after`` pauses every send."""
    return f"{PREFIX}:{{telegram}}:pause"


def telegram_chat_rate(chat_digest: str) -> str:
    """String with one chat's next free send time (GCRA).

    ``chat_digest`` is a keyed hash of the chat id, so the key names no user.
    The chat keys share the ``{telegram}`` hash tag with the global keys, so
    one Lua script checks every limit of a message at once in Redis Cluster.
    """
    return f"{PREFIX}:{{telegram}}:chat:{chat_digest}"


def telegram_group_window(chat_digest: str) -> str:
    """Sorted set of one group's recent send times, scored in milliseconds."""
    return f"{PREFIX}:{{telegram}}:group:{chat_digest}"


TYPED_CODE_INDEX_TTL_SECONDS = 40 * 60
"""Default lifetime of a typed code's index entry: the code's 10 minutes plus
the 30 minutes that a pairing is kept after expiry, so a late entry still
finds the case and gets "code expired". The service passes its own sum when
``PAIRING_TTL_SECONDS`` differs."""


def typed_code(selector_digest: str) -> str:
    """String with the case id behind a typed pairing code.

    ``selector_digest`` is an HMAC of the code's first half, so the typed code
    itself never appears in Redis.
    """
    return f"{PREFIX}:typed:{{{selector_digest}}}"


SUPPORT_TIMEOUTS_TTL_SECONDS = 2 * 24 * 3600
"""The set of pending help requests expires two days after its last write;
every member is due within the takeover timeout, at most a day."""


def support_topic(group_id: int, thread_id: int) -> str:
    """String with the case id behind a topic of the support group.

    Its TTL is the case's remaining lifetime, so it never outlives the case.
    """
    return f"{PREFIX}:support-topic:{{{group_id}:{thread_id}}}"


def support_timeouts() -> str:
    """Sorted set of case ids with a help request, scored by its takeover deadline."""
    return f"{PREFIX}:{{support}}:timeouts"
