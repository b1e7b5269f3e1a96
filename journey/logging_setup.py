"""Logging set-up shared by the bot and the pairing service.

Every line is ``key=value`` pairs: ``ts=… level=… logger=… msg="…"``, followed
by the traceback when there is one. Messages already carry their own
``case=… step=…`` fields, so a log processor can split one line into fields.

A filter drops every record whose text contains a Telegram bot token, because
httpx logs each request URL (``…/bot<token>/sendMessage``) at INFO and PTB
includes URLs in some network errors. Dropping is safer than masking: a
masked line could still leak the token in a form the pattern did not expect.

A second filter shortens aiohttp's record of a request that its HTTP parser
rejected. That record's traceback quotes the bytes around the fault (a
header line, a piece of the body), which may contain an e-mail address or a
pairing code, so only the exception's class and status are kept.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import TextIO

DEFAULT_LEVEL = "INFO"

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

BOT_TOKEN_PATTERN = re.compile(r"\d{5,}:[A-Za-z0-9_-]{20,}")
"""A bot token as @BotFather issues it: the numeric bot id, a colon and a
secret of URL-safe characters. Twenty or more characters after the colon
also match the shorter tokens of tests and the sandbox."""

TOKEN_URL_PATTERN = re.compile(r"/bot[^/\s]+/")
"""The token segment of a Bot API URL (``/bot<token>/<method>``), whatever the
token looks like."""

_QUIET_LOGGERS = {"httpx": logging.WARNING, "httpcore": logging.WARNING}
"""Libraries whose INFO lines are one per HTTP request: too many to be useful."""

_CHATTY_MINIMUM = {"telegram": logging.INFO}
"""PTB logs the parameters and responses of every Bot API call at DEBUG,
chat ids and message texts included, so these stay at INFO or above."""


class KeyValueFormatter(logging.Formatter):
    """Format a record as ``ts=… level=… logger=… msg="…"`` on one line.

    The time is UTC in ISO 8601 with milliseconds. The message is quoted, with
    backslashes, quotes and line breaks escaped, so one record stays one line.
    """

    def converter(self, seconds: float | None = None) -> time.struct_time:
        """Convert a record's time to UTC, not to the local time zone."""
        return time.gmtime(seconds)

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one ``key=value`` line (plus a traceback)."""
        timestamp = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        fields = [
            f"ts={timestamp}.{int(record.msecs):03d}Z",
            f"level={record.levelname}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        line = " ".join(fields)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class SecretFilter(logging.Filter):
    """Drop every record whose message or traceback contains a bot token."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Return False for a record that carries a token, True otherwise."""
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            # A record whose arguments do not fit its format string is logged
            # by the handler's own error path; let it through to that path.
            return True
        if record.exc_info and record.exc_info[1] is not None:
            text += " " + str(record.exc_info[1])
        return not contains_token(text)


class ParserErrorFilter(logging.Filter):
    """Replace a rejected HTTP request's traceback with the error's class and status.

    aiohttp (3.14) logs ``Error handling request from <address>`` with the
    parser's exception, whose message quotes the request's bytes. The record
    keeps its level. It loses the exception and, as the access log does, the
    client's address.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Strip the exception from a parser error record and keep the record."""
        error = record.exc_info[1] if record.exc_info else None
        if error is None or not _is_http_parser_error(error):
            return True
        record.msg = "HTTP request rejected by the parser error=%s status=%s"
        record.args = (type(error).__name__, getattr(error, "code", None))
        record.exc_info = None
        record.exc_text = None
        return True


def _is_http_parser_error(error: BaseException) -> bool:
    # Matched by name, because the domain core does not import aiohttp.
    return any(
        cls.__module__ == "aiohttp.http_exceptions"
        and cls.__name__ == "HttpProcessingError"
        for cls in type(error).__mro__
    )


def contains_token(text: str) -> bool:
    """Return whether ``text`` contains a bot token or a Bot API token URL."""
    return bool(BOT_TOKEN_PATTERN.search(text) or TOKEN_URL_PATTERN.search(text))


def parse_level(value: str | None) -> int:
    """Return the logging level named by ``value`` (INFO when empty).

    Raises:
        ValueError: ``value`` is not one of DEBUG, INFO, WARNING or ERROR.
    """
    name = (value or DEFAULT_LEVEL).strip().upper() or DEFAULT_LEVEL
    if name not in LEVELS:
        raise ValueError(f"LOG_LEVEL must be one of {', '.join(LEVELS)}, got {value!r}")
    level: int = logging.getLevelName(name)
    return level


def configure_logging(
    level: int = logging.INFO, stream: TextIO | None = None, *, force: bool = False
) -> None:
    """Send every log record to ``stream`` (stderr) as ``key=value`` lines.

    Like ``logging.basicConfig``, it leaves a root logger alone that already
    has handlers of someone else (a test runner's, for example), unless
    ``force`` is set; then its handler is added next to them. A handler that
    an earlier call installed is replaced, so calling it twice is harmless.
    The token filter and the parser error filter are attached to the
    handler, so they also act on records that libraries log through their
    own loggers.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _KeyValueHandler):
            root.removeHandler(old)
    if root.handlers and not force:
        return

    # The lines name no thread or process, so records need not look them up
    # (the logging module's documented switches for this).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = _KeyValueHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    handler.addFilter(SecretFilter())
    handler.addFilter(ParserErrorFilter())
    root.addHandler(handler)
    root.setLevel(level)

    for name, quiet_level in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(level, quiet_level))
    for name, minimum in _CHATTY_MINIMUM.items():
        logging.getLogger(name).setLevel(max(level, minimum))


class _KeyValueHandler(logging.StreamHandler[TextIO]):
    """The stream handler that ``configure_logging`` installs, to find it again."""


def _quote(text: str) -> str:
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )
    return f'"{escaped}"'
