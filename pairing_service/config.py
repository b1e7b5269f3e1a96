"""Configuration of the pairing service, read from environment variables."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from journey import keys
from pairing_service.retry import DEFAULT_RETRY_SCHEDULE

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_HOST = "127.0.0.1"
"""Loopback by default; a container sets HOST=0.0.0.0 behind its own network."""
DEFAULT_PORT = 8080

MIN_SERVICE_TOKEN_LENGTH = 32
"""32 URL-safe characters carry 192 bits, well above the 128 bits asked of secrets."""

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

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build the settings from a mapping of environment variables.

        Required: ``SERVICE_TOKEN``, ``PUBLIC_BASE_URL``, ``BOT_USERNAME`` and
        ``MUNICIPALITY_REGISTRY``. Optional: ``REDIS_URL``, ``HOST``, ``PORT``,
        ``PAIRING_TTL_SECONDS``, ``DELIVERY_RETRY_SCHEDULE`` (comma-separated
        seconds), ``DELIVERY_TIMEOUT_SECONDS``, ``DELIVERY_CONCURRENCY`` and
        ``LOG_LEVEL``.

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
        if urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                "REDIS_URL", "must start with redis://, rediss:// or unix://"
            )

        log_level = environ.get("LOG_LEVEL", "INFO").upper()
        if log_level not in _LOG_LEVELS:
            raise ConfigError("LOG_LEVEL", f"must be one of {', '.join(_LOG_LEVELS)}")

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
        )


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
