"""Entry point of the bot process: ``python -m bot`` or ``gv-bot``."""

from __future__ import annotations

import logging
import os
import sys

from bot.application import ALLOWED_UPDATES, build_application
from bot.config import BotMode, BotSettings, ConfigError
from journey.municipalities import RegistryError

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging() -> None:
    """Log to stderr at ``LOG_LEVEL`` (default INFO).

    httpx logs every request URL at INFO, and that URL contains the bot
    token, so its logger is held at WARNING. PTB logs the parameters and
    responses of every Bot API call at DEBUG, chat ids and message texts
    included, so the ``telegram`` loggers stay at INFO or above.
    """
    level = logging.getLevelName(os.environ.get("LOG_LEVEL", "INFO").upper())
    if not isinstance(level, int):
        level = logging.INFO
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("telegram").setLevel(max(level, logging.INFO))


def main() -> int:
    """Read the settings from the environment and run the bot until interrupted."""
    configure_logging()
    try:
        settings = BotSettings.from_env()
    except ConfigError as error:
        logger.error("configuration invalid: %s", error)
        return 2

    if settings.mode is BotMode.WEBHOOK:
        # TODO: webhook mode (Application.run_webhook behind a TLS proxy, with
        # a secret_token) is not built yet; run with BOT_MODE=polling.
        logger.error("BOT_MODE=webhook is not supported yet; use BOT_MODE=polling")
        return 2

    try:
        application = build_application(settings)
    except RegistryError as error:
        logger.error("municipality registry invalid: %s", error)
        return 2

    logger.info("bot starting settings=%r", settings)
    application.run_polling(
        poll_interval=0,
        timeout=settings.poll_timeout,
        allowed_updates=list(ALLOWED_UPDATES),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
