"""Configuration of the bot process, read from environment variables.

Every setting has one variable. A missing or invalid value raises
``ConfigError`` whose message names the variable, so an operator sees at
start-up which one to fix.
"""

from __future__ import annotations

import enum
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_API_BASE_URL = "https://api.telegram.org/bot"
"""PTB appends the bot token and the method name to this base."""

DEFAULT_FILE_BASE_URL = "https://api.telegram.org/file/bot"
"""PTB appends the bot token and the file path to this base."""

DEFAULT_APP_STORE_URL = "https://apps.apple.com/nl/search?term=Ockto"
DEFAULT_GOOGLE_PLAY_URL = "https://play.google.com/store/search?q=Ockto&c=apps"
# NOTE: the store pages of the Ockto app itself are not known here, so the
# defaults open a store search. Set APP_STORE_URL and GOOGLE_PLAY_URL to the
# app's own pages in production.

DEFAULT_POLL_TIMEOUT_SECONDS = 30
"""Long-polling timeout of getUpdates; Telegram keeps the request open this long."""

MAX_POLL_TIMEOUT_SECONDS = 300
"""Upper bound that catches a timeout given in milliseconds by mistake."""


class ConfigError(ValueError):
    """Raised when an environment variable is missing or invalid."""


class BotMode(enum.StrEnum):
    """The way updates arrive from Telegram: long polling or a webhook."""

    POLLING = "polling"
    WEBHOOK = "webhook"


@dataclass(frozen=True, slots=True)
class BotSettings:
    """Settings of one bot process.

    ``repr`` hides the bot token and the service token, so the settings can
    be logged.
    """

    telegram_token: str
    redis_url: str
    pairing_service_url: str
    service_token: str
    municipality_registry: Path | None = None
    api_base_url: str = DEFAULT_API_BASE_URL
    file_base_url: str = DEFAULT_FILE_BASE_URL
    mode: BotMode = BotMode.POLLING
    consumer_name: str = ""
    """Name of this process in the event stream's consumer group; unique per
    process, so two bots never read the same pending events as one consumer."""
    poll_timeout: int = DEFAULT_POLL_TIMEOUT_SECONDS
    app_store_url: str = DEFAULT_APP_STORE_URL
    google_play_url: str = DEFAULT_GOOGLE_PLAY_URL

    def __repr__(self) -> str:
        return (
            f"BotSettings(api_base_url={self.api_base_url!r}, "
            f"redis_url={_without_password(self.redis_url)!r}, "
            f"pairing_service_url={self.pairing_service_url!r}, "
            f"mode={self.mode.value!r}, consumer_name={self.consumer_name!r})"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BotSettings:
        """Read the settings from ``environ`` (``os.environ`` when None).

        Required: ``TELEGRAM_BOT_TOKEN``, ``REDIS_URL``, ``PAIRING_SERVICE_URL``,
        ``SERVICE_TOKEN`` and ``MUNICIPALITY_REGISTRY`` (path of the registry
        JSON file). Optional: ``TELEGRAM_API_BASE_URL``,
        ``TELEGRAM_FILE_BASE_URL`` (derived from the API base when that ends in
        ``/bot``), ``BOT_MODE`` (``polling`` or ``webhook``),
        ``BOT_CONSUMER_NAME`` (default host name and process id),
        ``TELEGRAM_POLL_TIMEOUT`` (seconds), ``APP_STORE_URL`` and
        ``GOOGLE_PLAY_URL``.

        Raises:
            ConfigError: a variable is missing or invalid; the message names it.
        """
        env = os.environ if environ is None else environ

        api_base_url = _url(env, "TELEGRAM_API_BASE_URL", DEFAULT_API_BASE_URL)
        file_base_url = _url(
            env, "TELEGRAM_FILE_BASE_URL", _file_base_for(api_base_url)
        )
        registry = _required(env, "MUNICIPALITY_REGISTRY")
        if not Path(registry).is_file():
            raise ConfigError(
                f"MUNICIPALITY_REGISTRY: no file at {registry!r}; "
                "set it to the path of the municipality registry JSON"
            )

        return cls(
            telegram_token=_token(env),
            redis_url=_redis_url(env),
            pairing_service_url=_url(env, "PAIRING_SERVICE_URL", None).rstrip("/"),
            service_token=_required(env, "SERVICE_TOKEN"),
            municipality_registry=Path(registry),
            api_base_url=api_base_url,
            file_base_url=file_base_url,
            mode=_mode(env),
            consumer_name=env.get("BOT_CONSUMER_NAME")
            or f"{socket.gethostname()}-{os.getpid()}",
            poll_timeout=_poll_timeout(env),
            app_store_url=_url(env, "APP_STORE_URL", DEFAULT_APP_STORE_URL),
            google_play_url=_url(env, "GOOGLE_PLAY_URL", DEFAULT_GOOGLE_PLAY_URL),
        )


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set")
    return value


def _token(env: Mapping[str, str]) -> str:
    token = _required(env, "TELEGRAM_BOT_TOKEN")
    if any(char.isspace() or char == "/" for char in token):
        raise ConfigError(
            "TELEGRAM_BOT_TOKEN is invalid: it contains a space or a slash; "
            "use the token that @BotFather gave"
        )
    return token


def _url(env: Mapping[str, str], name: str, default: str | None) -> str:
    value = env.get(name, "").strip()
    if not value:
        if default is None:
            raise ConfigError(f"{name} is not set")
        return default
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http(s) URL, got {value!r}")
    return value


def _file_base_for(api_base_url: str) -> str:
    # Telegram serves files at /file/bot<token>/<path> next to /bot<token>/<method>,
    # and the sandbox emulator follows that layout.
    if api_base_url.endswith("/bot"):
        return api_base_url[: -len("/bot")] + "/file/bot"
    return DEFAULT_FILE_BASE_URL


def _redis_url(env: Mapping[str, str]) -> str:
    value = _required(env, "REDIS_URL")
    if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"REDIS_URL must start with redis://, rediss:// or unix://, "
            f"got {_without_password(value)!r}"
        )
    return value


def _mode(env: Mapping[str, str]) -> BotMode:
    value = env.get("BOT_MODE", "").strip().lower() or BotMode.POLLING.value
    try:
        return BotMode(value)
    except ValueError:
        raise ConfigError(
            f"BOT_MODE must be 'polling' or 'webhook', got {value!r}"
        ) from None


def _poll_timeout(env: Mapping[str, str]) -> int:
    value = env.get("TELEGRAM_POLL_TIMEOUT", "").strip()
    if not value:
        return DEFAULT_POLL_TIMEOUT_SECONDS
    try:
        seconds = int(value)
    except ValueError:
        raise ConfigError(
            f"TELEGRAM_POLL_TIMEOUT must be whole seconds, got {value!r}"
        ) from None
    if not 0 <= seconds <= MAX_POLL_TIMEOUT_SECONDS:
        raise ConfigError(
            f"TELEGRAM_POLL_TIMEOUT must be 0 to {MAX_POLL_TIMEOUT_SECONDS} "
            f"seconds, got {seconds}"
        )
    return seconds


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()
