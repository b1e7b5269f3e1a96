"""Checking a webhook request: Standard Webhooks signature, timestamp, replay.

The signature check is the ``standardwebhooks`` library's own ``verify``. It
already rejects a timestamp more than five minutes away from the system clock.
This module checks the timestamp first with its own clock, so the caller learns
which of the two checks failed, and then rejects a ``webhook-id`` that was
already processed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

TIMESTAMP_TOLERANCE_SECONDS = 5 * 60
"""Standard Webhooks receivers accept a ``webhook-timestamp`` at most five
minutes from their own time; the ``standardwebhooks`` library (1.3.0) enforces
the same window."""

SEEN_ID_RETENTION_SECONDS = 7 * 24 * 3600
"""How long a processed ``webhook-id`` is remembered. The sender retries a
delivery for about 16 hours, and an operator may redeliver it later with the
same id. The sender keeps its delivery record for a week."""

Clock = Callable[[], float]
"""Returns the current Unix time in seconds."""


class RejectedRequest(Exception):
    """Raised when a webhook request must not be processed.

    ``code`` is a stable short name for logs and for the JSON error body.
    """

    code = "rejected"


class MalformedRequest(RejectedRequest):
    """A Standard Webhooks header is missing or unreadable, or the body is not JSON."""

    code = "malformed_request"


class InvalidSignature(RejectedRequest):
    """No signature in ``webhook-signature`` matches any of the receiver's secrets."""

    code = "invalid_signature"


class TimestampOutOfRange(RejectedRequest):
    """The ``webhook-timestamp`` is more than the tolerance away from now."""

    code = "timestamp_out_of_range"


class ReplayedRequest(RejectedRequest):
    """The ``webhook-id`` was already processed (or is being processed)."""

    code = "replayed_id"


class SeenIds(Protocol):
    """A store of processed ``webhook-id`` values, to reject replays."""

    def claim(self, webhook_id: str) -> bool:
        """Record the id; return False when it was already recorded."""
        ...

    def release(self, webhook_id: str) -> None:
        """Forget an id whose processing failed, so a retry can succeed."""
        ...


class MemorySeenIds:
    """Processed ids in this process's memory, each kept for ``retention_seconds``.

    Claims are atomic across threads. A receiver that runs several processes,
    or must survive restarts, needs a shared store with the same two methods
    (for example Redis ``SET NX EX``).
    """

    def __init__(
        self,
        *,
        retention_seconds: float = SEEN_ID_RETENTION_SECONDS,
        clock: Clock = time.time,
    ) -> None:
        self._retention = retention_seconds
        self._clock = clock
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def claim(self, webhook_id: str) -> bool:
        """Record the id; return False when it is already recorded and unexpired."""
        now = self._clock()
        with self._lock:
            expires = self._expiry.get(webhook_id)
            if expires is not None and expires > now:
                return False
            self._expiry[webhook_id] = now + self._retention
            if len(self._expiry) % 1024 == 0:
                self._drop_expired(now)
            return True

    def release(self, webhook_id: str) -> None:
        """Forget an id."""
        with self._lock:
            self._expiry.pop(webhook_id, None)

    def __len__(self) -> int:
        return len(self._expiry)

    def _drop_expired(self, now: float) -> None:
        expired = [key for key, expires in self._expiry.items() if expires <= now]
        for key in expired:
            del self._expiry[key]


class FileSeenIds:
    """Processed ids in a JSON file ``{"<id>": <expiry>}``, for the command line.

    NOTE: two programs that claim at the same moment can both succeed, because
    the file has no lock. A receiver serving requests uses a shared store.
    """

    def __init__(
        self,
        path: Path,
        *,
        retention_seconds: float = SEEN_ID_RETENTION_SECONDS,
        clock: Clock = time.time,
    ) -> None:
        self._path = path
        self._retention = retention_seconds
        self._clock = clock

    def claim(self, webhook_id: str) -> bool:
        """Record the id in the file; return False when it is already there."""
        now = self._clock()
        recorded = {
            key: expires for key, expires in self._read().items() if expires > now
        }
        if webhook_id in recorded:
            return False
        recorded[webhook_id] = now + self._retention
        self._write(recorded)
        return True

    def release(self, webhook_id: str) -> None:
        """Remove the id from the file."""
        recorded = self._read()
        if recorded.pop(webhook_id, None) is not None:
            self._write(recorded)

    def _read(self) -> dict[str, float]:
        try:
            document: Any = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        if not isinstance(document, dict):
            raise ValueError(f"{self._path}: expected a JSON object of ids")
        return {str(key): float(value) for key, value in document.items()}

    def _write(self, recorded: dict[str, float]) -> None:
        partial = self._path.with_name(self._path.name + ".partial")
        partial.write_text(json.dumps(recorded), encoding="utf-8")
        partial.replace(self._path)


@dataclass(frozen=True, slots=True)
class VerifiedRequest:
    """A request whose signature, timestamp and id passed every check."""

    webhook_id: str
    timestamp: int
    payload: Any
    """The JSON body, parsed."""


class DeliveryVerifier:
    """Check webhook requests against the receiver's signing secrets.

    Args:
        secrets: every secret the receiver accepts (``whsec_...``). During a
            rotation it holds the new and the old secret.
        seen: the store of processed ids. Without one, replays are not
            detected.
        clock: the time for the timestamp check. The library's own check
            always uses the system clock as well.
        tolerance_seconds: how far the ``webhook-timestamp`` may be from now.
    """

    def __init__(
        self,
        secrets: Sequence[str],
        *,
        seen: SeenIds | None = None,
        clock: Clock = time.time,
        tolerance_seconds: float = TIMESTAMP_TOLERANCE_SECONDS,
    ) -> None:
        if not secrets:
            raise ValueError("at least one signing secret is required")
        self._webhooks = [Webhook(secret) for secret in secrets]
        self._seen = seen
        self._clock = clock
        self._tolerance = tolerance_seconds

    def verify(self, body: bytes, headers: Mapping[str, str]) -> VerifiedRequest:
        """Check one request and claim its ``webhook-id``.

        Call ``release`` with the id when processing fails afterwards, so the
        sender's retry is not taken for a replay.

        Raises:
            MalformedRequest: a header is missing or unreadable, or the body is
                not JSON.
            TimestampOutOfRange: the timestamp is outside the tolerance.
            InvalidSignature: no signature matches.
            ReplayedRequest: the id was already claimed.
        """
        lowered = {name.lower(): value for name, value in headers.items()}
        webhook_id = lowered.get("webhook-id", "")
        timestamp_text = lowered.get("webhook-timestamp", "")
        if not webhook_id or not lowered.get("webhook-signature"):
            raise MalformedRequest("webhook-id or webhook-signature is missing")
        try:
            timestamp = int(timestamp_text)
        except ValueError:
            raise MalformedRequest(
                f"webhook-timestamp must be Unix seconds, got {timestamp_text!r}"
            ) from None
        offset = timestamp - self._clock()
        if abs(offset) > self._tolerance:
            raise TimestampOutOfRange(
                f"webhook-timestamp is {offset:+.0f} s from now, "
                f"outside ±{self._tolerance:.0f} s"
            )

        payload = self._verify_signature(body, lowered)
        if self._seen is not None and not self._seen.claim(webhook_id):
            raise ReplayedRequest(f"webhook-id {webhook_id} was already processed")
        return VerifiedRequest(webhook_id, timestamp, payload)

    def release(self, webhook_id: str) -> None:
        """Forget a claimed id whose processing failed."""
        if self._seen is not None:
            self._seen.release(webhook_id)

    def _verify_signature(self, body: bytes, headers: dict[str, str]) -> Any:
        for webhook in self._webhooks:
            try:
                webhook.verify(body, headers, json_parse=False)
            except WebhookVerificationError:
                continue
            try:
                return json.loads(body)
            except ValueError as error:
                raise MalformedRequest(f"the body is not JSON: {error}") from None
        raise InvalidSignature("no signature matches the receiver's secrets")
