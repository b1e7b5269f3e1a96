"""The emulator's aiohttp application: Bot API routes, file downloads, testing API.

Point python-telegram-bot at it with::

    ApplicationBuilder().token(TOKEN).base_url(f"{base_url}/bot").base_file_url(f"{base_url}/file/bot")
"""

import contextlib
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from . import limits
from .dispatch import bot_id_from_token, call_method
from .errors import BotApiError
from .params import Params, read_params
from .ratelimit import RateLimits
from .state import (
    DEFAULT_BOT_FIRST_NAME,
    DEFAULT_BOT_USERNAME,
    EmulatorConfig,
    EmulatorState,
)
from .testing_api import add_testing_routes
from .webhook import WebhookDeliverer

logger = logging.getLogger(__name__)

STATE_KEY = web.AppKey("telegram_emulator_state", EmulatorState)
_DELIVERER_KEY = web.AppKey("telegram_emulator_webhook", WebhookDeliverer)

# Largest request body: the 50 MB multipart upload limit plus room for the other
# form fields. aiohttp's default of 1 MiB would reject real photo uploads.
MAX_REQUEST_BYTES = limits.MAX_UPLOAD_BYTES + 1024 * 1024

# Seconds that stopping the emulator waits for open requests. Long polls are woken
# at shutdown, so requests end well within this time.
SHUTDOWN_TIMEOUT = 2.0


def emulator_state(app: web.Application) -> EmulatorState:
    """Return the state of an emulator app, for tests that inspect it directly."""
    return app[STATE_KEY]


async def _handle_bot_api(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]

    async def load_params() -> Params:
        return await read_params(request)

    status, body = await call_method(
        state, request.match_info["token"], request.match_info["method"], load_params
    )
    return web.json_response(body, status=status)


async def _handle_file_download(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        bot_id_from_token(request.match_info["token"])
    except BotApiError as error:
        return web.json_response(error.to_json(), status=error.error_code)
    stored = state.files_by_path.get(request.match_info["file_path"])
    if stored is None:
        return web.json_response(
            {"ok": False, "error_code": 404, "description": "Not Found"}, status=404
        )
    return web.Response(
        body=stored.data, content_type=stored.mime_type or "application/octet-stream"
    )


async def _start_webhook_delivery(app: web.Application) -> None:
    deliverer = WebhookDeliverer(app[STATE_KEY])
    await deliverer.start()
    app[_DELIVERER_KEY] = deliverer


async def _wake_waiters(app: web.Application) -> None:
    state = app[STATE_KEY]
    state.closing = True
    state.updates_changed.notify()
    state.wake_event_waiters()
    state.webhook_changed.notify()


async def _stop_webhook_delivery(app: web.Application) -> None:
    deliverer = app.get(_DELIVERER_KEY)
    if deliverer is not None:
        await deliverer.stop()


def create_app(
    *,
    bot_username: str = DEFAULT_BOT_USERNAME,
    bot_first_name: str = DEFAULT_BOT_FIRST_NAME,
    rate_limits: RateLimits | None = None,
    clock: Callable[[], float] = time.monotonic,
    group_privacy: bool = True,
    webhook_retry_delay: float = 1.0,
) -> web.Application:
    """Build an emulator application with its own in-memory state.

    Args:
        bot_username: Username that getMe returns, without "@".
        bot_first_name: First name that getMe returns.
        rate_limits: Flood control settings; ``RateLimits.disabled()`` turns it off.
            Defaults to the rates of the Telegram Bots FAQ.
        clock: Monotonic clock in seconds for rate limits and time limits, so
            tests can move time forward.
        group_privacy: Whether the bot runs in privacy mode in groups.
        webhook_retry_delay: Seconds before the first retry of a failed webhook
            delivery; later retries double it.
    """
    config = EmulatorConfig(
        bot_username=bot_username,
        bot_first_name=bot_first_name,
        group_privacy=group_privacy,
        rate_limits=rate_limits if rate_limits is not None else RateLimits(),
        webhook_retry_delay=webhook_retry_delay,
    )
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[STATE_KEY] = EmulatorState(config, clock)

    app.router.add_get("/bot{token}/{method}", _handle_bot_api)
    app.router.add_post("/bot{token}/{method}", _handle_bot_api)
    app.router.add_get("/file/bot{token}/{file_path:.+}", _handle_file_download)
    add_testing_routes(app, lambda request: request.app[STATE_KEY])

    app.on_startup.append(_start_webhook_delivery)
    app.on_shutdown.append(_wake_waiters)
    app.on_cleanup.append(_stop_webhook_delivery)
    return app


def _check_loopback(host: str, *, allow_all_interfaces: bool) -> None:
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and address.is_loopback:
        return
    if address is not None and address.is_unspecified and allow_all_interfaces:
        return
    # The testing API has no authentication, so it must not be reachable from
    # other machines.
    raise ValueError(
        f"the emulator binds only to loopback addresses, got host {host!r}"
    )


async def start_emulator(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    allow_all_interfaces: bool = False,
    **kwargs: Any,
) -> tuple[web.AppRunner, str]:
    """Start an emulator on ``host``:``port`` and return its runner and base URL.

    Port 0 binds a free port. ``kwargs`` go to :func:`create_app`. Stop the
    emulator with ``await runner.cleanup()``. ``allow_all_interfaces`` also
    accepts ``0.0.0.0`` and ``::``, for a container whose port is published
    on the host's loopback interface only.

    Raises:
        ValueError: when ``host`` is not a loopback address, or is ``0.0.0.0``
            or ``::`` without ``allow_all_interfaces``.
    """
    _check_loopback(host, allow_all_interfaces=allow_all_interfaces)
    runner = web.AppRunner(
        create_app(**kwargs),
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        access_log=None,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()

    bound_host, bound_port = runner.addresses[0][:2]
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    base_url = f"http://{url_host}:{bound_port}"
    logger.info("telegram emulator started url=%s", base_url)
    return runner, base_url


@contextlib.asynccontextmanager
async def running_emulator(
    host: str = "127.0.0.1", port: int = 0, **kwargs: Any
) -> AsyncIterator[str]:
    """Run an emulator during an ``async with`` block and yield its base URL."""
    runner, base_url = await start_emulator(host, port, **kwargs)
    try:
        yield base_url
    finally:
        await runner.cleanup()
        logger.info("telegram emulator stopped url=%s", base_url)
