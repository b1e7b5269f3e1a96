"""Delivery of updates to the webhook that the bot set, with retries."""

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp

from .dispatch import call_method
from .params import Params
from .state import EmulatorState, PendingUpdate, WebhookConfig

logger = logging.getLogger(__name__)

# Header that carries setWebhook's secret_token.
# Source: core.telegram.org/bots/api#setwebhook.
SECRET_TOKEN_HEADER = "X-Telegram-Bot-Api-Secret-Token"

# Seconds that one delivery may take before it counts as failed.
WEBHOOK_REQUEST_TIMEOUT = 30.0


class WebhookDeliverer:
    """Posts pending updates to the webhook one at a time, in order.

    An update stays pending until the webhook responds with a 2xx status. After a
    failure the deliverer waits, doubling the delay up to the configured maximum,
    or retries at once when the webhook is changed.
    NOTE: Telegram delivers over up to max_connections connections at once; the
    emulator uses one, so updates always arrive in order.
    """

    def __init__(self, state: EmulatorState) -> None:
        self._state = state
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the delivery loop in the background."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=WEBHOOK_REQUEST_TIMEOUT)
        )
        self._task = asyncio.create_task(self._run(), name="telegram-emulator-webhook")

    async def stop(self) -> None:
        """Stop the delivery loop and close its HTTP session."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        state = self._state
        delay = state.config.webhook_retry_delay
        while not state.closing:
            webhook = state.webhook
            if webhook is None or not state.updates:
                await state.updates_changed.wait(3600.0)
                continue

            update = state.updates[0]
            if await self._post(webhook, update):
                state.confirm_updates(update.update_id + 1)
                delay = state.config.webhook_retry_delay
                continue

            await state.webhook_changed.wait(delay)
            delay = min(delay * 2, state.config.webhook_max_retry_delay)

    async def _post(self, webhook: WebhookConfig, update: PendingUpdate) -> bool:
        assert self._session is not None
        headers = {}
        if webhook.secret_token:
            headers[SECRET_TOKEN_HEADER] = webhook.secret_token
        try:
            async with self._session.post(
                webhook.url, json=update.to_json(), headers=headers
            ) as response:
                body = await response.read()
                if 200 <= response.status < 300:
                    self._state.counters["webhook_deliveries"] += 1
                    await self._run_reply(webhook, body)
                    return True
                error = (
                    "Wrong response from the webhook: "
                    f"{response.status} {response.reason}"
                )
        except TimeoutError:
            error = "Read timeout expired"
        except aiohttp.ClientError as exc:
            error = f"Connection failed: {exc.__class__.__name__}"

        webhook.last_error_date = int(time.time())
        webhook.last_error_message = error
        self._state.counters["webhook_failures"] += 1
        logger.warning(
            "webhook delivery failed, will retry update_id=%s error=%s",
            update.update_id,
            error,
        )
        return False

    async def _run_reply(self, webhook: WebhookConfig, body: bytes) -> None:
        """Run a method call sent as the webhook's response body, as Telegram allows."""
        try:
            reply: Any = json.loads(body) if body else None
        except ValueError:
            return
        if not isinstance(reply, dict) or not isinstance(reply.get("method"), str):
            return
        method = reply.pop("method")

        async def load_params() -> Params:
            return Params(reply)

        status, _ = await call_method(self._state, webhook.token, method, load_params)
        logger.debug("webhook reply method run method=%s status=%s", method, status)
