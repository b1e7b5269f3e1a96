"""Assembly of the PTB ``Application``: handlers, rate limiter, event consumer.

``build_application`` wires everything; ``running_bot`` runs it in polling
mode and ``running_webhook_bot`` in webhook mode inside an ``async with``
block, for tests and the sandbox. The process entry point is ``bot.__main__``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from telegram import BotCommand, Update
from telegram.ext import Application, ApplicationBuilder, Updater

from bot import health, metrics, reminders
from bot.config import BotSettings
from bot.errors import handle_error
from bot.events_consumer import EventConsumer
from bot.i18n import DEFAULT_LANGUAGE, SUPPORTED_LANGUAGES, translate
from bot.service_client import ServiceClient
from bot.services import SERVICES_KEY, BotServices, services_of
from bot.support.desk import SupportDesk
from bot.telegram_limits import SharedRateLimiter, SharedTelegramLimits
from bot.update_order import ChatOrderedUpdateProcessor
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
from handlers import language as language_command
from handlers import support as support_handlers
from handlers.support import SUPPORT_DESK_KEY
from journey.events import EventStream
from journey.municipalities import MunicipalityRegistry
from journey.redis_client import connect
from journey.store import CaseStore

logger = logging.getLogger(__name__)

CONSUMER_KEY = "event_consumer"
OWNED_REDIS_KEY = "owned_redis"
HEALTH_SERVER_KEY = "health_server"

CONCURRENT_UPDATES = 32
"""Updates handled at once over all chats; the updates of one chat run one
after another (``bot.update_order``)."""

RATE_LIMIT_RETRIES = 2
"""Times a request is sent again after Telegram responded 429 with ``retry_after``.
Each 429 first pauses every process for ``retry_after``, so a reply waits
instead of being lost. A third 429 in a row goes to the error handler."""

MENU_COMMANDS: tuple[str, ...] = ("start", "hulp", "status", "stop", "taal")
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
        redis = connect(settings.redis_url)
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
        # Replicas and the reminder dispatcher count their messages in the
        # same Redis keys, so Telegram's limits hold for the bot as a whole.
        .rate_limiter(
            SharedRateLimiter(
                SharedTelegramLimits(
                    redis, settings.telegram_token, settings.telegram_limits
                ),
                max_retries=RATE_LIMIT_RETRIES,
            )
        )
        .request(metrics.CountingRequest())
        .concurrent_updates(ChatOrderedUpdateProcessor(CONCURRENT_UPDATES))
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

    async def start_polling(updater: Updater) -> None:
        await updater.start_polling(
            poll_interval=0,
            timeout=settings.poll_timeout,
            allowed_updates=list(ALLOWED_UPDATES),
        )

    async with _running(settings, redis, registry, start_polling) as application:
        yield application


@contextlib.asynccontextmanager
async def running_webhook_bot(
    settings: BotSettings,
    *,
    redis: Redis | None = None,
    registry: MunicipalityRegistry | None = None,
) -> AsyncIterator[BotApplication]:
    """Run the bot in webhook mode for the duration of an ``async with`` block.

    PTB's webhook server listens on ``settings.webhook_listen`` and
    ``settings.webhook_port`` at the path of ``settings.webhook_url``, and
    responds 403 to a post without ``settings.webhook_secret_token``. PTB
    calls setWebhook at every start. Replicas pass the same URL and secret,
    so the call is idempotent and any replica may start first.
    """

    async def start_webhook(updater: Updater) -> None:
        await updater.start_webhook(**webhook_arguments(settings))

    async with _running(settings, redis, registry, start_webhook) as application:
        yield application


def webhook_arguments(settings: BotSettings) -> dict[str, Any]:
    """Return the arguments of PTB's ``start_webhook`` for ``settings``.

    The local path is the path of the public ``WEBHOOK_URL``, so a proxy that
    forwards the path unchanged needs no rewrite rule.
    """
    return {
        "listen": settings.webhook_listen,
        "port": settings.webhook_port,
        "url_path": urlsplit(settings.webhook_url).path.lstrip("/"),
        "webhook_url": settings.webhook_url,
        "secret_token": settings.webhook_secret_token,
        "allowed_updates": list(ALLOWED_UPDATES),
    }


@contextlib.asynccontextmanager
async def _running(
    settings: BotSettings,
    redis: Redis | None,
    registry: MunicipalityRegistry | None,
    start_updater: Callable[[Updater], Awaitable[None]],
) -> AsyncIterator[BotApplication]:
    application = build_application(settings, redis=redis, registry=registry)
    await application.initialize()
    try:
        await _post_init(application)
        assert application.updater is not None
        await start_updater(application.updater)
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
    support_group_id = services_of(application).settings.support_group_id
    exempt = [support_group_id] if support_group_id is not None else []
    application.add_handlers(fallback.build_group_handlers(exempt_chat_ids=exempt))
    for module in (
        start,
        commands,
        language_command,
        info,
        checklist,
        partner,
        app_step,
        qr,
        consent,
    ):
        application.add_handlers(module.build_handlers())
    if support_group_id is not None:
        application.add_handlers(support_handlers.build_handlers(support_group_id))
    application.add_handlers(fallback.build_handlers())
    # Group -2 runs before every other group: it only records that a client
    # blocked the bot or wrote again, for the reminders, and never replies.
    application.add_handlers(reminders.build_handlers(), group=-2)
    for handler, group in metrics.build_handlers():
        application.add_handler(handler, group)
    application.add_error_handler(handle_error)


async def _post_init(application: BotApplication) -> None:
    await _set_commands(application)
    services = services_of(application)
    desk: SupportDesk | None = None
    if services.settings.support_group_id is not None:
        desk = SupportDesk(services, application.bot)
        application.bot_data[SUPPORT_DESK_KEY] = desk
        await desk.start()
    processor = application.update_processor
    consumer = EventConsumer(
        services,
        application.bot,
        services.settings.consumer_name,
        support_desk=desk,
        chat_order=(
            processor if isinstance(processor, ChatOrderedUpdateProcessor) else None
        ),
    )
    application.bot_data[CONSUMER_KEY] = consumer
    consumer.start()
    await reminders.start_in_application(application, services.store.redis)
    settings = services.settings
    if settings.health_port is not None:
        application.bot_data[HEALTH_SERVER_KEY] = await health.start_server(
            services.store.redis, settings.health_listen, settings.health_port
        )
    logger.info("bot started mode=%s", settings.mode)


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
    # The consumer stops first: the event at hand may still open a help
    # request through the desk.
    consumer: EventConsumer | None = application.bot_data.get(CONSUMER_KEY)
    if consumer is not None:
        await consumer.stop()
    await reminders.stop_in_application(application)
    desk: SupportDesk | None = application.bot_data.get(SUPPORT_DESK_KEY)
    if desk is not None:
        await desk.stop()


async def _post_shutdown(application: BotApplication) -> None:
    # Stopping twice is harmless; post_stop does not run when start failed.
    await _post_stop(application)
    services = services_of(application)
    await services.service.close()
    health_server = application.bot_data.pop(HEALTH_SERVER_KEY, None)
    if health_server is not None:
        await health_server.cleanup()
    if application.bot_data.get(OWNED_REDIS_KEY):
        await services.store.redis.aclose()
    logger.info("bot stopped")
