"""Assembly of the PTB ``Application``: handlers, rate limiter, event consumer.

``build_application`` wires everything; ``running_bot`` runs it in polling
mode inside an ``async with`` block, for tests and the sandbox. The process
entry point is ``bot.__main__``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from telegram import BotCommand, Update
from telegram.ext import AIORateLimiter, Application, ApplicationBuilder

from bot.config import BotSettings
from bot.errors import handle_error
from bot.events_consumer import EventConsumer
from bot.i18n import DEFAULT_LANGUAGE, SUPPORTED_LANGUAGES, translate
from bot.service_client import ServiceClient
from bot.services import SERVICES_KEY, BotServices, services_of
from handlers import (
    app_step,
    checklist,
    commands,
    consent,
    fallback,
    info,
    partner,
    qr,
    start,
)
from journey.events import EventStream
from journey.municipalities import MunicipalityRegistry
from journey.store import CaseStore

logger = logging.getLogger(__name__)

CONSUMER_KEY = "event_consumer"
OWNED_REDIS_KEY = "owned_redis"

CONCURRENT_UPDATES = 32
"""Updates handled at once. Every transition is a compare-and-set in Redis,
so two updates of one chat handled together still move a case once."""

RATE_LIMIT_RETRIES = 2
"""Times a request is sent again after Telegram responded 429 with ``retry_after``;
the rate limiter waits the time Telegram asks for before each retry."""

MENU_COMMANDS: tuple[str, ...] = ("start", "hulp", "status", "stop")
"""The commands in the bot's menu, in menu order; descriptions are in the catalog."""

ALLOWED_UPDATES: tuple[str, ...] = (
    Update.MESSAGE,
    Update.EDITED_MESSAGE,
    Update.CALLBACK_QUERY,
    Update.MY_CHAT_MEMBER,
)
"""The update types the handlers use; Telegram sends no others."""

BotApplication = Application[Any, Any, Any, Any, Any, Any]


def build_application(
    settings: BotSettings,
    *,
    redis: Redis | None = None,
    registry: MunicipalityRegistry | None = None,
) -> BotApplication:
    """Build the bot's PTB application with every handler registered.

    Args:
        settings: the process settings.
        redis: a ``decode_responses=True`` client to use; when None, one is
            made from ``settings.redis_url`` and closed at shutdown.
        registry: the municipality registry; when None it is loaded from
            ``settings.municipality_registry`` (an empty registry if unset).

    Raises:
        journey.municipalities.RegistryError: the registry file is invalid.
    """
    owned_redis = redis is None
    if redis is None:
        redis = Redis.from_url(settings.redis_url, decode_responses=True)
    if registry is None:
        registry = (
            MunicipalityRegistry.load(settings.municipality_registry)
            if settings.municipality_registry is not None
            else MunicipalityRegistry([])
        )

    application = (
        ApplicationBuilder()
        .token(settings.telegram_token)
        .base_url(settings.api_base_url)
        .base_file_url(settings.file_base_url)
        # NOTE: AIORateLimiter enforces the overall and per-group limits only;
        # Telegram's one-message-a-second advice for a single chat is not
        # enforced. A reply here is one or two messages, well within bursts
        # Telegram accepts.
        .rate_limiter(AIORateLimiter(max_retries=RATE_LIMIT_RETRIES))
        .concurrent_updates(CONCURRENT_UPDATES)
        .post_init(_post_init)
        .post_stop(_post_stop)
        .post_shutdown(_post_shutdown)
        .build()
    )
    application.bot_data[SERVICES_KEY] = BotServices(
        settings=settings,
        store=CaseStore(redis),
        events=EventStream(redis),
        service=ServiceClient(settings.pairing_service_url, settings.service_token),
        registry=registry,
    )
    application.bot_data[OWNED_REDIS_KEY] = owned_redis
    _add_handlers(application)
    return application


@contextlib.asynccontextmanager
async def running_bot(
    settings: BotSettings,
    *,
    redis: Redis | None = None,
    registry: MunicipalityRegistry | None = None,
) -> AsyncIterator[BotApplication]:
    """Run the bot in polling mode for the duration of an ``async with`` block.

    Does what ``Application.run_polling`` does, without taking over the event
    loop: initialize, ``post_init``, start polling, start; and on exit stop
    polling, stop, ``post_stop``, shut down, ``post_shutdown``.
    """
    application = build_application(settings, redis=redis, registry=registry)
    await application.initialize()
    try:
        await _post_init(application)
        assert application.updater is not None
        await application.updater.start_polling(
            poll_interval=0,
            timeout=settings.poll_timeout,
            allowed_updates=list(ALLOWED_UPDATES),
        )
        await application.start()
        try:
            yield application
        finally:
            if application.updater.running:
                await application.updater.stop()
            if application.running:
                await application.stop()
            await _post_stop(application)
    finally:
        await application.shutdown()
        await _post_shutdown(application)


def _add_handlers(application: BotApplication) -> None:
    # Groups first, so no step handler replies in a group; the fallbacks last,
    # so they only get what no step took. All are in handler group 0, where
    # the first matching handler wins.
    application.add_handlers(fallback.build_group_handlers())
    for module in (start, commands, info, checklist, partner, app_step, qr, consent):
        application.add_handlers(module.build_handlers())
    application.add_handlers(fallback.build_handlers())
    application.add_error_handler(handle_error)


async def _post_init(application: BotApplication) -> None:
    await _set_commands(application)
    services = services_of(application)
    consumer = EventConsumer(services, application.bot, services.settings.consumer_name)
    application.bot_data[CONSUMER_KEY] = consumer
    consumer.start()
    logger.info("bot started mode=%s", services.settings.mode)


async def _set_commands(application: BotApplication) -> None:
    for language in SUPPORTED_LANGUAGES:
        menu = [
            BotCommand(name, translate(f"command.{name}", language))
            for name in MENU_COMMANDS
        ]
        # The Dutch menu is also the default for every other app language.
        language_code = None if language == DEFAULT_LANGUAGE else language
        await application.bot.set_my_commands(menu, language_code=language_code)


async def _post_stop(application: BotApplication) -> None:
    consumer: EventConsumer | None = application.bot_data.get(CONSUMER_KEY)
    if consumer is not None:
        await consumer.stop()


async def _post_shutdown(application: BotApplication) -> None:
    # Stopping twice is harmless; post_stop does not run when start failed.
    await _post_stop(application)
    services = services_of(application)
    await services.service.close()
    if application.bot_data.get(OWNED_REDIS_KEY):
        await services.store.redis.aclose()
    logger.info("bot stopped")
