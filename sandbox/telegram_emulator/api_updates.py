"""Bot API methods that hand updates to the bot: getUpdates and the webhook methods."""

import asyncio
import ipaddress
import logging
from typing import Any
from urllib.parse import urlsplit

from . import limits
from .errors import bad_request, conflict
from .methods import CallContext, Described, bot_method
from .params import Params
from .state import EmulatorState, WebhookConfig
from .validation import webhook_secret_token

logger = logging.getLogger(__name__)

_WEBHOOK_ACTIVE = (
    "can't use getUpdates method while webhook is active; "
    "use deleteWebhook to delete the webhook first"
)
_TERMINATED = (
    "terminated by other getUpdates request; "
    "make sure that only one bot instance is running"
)


def _apply_allowed_updates(state: EmulatorState, params: Params) -> None:
    """Store allowed_updates when given; an empty list restores the default set."""
    allowed = params.json_value(
        "allowed_updates", "can't parse allowed updates JSON object"
    )
    if allowed is None:
        return
    if not isinstance(allowed, list) or not all(
        isinstance(kind, str) for kind in allowed
    ):
        raise bad_request("allowed updates must be an Array of String")
    state.allowed_updates = frozenset(allowed) if allowed else None


@bot_method("getUpdates")
async def get_updates(ctx: CallContext, params: Params) -> list[dict[str, Any]]:
    """Return pending updates, waiting up to ``timeout`` seconds for one.

    See core.telegram.org/bots/api#getupdates. An offset confirms every earlier
    update. A newer getUpdates call ends a waiting one with 409 Conflict, as
    Telegram does when two bot instances poll with one token.
    """
    state = ctx.state
    if state.webhook is not None:
        raise conflict(_WEBHOOK_ACTIVE)

    offset = params.integer("offset")
    if offset:
        state.confirm_updates(offset)
    limit = min(
        max(params.integer("limit") or limits.MAX_GET_UPDATES_LIMIT, 1),
        limits.MAX_GET_UPDATES_LIMIT,
    )
    timeout = max(params.number("timeout") or 0.0, 0.0)
    _apply_allowed_updates(state, params)

    state.poll_generation += 1
    generation = state.poll_generation
    state.updates_changed.notify()

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not state.updates and not state.closing:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        await state.updates_changed.wait(remaining)
        if state.poll_generation != generation:
            raise conflict(_TERMINATED)
        if state.webhook is not None:
            raise conflict(_WEBHOOK_ACTIVE)
    return [update.to_json() for update in state.updates[:limit]]


def _check_webhook_url(url: str) -> None:
    """Accept only http(s) URLs on this machine, so tests never send updates elsewhere.

    Raises:
        BotApiError: 400 for another scheme or a host that is not loopback.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad_request(
            "bad webhook: An HTTP or HTTPS URL must be provided for webhook"
        )
    host = parts.hostname
    if host == "localhost":
        return
    try:
        is_loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        is_loopback = False
    if not is_loopback:
        # Telegram needs a public HTTPS URL; the emulator allows loopback only.
        raise bad_request(
            "bad webhook: the emulator delivers webhooks only to loopback "
            "addresses (127.0.0.0/8, ::1, localhost)"
        )


def _delete_webhook(state: EmulatorState, params: Params) -> Described:
    if params.boolean("drop_pending_updates"):
        state.drop_pending_updates()
    if state.webhook is None:
        return Described(True, "Webhook is already deleted")
    state.webhook = None
    state.webhook_changed.notify()
    logger.info("webhook deleted")
    return Described(True, "Webhook was deleted")


@bot_method("setWebhook")
async def set_webhook(ctx: CallContext, params: Params) -> Described:
    """Start delivering updates to a loopback URL.

    See core.telegram.org/bots/api#setwebhook.
    An empty URL deletes the webhook, as in Telegram.
    """
    state = ctx.state
    url = (params.string("url") or "").strip()
    if not url:
        return _delete_webhook(state, params)
    _check_webhook_url(url)
    secret_token = webhook_secret_token(params)
    max_connections = (
        params.integer("max_connections") or limits.DEFAULT_WEBHOOK_CONNECTIONS
    )
    max_connections = min(
        max(max_connections, limits.MIN_WEBHOOK_CONNECTIONS),
        limits.MAX_WEBHOOK_CONNECTIONS,
    )
    _apply_allowed_updates(state, params)
    if params.boolean("drop_pending_updates"):
        state.drop_pending_updates()

    previous = state.webhook
    state.webhook = WebhookConfig(
        url=url,
        token=ctx.token,
        secret_token=secret_token,
        max_connections=max_connections,
        ip_address=params.string("ip_address") or None,
    )
    state.webhook_changed.notify()
    # Wake a waiting getUpdates (it ends with 409) and the delivery loop.
    state.updates_changed.notify()
    if (
        previous is not None
        and previous.url == url
        and previous.secret_token == secret_token
    ):
        return Described(True, "Webhook is already set")
    logger.info("webhook set url=%s", url)
    return Described(True, "Webhook was set")


@bot_method("deleteWebhook")
async def delete_webhook(ctx: CallContext, params: Params) -> Described:
    """Stop webhook delivery; see core.telegram.org/bots/api#deletewebhook."""
    return _delete_webhook(ctx.state, params)


@bot_method("getWebhookInfo")
async def get_webhook_info(ctx: CallContext, params: Params) -> dict[str, Any]:
    """Describe the webhook; see core.telegram.org/bots/api#getwebhookinfo."""
    state = ctx.state
    info: dict[str, Any] = {
        "url": "",
        "has_custom_certificate": False,
        "pending_update_count": len(state.updates),
    }
    webhook = state.webhook
    if webhook is None:
        return info
    info["url"] = webhook.url
    info["max_connections"] = webhook.max_connections
    if webhook.ip_address:
        info["ip_address"] = webhook.ip_address
    if state.allowed_updates is not None:
        info["allowed_updates"] = sorted(state.allowed_updates)
    if webhook.last_error_date is not None:
        info["last_error_date"] = webhook.last_error_date
        info["last_error_message"] = webhook.last_error_message
    return info
