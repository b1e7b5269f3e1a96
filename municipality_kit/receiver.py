"""A reference webhook receiver for municipalities, on aiohttp.

For each request it checks the signature, the timestamp and the
``webhook-id`` (``municipality_kit.verify``), decrypts the package
(``municipality_kit.decrypt``) and hands it to the municipality's own
processing. Each response tells the sender what to do next:

- 200 ``received``: processed. 200 ``duplicate``: the id was processed before,
  so the sender stops retrying and nothing is processed twice.
- 400 or 401: the request is malformed, unsigned or outside the time window.
- 422: the package does not open with the receiver's keys.
- 500: the municipality's processing raised. The sender retries later with the
  same ``webhook-id``.

Errors are JSON ``{"code", "message"}``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from municipality_kit.decrypt import KeyRing, OpenedPackage, PackageError
from municipality_kit.verify import (
    DeliveryVerifier,
    MalformedRequest,
    RejectedRequest,
    ReplayedRequest,
)

logger = logging.getLogger(__name__)

MAX_WEBHOOK_BYTES = 8 * 1024 * 1024
"""A 4 MiB package grows by a third in base64, plus the JSON around it."""

RECEIVED = "received"
DUPLICATE = "duplicate"
"""Outcome codes of an accepted request; a rejection carries its error code."""

Processor = Callable[[str, OpenedPackage], Awaitable[None]]
"""The municipality's processing of a decrypted package, given its webhook-id."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The receiver's response to one request."""

    status: int
    code: str
    """``received``, ``duplicate`` or the error code of the rejection."""
    message: str
    webhook_id: str
    package: OpenedPackage | None = None
    payload: Any = None

    def response(self) -> web.Response:
        """Return the HTTP response for this outcome."""
        if self.status == 200:
            return web.json_response({"status": self.code})
        return web.json_response(
            {"code": self.code, "message": self.message}, status=self.status
        )


async def _no_processing(_webhook_id: str, _package: OpenedPackage) -> None:
    return None


class ReferenceReceiver:
    """Verify, deduplicate and decrypt deliveries, then process each once.

    Args:
        verifier: checks signature, timestamp and replays.
        keyring: the private keys of every ``key_id`` still in use.
        process: the municipality's own processing; when it raises, the
            request fails with 500 and the id is released for the retry.
    """

    def __init__(
        self,
        verifier: DeliveryVerifier,
        keyring: KeyRing,
        *,
        process: Processor = _no_processing,
    ) -> None:
        self._verifier = verifier
        self._keyring = keyring
        self._process = process

    async def receive(self, body: bytes, headers: Mapping[str, str]) -> Outcome:
        """Check, decrypt and process one request; return the response to send."""
        webhook_id = next(
            (value for name, value in headers.items() if name.lower() == "webhook-id"),
            "",
        )
        try:
            verified = self._verifier.verify(body, headers)
        except ReplayedRequest as error:
            logger.info("webhook duplicate webhook_id=%s", webhook_id)
            return Outcome(200, DUPLICATE, str(error), webhook_id)
        except MalformedRequest as error:
            logger.warning("webhook rejected reason=%s", error.code)
            return Outcome(400, error.code, str(error), webhook_id)
        except RejectedRequest as error:
            logger.warning("webhook rejected reason=%s", error.code)
            return Outcome(401, error.code, str(error), webhook_id)

        try:
            opened = self._keyring.open(verified.payload)
        except PackageError as error:
            self._verifier.release(webhook_id)
            logger.warning(
                "webhook rejected reason=%s webhook_id=%s", error.code, webhook_id
            )
            return Outcome(422, error.code, str(error), webhook_id)

        try:
            await self._process(webhook_id, opened)
        except Exception:
            self._verifier.release(webhook_id)
            logger.exception("delivery processing failed webhook_id=%s", webhook_id)
            return Outcome(
                500, "processing_failed", "processing failed", webhook_id, opened
            )
        logger.info(
            "delivery received case=%s webhook_id=%s", opened.case_ref, webhook_id
        )
        return Outcome(200, RECEIVED, "", webhook_id, opened, payload=verified.payload)

    async def handle(self, request: web.Request) -> web.Response:
        """The aiohttp handler: ``receive`` the request and answer it."""
        body = await request.read()
        outcome = await self.receive(body, request.headers)
        return outcome.response()


def create_receiver_app(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    *,
    path: str = "/webhook",
) -> web.Application:
    """Return an aiohttp application that serves ``handler`` at ``POST path``."""
    app = web.Application(client_max_size=MAX_WEBHOOK_BYTES)
    app.router.add_post(path, handler)
    return app
