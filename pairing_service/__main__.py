"""Run the pairing service: ``python -m pairing_service`` or ``gv-pairing-service``."""

from __future__ import annotations

import logging
import os
import sys

from aiohttp import web

from journey.logging_setup import configure_logging, parse_level
from journey.municipalities import RegistryError
from pairing_service.access_log import RouteAccessLogger
from pairing_service.app import create_app
from pairing_service.config import ConfigError, Settings

logger = logging.getLogger(__name__)


def main() -> None:
    """Read the configuration from the environment and serve until stopped.

    Exits with status 2 and a one-line reason when the configuration or the
    municipality registry is invalid.
    """
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None

    configure_logging(parse_level(settings.log_level))
    try:
        app = create_app(settings)
    except RegistryError as error:
        logger.error("municipality registry invalid error=%s", error)
        raise SystemExit(2) from None

    logger.info(
        "pairing service starting host=%s port=%s", settings.host, settings.port
    )
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        access_log_class=RouteAccessLogger,
        print=None,
    )
    logger.info("pairing service stopped")


if __name__ == "__main__":
    main()
