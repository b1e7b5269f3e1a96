"""Configuration of the bot process, read from environment variables.

Every setting has one variable. A missing or invalid value raises
``ConfigError`` whose message names the variable, so an operator sees at
start-up which one to fix.
"""

from __future__ import annotations

import enum
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bot.support.hours import OpeningHours, OpeningHoursError
from bot.telegram_limits import SendLimits
from journey.redis_client import SCHEMES as REDIS_SCHEMES
from journey.tokens import MIN_SERVICE_TOKEN_LENGTH

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

DEFAULT_WEBHOOK_LISTEN = "127.0.0.1"
"""Loopback by default: a TLS proxy in front forwards to it; a container sets
WEBHOOK_LISTEN=0.0.0.0 behind its own network."""

DEFAULT_WEBHOOK_PORT = 8443
"""Port of PTB's webhook server; the TLS proxy forwards Telegram's posts here."""

MIN_WEBHOOK_SECRET_LENGTH = 32
"""32 characters from Telegram's 64-character alphabet carry 192 bits."""

MAX_WEBHOOK_SECRET_LENGTH = 256
"""Telegram accepts a ``secret_token`` of 1-256 characters
(core.telegram.org/bots/api#setwebhook)."""

_WEBHOOK_SECRET_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")
"""The characters Telegram allows in ``secret_token``."""

DEFAULT_HEALTH_LISTEN = "127.0.0.1"
DEFAULT_HEALTH_PORT = 9091
"""Port of the bot's probe and metrics server; 0 switches it off."""

DEFAULT_SUPPORT_OPENING_HOURS = "mon-fri 09:00-17:00"
"""Office hours of the helpdesk on working days, Europe/Amsterdam."""

DEFAULT_SUPPORT_TAKEOVER_TIMEOUT_SECONDS = 15 * 60
"""A client who asked for help gets the contact details after a quarter of an
hour without an agent: long enough for a busy agent, short for a waiting client."""

DEFAULT_OPENING_HOURS = OpeningHours.parse(DEFAULT_SUPPORT_OPENING_HOURS)

MIN_SUPPORT_TAKEOVER_TIMEOUT_SECONDS = 60
MAX_SUPPORT_TAKEOVER_TIMEOUT_SECONDS = 24 * 3600
"""Bounds that catch a timeout given in minutes or milliseconds by mistake."""

MAX_AGENT_DISPLAY_NAME_LENGTH = 64
"""The display name goes above every agent message; a long one crowds it."""


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
    webhook_url: str = ""
    """Public HTTPS URL that Telegram posts updates to; required in webhook mode."""
    webhook_secret_token: str = ""
    """``secret_token`` of setWebhook; Telegram sends it back in every post."""
    webhook_listen: str = DEFAULT_WEBHOOK_LISTEN
    webhook_port: int = DEFAULT_WEBHOOK_PORT
    health_listen: str = DEFAULT_HEALTH_LISTEN
    health_port: int | None = None
    """Port of the probe and metrics server; None serves none (tests)."""
    support_group_id: int | None = None
    """The helpdesk's supergroup with topics; None shows contact details only."""
    support_opening_hours: OpeningHours = DEFAULT_OPENING_HOURS
    support_takeover_timeout: int = DEFAULT_SUPPORT_TAKEOVER_TIMEOUT_SECONDS
    support_agent_display_name: str | None = None
    """Shown above each agent message to the client; None sends them unsigned."""
    telegram_limits: SendLimits = field(default_factory=SendLimits)
    """Send rates shared by every process through Redis: the whole bot, one
    chat and one group. Tests raise them to run conversations fast; only
    tests change the group window."""

    def __repr__(self) -> str:
        return (
            f"BotSettings(api_base_url={self.api_base_url!r}, "
            f"redis_url={_without_password(self.redis_url)!r}, "
            f"pairing_service_url={self.pairing_service_url!r}, "
            f"mode={self.mode.value!r}, consumer_name={self.consumer_name!r}, "
            f"webhook_url={self.webhook_url!r}, health_port={self.health_port!r})"
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
        ``TELEGRAM_POLL_TIMEOUT`` (seconds), ``APP_STORE_URL``,
        ``GOOGLE_PLAY_URL``, ``BOT_HEALTH_LISTEN`` and ``BOT_HEALTH_PORT``
        (0 switches the probe server off). Webhook mode also requires
        ``WEBHOOK_URL`` and ``WEBHOOK_SECRET_TOKEN`` and reads
        ``WEBHOOK_LISTEN`` and ``WEBHOOK_PORT``. Support handover reads
        ``SUPPORT_GROUP_ID`` (the negative chat id of the helpdesk's supergroup
        with topics), ``SUPPORT_OPENING_HOURS`` (``mon-fri 09:00-17:00``,
        Europe/Amsterdam), ``SUPPORT_TAKEOVER_TIMEOUT_SECONDS`` and
        ``SUPPORT_AGENT_DISPLAY_NAME``. Telegram's send limits are read from
        ``TELEGRAM_MESSAGES_PER_SECOND``, ``TELEGRAM_CHAT_MESSAGES_PER_SECOND``,
        ``TELEGRAM_CHAT_BURST`` and ``TELEGRAM_GROUP_MESSAGES_PER_MINUTE``.

        Raises:
            ConfigError: a variable is missing or invalid; the message names it.
        """
        env = os.environ if environ is None else environ

        api_base_url = _url(env, "TELEGRAM_API_BASE_URL", DEFAULT_API_BASE_URL)
        file_base_url = _url(
            env, "TELEGRAM_FILE_BASE_URL", _file_base_for(api_base_url)
        )
        mode = _mode(env)
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
            service_token=_service_token(env),
            municipality_registry=Path(registry),
            api_base_url=api_base_url,
            file_base_url=file_base_url,
            mode=mode,
            consumer_name=env.get("BOT_CONSUMER_NAME")
            or f"{socket.gethostname()}-{os.getpid()}",
            poll_timeout=_poll_timeout(env),
            app_store_url=_url(env, "APP_STORE_URL", DEFAULT_APP_STORE_URL),
            google_play_url=_url(env, "GOOGLE_PLAY_URL", DEFAULT_GOOGLE_PLAY_URL),
            health_listen=env.get("BOT_HEALTH_LISTEN", "").strip()
            or DEFAULT_HEALTH_LISTEN,
            health_port=_health_port(env),
            support_group_id=_support_group_id(env),
            support_opening_hours=_opening_hours(env),
            support_takeover_timeout=_takeover_timeout(env),
            support_agent_display_name=_display_name(env),
            telegram_limits=send_limits_from_env(env),
            **_webhook_settings(env, mode),
        )


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set")
    return value


def _service_token(env: Mapping[str, str]) -> str:
    token = _required(env, "SERVICE_TOKEN")
    if len(token) < MIN_SERVICE_TOKEN_LENGTH:
        raise ConfigError(
            f"SERVICE_TOKEN must be at least {MIN_SERVICE_TOKEN_LENGTH} characters, "
            f"got {len(token)}; use the same token as the pairing service"
        )
    return token


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
    if urlsplit(value).scheme not in REDIS_SCHEMES:
        raise ConfigError(
            "REDIS_URL must start with redis://, rediss://, unix://, "
            f"redis+cluster:// or rediss+cluster://, "
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


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        port = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a port number, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{name} must be 0 to 65535, got {port}")
    return port


def _health_port(env: Mapping[str, str]) -> int | None:
    port = _port(env, "BOT_HEALTH_PORT", DEFAULT_HEALTH_PORT)
    return port or None


def _webhook_settings(env: Mapping[str, str], mode: BotMode) -> dict[str, Any]:
    if mode is not BotMode.WEBHOOK:
        return {}
    url = _url(env, "WEBHOOK_URL", None)
    if urlsplit(url).scheme != "https":
        # Telegram posts updates to HTTPS URLs only.
        raise ConfigError(f"WEBHOOK_URL must be an https URL, got {url!r}")
    secret = _required(env, "WEBHOOK_SECRET_TOKEN")
    if not MIN_WEBHOOK_SECRET_LENGTH <= len(secret) <= MAX_WEBHOOK_SECRET_LENGTH:
        raise ConfigError(
            f"WEBHOOK_SECRET_TOKEN must be {MIN_WEBHOOK_SECRET_LENGTH} to "
            f"{MAX_WEBHOOK_SECRET_LENGTH} characters, got {len(secret)}; "
            "generate one with 'openssl rand -hex 32'"
        )
    if not _WEBHOOK_SECRET_ALPHABET.fullmatch(secret):
        raise ConfigError(
            "WEBHOOK_SECRET_TOKEN is invalid: only A-Z, a-z, 0-9, _ and - are "
            "allowed; generate one with 'openssl rand -hex 32'"
        )
    return {
        "webhook_url": url,
        "webhook_secret_token": secret,
        "webhook_listen": env.get("WEBHOOK_LISTEN", "").strip()
        or DEFAULT_WEBHOOK_LISTEN,
        "webhook_port": _port(env, "WEBHOOK_PORT", DEFAULT_WEBHOOK_PORT),
    }


def _support_group_id(env: Mapping[str, str]) -> int | None:
    value = env.get("SUPPORT_GROUP_ID", "").strip()
    if not value:
        return None
    try:
        group_id = int(value)
    except ValueError:
        group_id = 0
    if group_id >= 0:
        raise ConfigError(
            f"SUPPORT_GROUP_ID must be the negative chat id of a supergroup, "
            f"such as -1001234567890, got {value!r}"
        )
    return group_id


def _opening_hours(env: Mapping[str, str]) -> OpeningHours:
    value = env.get("SUPPORT_OPENING_HOURS", "").strip()
    try:
        return OpeningHours.parse(value or DEFAULT_SUPPORT_OPENING_HOURS)
    except OpeningHoursError as error:
        raise ConfigError(f"SUPPORT_OPENING_HOURS is invalid: {error}") from None


def _takeover_timeout(env: Mapping[str, str]) -> int:
    value = env.get("SUPPORT_TAKEOVER_TIMEOUT_SECONDS", "").strip()
    if not value:
        return DEFAULT_SUPPORT_TAKEOVER_TIMEOUT_SECONDS
    try:
        seconds = int(value)
    except ValueError:
        raise ConfigError(
            f"SUPPORT_TAKEOVER_TIMEOUT_SECONDS must be whole seconds, got {value!r}"
        ) from None
    low = MIN_SUPPORT_TAKEOVER_TIMEOUT_SECONDS
    high = MAX_SUPPORT_TAKEOVER_TIMEOUT_SECONDS
    if not low <= seconds <= high:
        raise ConfigError(
            f"SUPPORT_TAKEOVER_TIMEOUT_SECONDS must be {low} to {high} seconds, "
            f"got {seconds}"
        )
    return seconds


def _display_name(env: Mapping[str, str]) -> str | None:
    value = env.get("SUPPORT_AGENT_DISPLAY_NAME", "").strip()
    if len(value) > MAX_AGENT_DISPLAY_NAME_LENGTH:
        raise ConfigError(
            f"SUPPORT_AGENT_DISPLAY_NAME has {len(value)} characters; "
            f"use at most {MAX_AGENT_DISPLAY_NAME_LENGTH}"
        )
    return value or None


def send_limits_from_env(env: Mapping[str, str]) -> SendLimits:
    """Read Telegram's send limits from the ``TELEGRAM_*`` rate variables.

    Raises:
        ConfigError: a variable is not a positive number; the message names it.
    """
    defaults = SendLimits()
    return SendLimits(
        global_per_second=_positive_number(
            env, "TELEGRAM_MESSAGES_PER_SECOND", defaults.global_per_second
        ),
        chat_per_second=_positive_number(
            env, "TELEGRAM_CHAT_MESSAGES_PER_SECOND", defaults.chat_per_second
        ),
        chat_burst=int(
            _positive_number(
                env, "TELEGRAM_CHAT_BURST", defaults.chat_burst, whole=True
            )
        ),
        group_max_messages=int(
            _positive_number(
                env,
                "TELEGRAM_GROUP_MESSAGES_PER_MINUTE",
                defaults.group_max_messages,
                whole=True,
            )
        ),
    )


def _positive_number(
    env: Mapping[str, str], name: str, default: float, *, whole: bool = False
) -> float:
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value) if whole else float(value)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"{name} must be {kind}, got {value!r}") from None
    if not number > 0:
        raise ConfigError(f"{name} must be above 0, got {value!r}")
    return number


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()
