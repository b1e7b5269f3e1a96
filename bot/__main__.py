"""Entry point of the bot process: ``python -m bot`` or ``gv-bot``."""

from __future__ import annotations

import logging
import os
import sys

from bot.application import ALLOWED_UPDATES, build_application, webhook_arguments
from bot.config import BotMode, BotSettings, ConfigError
from journey.logging_setup import configure_logging, parse_level
from journey.municipalities import RegistryError

logger = logging.getLogger(__name__)


def main() -> int:
    """Read the settings from the environment and run the bot until interrupted.

    Logs go to stderr as ``key=value`` lines at ``LOG_LEVEL`` (default INFO),
    with every record that carries a bot token dropped
    (``journey.logging_setup``). Exits with status 2 when a setting is invalid.
    """
    try:
        level = parse_level(os.environ.get("LOG_LEVEL"))
    except ValueError as error:
        print(f"configuration invalid: {error}", file=sys.stderr)
        return 2
    configure_logging(level)

    try:
        settings = BotSettings.from_env()
    except ConfigError as error:
        logger.error("configuration invalid: %s", error)
        return 2

    try:
        application = build_application(settings)
    except RegistryError as error:
        logger.error("municipality registry invalid: %s", error)
        return 2

    logger.info("bot starting settings=%r", settings)
    if settings.mode is BotMode.WEBHOOK:
        # PTB serves plain HTTP; TLS ends at the proxy that WEBHOOK_URL names.
        application.run_webhook(**webhook_arguments(settings))
        return 0

    application.run_polling(
        poll_interval=0,
        timeout=settings.poll_timeout,
        allowed_updates=list(ALLOWED_UPDATES),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
