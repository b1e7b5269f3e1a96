"""A reference webhook receiver for municipalities, and a test double of one.

It shows what a municipality must do with a delivery. It verifies the
Standard Webhooks signature, which also rejects a timestamp more than five
minutes off. It accepts a repeated ``webhook-id`` without processing it
again. It decrypts the package with its private key and checks the SHA-256.
For tests it keeps what it received in memory, and it can be set to fail or
to respond slowly.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidTag
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from journey.package import (
    PrivateKey,
    SuiteName,
    decode_private_key,
    open_sealed,
)

logger = logging.getLogger(__name__)

MAX_WEBHOOK_BYTES = 8 * 1024 * 1024
"""A 4 MiB package grows by a third in base64, plus the JSON around it."""

DEFAULT_WAIT_SECONDS = 30.0
"""How long ``wait_for`` waits before a test fails instead of hanging."""


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


@dataclass
class MunicipalityReceiver:
    """Verifies, deduplicates and decrypts webhook deliveries.

    Args:
        secret: the Standard Webhooks signing secret (``whsec_...``).
        private_key: the HPKE private key, parsed or as URL-safe base64.
        suite: the HPKE suite of the key.
    """

    secret: str
    private_key: PrivateKey | str
    suite: SuiteName = SuiteName.X25519
    slow_seconds: float = 0.0
    """Delay before every response, to provoke the sender's timeout."""
    deliveries: list[ReceivedDelivery] = field(default_factory=list)
    duplicates: int = 0
    """Requests whose webhook-id was already processed."""
    rejected: list[str] = field(default_factory=list)
    """Reason of each rejected request (signature, decryption, ...)."""
    attempts: list[str] = field(default_factory=list)
    """The webhook-id of every request, in arrival order, failed ones too."""
    _fail_remaining: int = 0
    _fail_status: int = 500
    _seen: set[str] = field(default_factory=set)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def __post_init__(self) -> None:
        if isinstance(self.private_key, str):
            self.private_key = decode_private_key(self.private_key, self.suite)
        self._webhook = Webhook(self.secret)

    def fail_next(self, count: int, status: int = 500) -> None:
        """Return ``status`` for the next ``count`` requests without processing them."""
        self._fail_remaining = count
        self._fail_status = status

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
        webhook_id = request.headers.get("webhook-id", "")
        await self._note(lambda: self.attempts.append(webhook_id))
        if self.slow_seconds:
            await asyncio.sleep(self.slow_seconds)

        if self._fail_remaining > 0:
            self._fail_remaining -= 1
            return web.json_response(
                {"error": "configured to fail"}, status=self._fail_status
            )

        try:
            payload = self._webhook.verify(body, dict(request.headers))
        except WebhookVerificationError as error:
            return await self._reject("signature", 401, str(error))

        # Standard Webhooks senders retry with the same id: return success so
        # the sender stops, but do not process the delivery a second time.
        if webhook_id in self._seen:
            await self._note(self._count_duplicate)
            return web.json_response({"status": "duplicate"})

        try:
            received = self._open(webhook_id, payload)
        except (KeyError, TypeError, ValueError) as error:
            return await self._reject("payload", 400, f"malformed payload: {error}")
        except InvalidTag:
            return await self._reject("decryption", 422, "the package does not decrypt")
        if received is None:
            return await self._reject("checksum", 422, "sha256 or size mismatch")

        self._seen.add(webhook_id)
        await self._note(lambda: self.deliveries.append(received))
        logger.info("delivery received case=%s", received.case_ref)
        return web.json_response({"status": "received"})

    def _open(self, webhook_id: str, payload: Any) -> ReceivedDelivery | None:
        data = payload["data"]
        package = data["package"]
        plaintext = open_sealed(
            base64.b64decode(package["ciphertext"], validate=True),
            private_key=self.private_key,  # type: ignore[arg-type]
            suite=SuiteName(package["suite"]),
            case_ref=data["case_ref"],
            municipality_code=data["municipality_code"],
        )
        digest = hashlib.sha256(plaintext).hexdigest()
        if digest != package["sha256"] or len(plaintext) != package["size"]:
            return None
        return ReceivedDelivery(
            webhook_id=webhook_id,
            case_ref=data["case_ref"],
            municipality_code=data["municipality_code"],
            plaintext=plaintext,
            consent=list(data["consent"]),
            sources=dict(data["sources"]),
            payload=payload,
        )

    def _count_duplicate(self) -> None:
        self.duplicates += 1

    async def _reject(self, reason: str, status: int, message: str) -> web.Response:
        await self._note(lambda: self.rejected.append(reason))
        logger.warning("webhook rejected reason=%s", reason)
        return web.Response(
            text=json.dumps({"error": message}),
            status=status,
            content_type="application/json",
        )

    async def _note(self, change: Callable[[], object]) -> None:
        async with self._changed:
            change()
            self._changed.notify_all()


async def start_receiver(
    *,
    secret: str,
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
    app = web.Application(client_max_size=MAX_WEBHOOK_BYTES)
    app.router.add_post(path, receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    authority = f"[{bound_host}]" if ":" in bound_host else bound_host
    url = f"http://{authority}:{bound_port}{path}"
    logger.info("municipality receiver started url=%s", url)
    return runner, url, receiver
