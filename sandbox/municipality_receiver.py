"""A municipality webhook receiver for the sandbox and the tests.

Verification, replay detection and decryption are the municipality kit's
(``municipality_kit.receiver.ReferenceReceiver``), so the sandbox exercises
exactly what a municipality runs. On top of that this receiver keeps what it
received in memory, records every request, and can be set to fail or to
respond slowly, so tests can provoke the sender's retries and timeouts.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from journey.package import PrivateKey, SuiteName, decode_private_key
from municipality_kit.decrypt import KeyRing, OpenedPackage, _Key
from municipality_kit.receiver import (
    DUPLICATE,
    MAX_WEBHOOK_BYTES,
    RECEIVED,
    Outcome,
    ReferenceReceiver,
    create_receiver_app,
)
from municipality_kit.verify import DeliveryVerifier, MemorySeenIds

logger = logging.getLogger(__name__)

DEFAULT_WAIT_SECONDS = 30.0
"""How long ``wait_for`` waits before a test fails instead of hanging."""

__all__ = [
    "MAX_WEBHOOK_BYTES",
    "MunicipalityReceiver",
    "ReceivedDelivery",
    "RecordedRequest",
    "start_receiver",
]


@dataclass(frozen=True, slots=True)
class ReceivedDelivery:
    """One delivery that verified, decrypted and matched its checksum."""

    webhook_id: str
    case_ref: str
    municipality_code: str
    plaintext: bytes
    consent: list[dict[str, Any]]
    sources: dict[str, list[str]]
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as it arrived, with the status the receiver returned."""

    webhook_id: str
    headers: dict[str, str]
    body: bytes
    status: int


class _AnyKeyIdRing(KeyRing):
    # The sandbox has one key and does not know the key id the registry
    # gives it, so it tries that key for every key id.
    def __init__(self, suite: SuiteName, private_key: PrivateKey) -> None:
        super().__init__()
        self._only = _Key(suite, private_key)

    def _key_for(self, key_id: str) -> _Key | None:
        return self._only


@dataclass
class MunicipalityReceiver:
    """Receives webhook deliveries through the kit and records them.

    Args:
        secret: the Standard Webhooks signing secret (``whsec_...``), or all
            secrets accepted during a rotation.
        private_key: the HPKE private key, parsed or as URL-safe base64.
        suite: the HPKE suite of the key.
    """

    secret: str | Sequence[str]
    private_key: PrivateKey | str
    suite: SuiteName = SuiteName.X25519
    slow_seconds: float = 0.0
    """Delay before every response, to provoke the sender's timeout."""
    gate: asyncio.Event | None = None
    """When given, every request waits until this event is set, so a test
    decides when the sender's requests end."""
    fail_ratio: float = 0.0
    """Share of requests rejected with 500 without processing, drawn from ``rng``."""
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    deliveries: list[ReceivedDelivery] = field(default_factory=list)
    duplicates: int = 0
    """Requests whose webhook-id was already processed."""
    rejected: list[str] = field(default_factory=list)
    """Error code of each rejected request (``invalid_signature``, ...)."""
    attempts: list[str] = field(default_factory=list)
    """The webhook-id of every request, in arrival order, failed ones too."""
    requests: list[RecordedRequest] = field(default_factory=list)
    overlaps: int = 0
    """Requests that arrived while another with the same webhook-id was open."""
    _fail_remaining: int = 0
    _fail_status: int = 500
    _fail_headers: dict[str, str] = field(default_factory=dict)
    _open_ids: set[str] = field(default_factory=set)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def __post_init__(self) -> None:
        if isinstance(self.private_key, str):
            self.private_key = decode_private_key(self.private_key, self.suite)
        secrets = [self.secret] if isinstance(self.secret, str) else list(self.secret)
        self.seen_ids = MemorySeenIds()
        self.kit = ReferenceReceiver(
            DeliveryVerifier(secrets, seen=self.seen_ids),
            _AnyKeyIdRing(self.suite, self.private_key),
        )

    def fail_next(
        self, count: int, status: int = 500, headers: dict[str, str] | None = None
    ) -> None:
        """Return ``status`` for the next ``count`` requests without processing them."""
        self._fail_remaining = count
        self._fail_status = status
        self._fail_headers = dict(headers or {})

    async def wait_for(
        self, count: int, *, wait_seconds: float = DEFAULT_WAIT_SECONDS
    ) -> list[ReceivedDelivery]:
        """Wait until ``count`` deliveries arrived and return them.

        Raises:
            TimeoutError: fewer arrived within ``wait_seconds``.
        """
        await self.wait_until(
            lambda: len(self.deliveries) >= count, wait_seconds=wait_seconds
        )
        return list(self.deliveries)

    async def wait_for_attempts(
        self, count: int, *, wait_seconds: float = DEFAULT_WAIT_SECONDS
    ) -> list[str]:
        """Wait until ``count`` requests arrived, whatever their outcome."""
        await self.wait_until(
            lambda: len(self.attempts) >= count, wait_seconds=wait_seconds
        )
        return list(self.attempts)

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        *,
        wait_seconds: float = DEFAULT_WAIT_SECONDS,
    ) -> None:
        """Wait until ``predicate()`` is true; it is checked after every change.

        Raises:
            TimeoutError: it stayed false for ``wait_seconds``.
        """
        async with asyncio.timeout(wait_seconds), self._changed:
            await self._changed.wait_for(predicate)

    async def handle(self, request: web.Request) -> web.Response:
        """Process one webhook request."""
        body = await request.read()
        headers = dict(request.headers)
        webhook_id = request.headers.get("webhook-id", "")
        overlapping = webhook_id in self._open_ids
        self._open_ids.add(webhook_id)
        try:
            await self._note(lambda: self._count_attempt(webhook_id, overlapping))
            if self.slow_seconds:
                await asyncio.sleep(self.slow_seconds)
            if self.gate is not None:
                await self.gate.wait()
            response = await self._answer(body, headers)
        finally:
            if not overlapping:
                self._open_ids.discard(webhook_id)
        recorded = RecordedRequest(webhook_id, headers, body, response.status)
        await self._note(lambda: self.requests.append(recorded))
        return response

    async def _answer(self, body: bytes, headers: dict[str, str]) -> web.Response:
        if self._fail_remaining > 0:
            self._fail_remaining -= 1
            return web.json_response(
                {"code": "configured_failure", "message": "configured to fail"},
                status=self._fail_status,
                headers=self._fail_headers,
            )
        if self.fail_ratio and self.rng.random() < self.fail_ratio:
            return web.json_response(
                {"code": "random_failure", "message": "configured to fail"},
                status=500,
            )

        outcome = await self.kit.receive(body, headers)
        await self._note(lambda: self._record(outcome))
        return outcome.response()

    def _count_attempt(self, webhook_id: str, overlapping: bool) -> None:
        self.attempts.append(webhook_id)
        if overlapping:
            self.overlaps += 1

    def _record(self, outcome: Outcome) -> None:
        if outcome.code == DUPLICATE:
            self.duplicates += 1
        elif outcome.code == RECEIVED and outcome.package is not None:
            self.deliveries.append(_received(outcome, outcome.package))
        else:
            self.rejected.append(outcome.code)

    async def _note(self, change: Callable[[], object]) -> None:
        async with self._changed:
            change()
            self._changed.notify_all()


def _received(outcome: Outcome, package: OpenedPackage) -> ReceivedDelivery:
    return ReceivedDelivery(
        webhook_id=outcome.webhook_id,
        case_ref=package.case_ref,
        municipality_code=package.municipality_code,
        plaintext=package.plaintext,
        consent=package.consent,
        sources=package.sources,
        payload=outcome.payload,
    )


async def start_receiver(
    *,
    secret: str | Sequence[str],
    private_key: PrivateKey | str,
    suite: SuiteName = SuiteName.X25519,
    host: str = "127.0.0.1",
    port: int = 0,
    path: str = "/webhook",
) -> tuple[web.AppRunner, str, MunicipalityReceiver]:
    """Serve a receiver on ``host`` and return its runner, webhook URL and state.

    Port 0 lets the kernel choose a free port. Stop it with
    ``await runner.cleanup()``.
    """
    receiver = MunicipalityReceiver(secret=secret, private_key=private_key, suite=suite)
    app = create_receiver_app(receiver.handle, path=path)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    authority = f"[{bound_host}]" if ":" in bound_host else bound_host
    url = f"http://{authority}:{bound_port}{path}"
    logger.info("municipality receiver started url=%s", url)
    return runner, url, receiver
