"""Prometheus metrics of the bot process.

The metrics live in prometheus-client's default registry, so one scrape of
``/metrics`` (see ``bot.health``) returns them with the process metrics of
the client library. Labels carry update types, Bot API method names, HTTP
statuses and step names only: never a chat id, a token or a text.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import Counter
from telegram import Update
from telegram.error import NetworkError, TimedOut
from telegram.ext import BaseHandler, TypeHandler
from telegram.request import HTTPXRequest

logger = logging.getLogger(__name__)

TOO_MANY_REQUESTS = 429

METRICS_HANDLER_GROUP = -100
"""PTB handler group of the update counter. A group below every other runs
first, and a handler in its own group never stops the step handlers."""

UPDATES = Counter(
    "gv_bot_updates_total",
    "Updates the bot received, by update type.",
    ["type"],
)
TELEGRAM_REQUESTS = Counter(
    "gv_bot_telegram_requests_total",
    "Bot API requests, by method and HTTP status ('network' for no response).",
    ["method", "status"],
)
TELEGRAM_ERRORS = Counter(
    "gv_bot_telegram_errors_total",
    "Bot API requests that failed: a status of 400 or more, or no response.",
    ["method", "status"],
)
TELEGRAM_RATE_LIMITED = Counter(
    "gv_bot_telegram_rate_limited_total",
    "Bot API requests that Telegram answered with 429 Too Many Requests.",
    ["method"],
)
REMINDERS = Counter(
    "gv_bot_reminders_total",
    "Reminders handled by the dispatcher, by outcome.",
    ["outcome"],
)


class CountingRequest(HTTPXRequest):
    """PTB's httpx request that counts every Bot API response by status.

    The label is the method name, the last segment of the URL. The segment
    before it contains the token and is never used.
    """

    async def do_request(
        self, url: str, method: str, *args: Any, **kwargs: Any
    ) -> tuple[int, bytes]:
        """Send the request as ``HTTPXRequest`` does and count its status."""
        api_method = _method_name(url)
        try:
            status, payload = await super().do_request(url, method, *args, **kwargs)
        except (TimedOut, NetworkError):
            TELEGRAM_REQUESTS.labels(api_method, "network").inc()
            TELEGRAM_ERRORS.labels(api_method, "network").inc()
            raise
        TELEGRAM_REQUESTS.labels(api_method, str(status)).inc()
        if status == TOO_MANY_REQUESTS:
            TELEGRAM_RATE_LIMITED.labels(api_method).inc()
        if status >= 400:
            TELEGRAM_ERRORS.labels(api_method, str(status)).inc()
        return status, payload


def build_handlers() -> list[tuple[BaseHandler[Update, Any, Any], int]]:
    """Return the update counter and its handler group."""
    return [(TypeHandler(Update, count_update, block=False), METRICS_HANDLER_GROUP)]


async def count_update(update: Update, _context: Any) -> None:
    """Count ``update`` by its type (``message``, ``callback_query``, …)."""
    UPDATES.labels(_update_type(update)).inc()


def _update_type(update: Update) -> str:
    for name in (
        Update.MESSAGE,
        Update.EDITED_MESSAGE,
        Update.CALLBACK_QUERY,
        Update.MY_CHAT_MEMBER,
    ):
        if getattr(update, name, None) is not None:
            return name
    return "other"


def _method_name(url: str) -> str:
    path = urlsplit(url).path.rstrip("/")
    name = path.rsplit("/", 1)[-1]
    # A file download (``/file/bot<token>/<path>``) has no method name; its
    # last segment is part of a file path, so it is counted under one label.
    if "/file/" in path or not name.isalnum():
        return "file"
    return name
