"""Configuration of the pairing service, read from environment variables."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from journey import keys
from journey.redis_client import SCHEMES as REDIS_SCHEMES
from journey.reminders import DEFAULT_WINDOW, SendWindow, WindowError
from journey.tokens import MIN_SERVICE_TOKEN_LENGTH
from pairing_service.mail import MailSettings
from pairing_service.retry import DEFAULT_RETRY_SCHEDULE

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_HOST = "127.0.0.1"
"""Loopback by default; a container sets HOST=0.0.0.0 behind its own network."""
DEFAULT_PORT = 8080


MIN_PAIRING_TTL_SECONDS = 60
"""A code must live long enough to walk from the computer to the phone and scan."""
MAX_PAIRING_TTL_SECONDS = 3600
"""A pairing code is a bearer secret on a screen; an hour is the most we allow."""

DEFAULT_DELIVERY_TIMEOUT_SECONDS = 15.0
"""Total time for one webhook request, from connect to the end of the response."""

DEFAULT_DELIVERY_CONCURRENCY = 8
"""Webhook requests one worker keeps in flight; deliveries are rare and small."""

MAX_RETRY_WINDOW_SECONDS = 3 * 24 * 3600
"""Upper bound of the sum of the retry schedule: the encrypted package is kept
until the last retry, and it must not stay in Redis for days."""

DEFAULT_CLAIMS_PER_ADDRESS = 30
"""Claims one network address may make per minute. A household scans a few
codes; thirty a minute stops guessing without hurting a shared network."""

DEFAULT_TYPED_FAILURES_GLOBAL = 300
"""Wrong typed codes from all addresses together per minute before typed claims
pause for the rest of the minute. Real clients mistype a few codes an hour, so
this only trips under a distributed guessing attack; QR claims go on working."""

MIN_TYPED_CODE_SECRET_LENGTH = 32
"""Same strength as the service token: 32 characters carry at least 128 bits."""

MIN_METRICS_TOKEN_LENGTH = 32
"""Same strength as the service token: the metrics sit on the public port, so
the token must resist guessing as well as the internal API's does."""

_TELEGRAM_USERNAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{4,31}")
"""Telegram usernames are 5-32 characters: letters, digits and underscores."""

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(ValueError):
    """Raised when an environment variable is missing or invalid.

    ``variable`` is the name of the variable at fault.
    """

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service reads from its environment.

    Durations are in seconds.
    """

    service_token: str
    public_base_url: str
    """Origin and optional path prefix for links, without a trailing slash."""
    bot_username: str
    registry_path: Path
    redis_url: str = DEFAULT_REDIS_URL
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    pairing_ttl_seconds: int = keys.PAIRING_TTL_SECONDS
    delivery_retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    """Maximum delay before each retry; its length is the number of retries."""
    delivery_timeout_seconds: float = DEFAULT_DELIVERY_TIMEOUT_SECONDS
    delivery_concurrency: int = DEFAULT_DELIVERY_CONCURRENCY
    log_level: str = "INFO"
    typed_code_secret: str = ""
    """HMAC key material of typed codes; empty derives it from the service token."""
    claims_per_address: int = DEFAULT_CLAIMS_PER_ADDRESS
    """Claims per minute from one network address."""
    typed_failures_global: int = DEFAULT_TYPED_FAILURES_GLOBAL
    """Wrong typed codes per minute from all addresses before typed claims pause."""
    reminder_window: SendWindow = DEFAULT_WINDOW
    """Local times of day between which reminders go out (``REMINDER_SEND_WINDOW``)."""
    mail: MailSettings | None = None
    """The SMTP server for invitation e-mail; None sends no e-mail."""
    metrics_token: str = field(default="", repr=False)
    """Bearer token that ``GET /metrics`` requires; empty turns the metrics off."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build the settings from a mapping of environment variables.

        Required: ``SERVICE_TOKEN``, ``PUBLIC_BASE_URL``, ``BOT_USERNAME`` and
        ``MUNICIPALITY_REGISTRY``. Optional: ``REDIS_URL``, ``HOST``, ``PORT``,
        ``PAIRING_TTL_SECONDS``, ``DELIVERY_RETRY_SCHEDULE`` (comma-separated
        seconds), ``DELIVERY_TIMEOUT_SECONDS``, ``DELIVERY_CONCURRENCY``,
        ``LOG_LEVEL``, ``TYPED_CODE_SECRET``, ``CLAIMS_PER_ADDRESS`` (per
        minute), ``TYPED_FAILURES_GLOBAL`` (per minute), ``REMINDER_SEND_WINDOW``
        (``HH:MM-HH:MM``, Amsterdam time), ``METRICS_TOKEN`` and the ``SMTP_*``
        variables of ``pairing_service.mail.MailSettings``.

        Raises:
            ConfigError: a variable is missing or invalid; the error names it.
        """
        token = _required(environ, "SERVICE_TOKEN")
        if len(token) < MIN_SERVICE_TOKEN_LENGTH:
            raise ConfigError(
                "SERVICE_TOKEN",
                f"must be at least {MIN_SERVICE_TOKEN_LENGTH} characters, "
                f"got {len(token)}; generate one with 'openssl rand -base64 32'",
            )

        base_url = _required(environ, "PUBLIC_BASE_URL").rstrip("/")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                "PUBLIC_BASE_URL", f"must be an http(s) URL, got {base_url!r}"
            )
        if parts.query or parts.fragment:
            raise ConfigError(
                "PUBLIC_BASE_URL", "must not contain a query or a fragment"
            )

        username = _required(environ, "BOT_USERNAME").removeprefix("@")
        if not _TELEGRAM_USERNAME.fullmatch(username):
            raise ConfigError(
                "BOT_USERNAME",
                f"must be a Telegram username (5-32 letters, digits or _), "
                f"got {username!r}",
            )

        redis_url = environ.get("REDIS_URL", DEFAULT_REDIS_URL)
        if urlsplit(redis_url).scheme not in REDIS_SCHEMES:
            raise ConfigError(
                "REDIS_URL",
                "must start with redis://, rediss://, unix://, redis+cluster:// "
                "or rediss+cluster://",
            )

        log_level = environ.get("LOG_LEVEL", "INFO").strip().upper()
        if log_level not in _LOG_LEVELS:
            raise ConfigError("LOG_LEVEL", f"must be one of {', '.join(_LOG_LEVELS)}")

        typed_secret = environ.get("TYPED_CODE_SECRET", "").strip()
        if typed_secret and len(typed_secret) < MIN_TYPED_CODE_SECRET_LENGTH:
            raise ConfigError(
                "TYPED_CODE_SECRET",
                f"must be at least {MIN_TYPED_CODE_SECRET_LENGTH} characters, "
                f"got {len(typed_secret)}; generate one with 'openssl rand -base64 32'",
            )

        return cls(
            service_token=token,
            public_base_url=base_url,
            bot_username=username,
            registry_path=Path(_required(environ, "MUNICIPALITY_REGISTRY")),
            redis_url=redis_url,
            host=environ.get("HOST", DEFAULT_HOST),
            port=_integer(environ, "PORT", DEFAULT_PORT, 0, 65535),
            pairing_ttl_seconds=_integer(
                environ,
                "PAIRING_TTL_SECONDS",
                keys.PAIRING_TTL_SECONDS,
                MIN_PAIRING_TTL_SECONDS,
                MAX_PAIRING_TTL_SECONDS,
            ),
            delivery_retry_schedule=_schedule(environ, "DELIVERY_RETRY_SCHEDULE"),
            delivery_timeout_seconds=_seconds(
                environ, "DELIVERY_TIMEOUT_SECONDS", DEFAULT_DELIVERY_TIMEOUT_SECONDS
            ),
            delivery_concurrency=_integer(
                environ, "DELIVERY_CONCURRENCY", DEFAULT_DELIVERY_CONCURRENCY, 1, 100
            ),
            log_level=log_level,
            typed_code_secret=typed_secret,
            claims_per_address=_integer(
                environ, "CLAIMS_PER_ADDRESS", DEFAULT_CLAIMS_PER_ADDRESS, 1, 1_000_000
            ),
            typed_failures_global=_integer(
                environ,
                "TYPED_FAILURES_GLOBAL",
                DEFAULT_TYPED_FAILURES_GLOBAL,
                1,
                1_000_000,
            ),
            reminder_window=_window(environ, "REMINDER_SEND_WINDOW"),
            mail=_mail(environ),
            metrics_token=_metrics_token(environ, token),
        )


def _metrics_token(environ: Mapping[str, str], service_token: str) -> str:
    token = environ.get("METRICS_TOKEN", "").strip()
    if not token:
        return ""
    if len(token) < MIN_METRICS_TOKEN_LENGTH:
        raise ConfigError(
            "METRICS_TOKEN",
            f"must be at least {MIN_METRICS_TOKEN_LENGTH} characters, got "
            f"{len(token)}; generate one with 'openssl rand -base64 32'",
        )
    if token == service_token:
        # Prometheus keeps this token in its configuration, and it must not
        # open the internal API as well.
        raise ConfigError(
            "METRICS_TOKEN",
            "must differ from SERVICE_TOKEN; generate one with "
            "'openssl rand -base64 32'",
        )
    return token


def _window(environ: Mapping[str, str], name: str) -> SendWindow:
    text = environ.get(name, "").strip()
    if not text:
        return DEFAULT_WINDOW
    try:
        return SendWindow.parse(text)
    except WindowError as error:
        raise ConfigError(name, str(error)) from None


def _mail(environ: Mapping[str, str]) -> MailSettings | None:
    try:
        return MailSettings.from_env(environ)
    except ValueError as error:
        variable, _, problem = str(error).partition(": ")
        raise ConfigError(variable, problem) from None


def _required(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigError(name, "is missing or empty")
    return value


def _integer(
    environ: Mapping[str, str], name: str, default: int, minimum: int, maximum: int
) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(name, f"must be a whole number, got {text!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(name, f"must be between {minimum} and {maximum}, got {value}")
    return value


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(name, f"must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise ConfigError(name, f"must be greater than 0, got {value}")
    return value


def _schedule(environ: Mapping[str, str], name: str) -> tuple[float, ...]:
    text = environ.get(name)
    if text is None:
        return DEFAULT_RETRY_SCHEDULE
    delays: list[float] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            delay = float(item)
        except ValueError:
            raise ConfigError(
                name, f"must be comma-separated seconds, got {item!r}"
            ) from None
        if not delay > 0:
            raise ConfigError(name, f"every delay must be greater than 0, got {delay}")
        delays.append(delay)
    if sum(delays) > MAX_RETRY_WINDOW_SECONDS:
        raise ConfigError(
            name,
            f"the delays add up to {sum(delays):.0f} s, more than the "
            f"{MAX_RETRY_WINDOW_SECONDS} s an encrypted package may be kept",
        )
    return tuple(delays)
