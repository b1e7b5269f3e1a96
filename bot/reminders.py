"""The reminder dispatcher: sends due reminders by chat or e-mail.

It runs inside the bot process and can run on its own as
``python -m bot.reminders``; any number of dispatchers may share one Redis.
Each claims due reminders from ``journey.reminders.ReminderScheduler`` and,
per reminder:

- drops it when the case is gone or finished, or waits in a step where the
  client has nothing left to do;
- parks it while support has the conversation or the client blocked the bot;
- moves it to the next opening of the send window when it is night;
- otherwise marks it as sent, then sends it: in the chat once one is linked,
  else by e-mail. The expiry notice is followed by the case's expiry.

A 403 from Telegram (the client blocked the bot) or a ``my_chat_member``
update with status ``kicked`` stops the case's reminders; the client's next
message or button starts them again (``build_handlers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from telegram import Bot, ChatMemberUpdated, Update
from telegram.constants import ChatMemberStatus, ChatType
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TimedOut
from telegram.ext import Application, BaseHandler, ChatMemberHandler, TypeHandler
from telegram.request import HTTPXRequest

from bot.config import send_limits_from_env
from bot.i18n import translate
from bot.metrics import REMINDERS
from bot.telegram_limits import (
    SendLimits,
    SharedRateLimiter,
    SharedTelegramLimits,
    preacquired_send_options,
    retry_after_seconds,
)
from journey.model import Case
from journey.reminders import (
    CLAIM_LEASE_SECONDS,
    DEFAULT_WINDOW_TEXT,
    Kind,
    Reminder,
    ReminderScheduler,
    SendWindow,
    WindowError,
    next_in_series,
    scan_open_cases,
    series_due_time,
)
from journey.steps import TERMINAL_STEPS, Event, Step, TransitionRejected
from journey.store import CaseNotFound, CaseStore, StaleCase
from pairing_service.mail import Mailer, MailError, MailSettings, build_message

logger = logging.getLogger(__name__)

CLAIM_BATCH = 64
"""Reminders claimed at once: two seconds of sending at 30 a second, well
inside the claim lease."""

CONCURRENT_SENDS = 1
"""Reminders in flight at once per process. Each is marked as sent just
before its request, so a process killed mid-send loses at most this many;
one keeps that loss to a single reminder. A process then sends at most one
reminder per Telegram round trip, so with round trips above 33 ms several
dispatcher processes are needed to use the whole 30 a second."""

IDLE_POLL_SECONDS = 1.0
"""Pause after a claim that found nothing due; also how soon ``stop`` acts."""

ERROR_BACKOFF_SECONDS = 2.0
"""Pause after Redis failed, so an outage is not a busy loop."""

TELEGRAM_TIMEOUT_SECONDS = 10.0
"""Read timeout of one sendMessage. A timed-out reminder is not sent again,
because Telegram may have delivered it."""

NO_REMINDER_STEPS: frozenset[Step] = frozenset({Step.DELIVERING, Step.DELIVERY_FAILED})
"""Steps in which the client has done everything; only support acts then."""

MAIL_RETRY_SECONDS = 600.0
"""Wait before a reminder e-mail is tried again after the SMTP server was
unreachable; mail servers come back within minutes or need an operator."""

REMINDER_TEXT_KEYS: dict[Kind, str] = {
    Kind.FIRST: "reminder.first",
    Kind.SECOND: "reminder.second",
    Kind.LAST: "reminder.last",
    Kind.LATER: "reminder.later",
    Kind.EXPIRY: "reminder.expired",
}

_HOLDING_STATUSES = frozenset({ChatMemberStatus.BANNED})
"""``kicked`` in the Bot API: the client blocked the bot in a private chat."""

REMINDERS_KEY = "reminders"
"""Key of the ``ReminderScheduler`` in ``application.bot_data``."""

_DISPATCHER_KEY = "reminder_dispatcher"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one claimed reminder, for counters and tests."""

    reminder: Reminder
    result: str
    """``sent``, ``emailed``, ``dropped``, ``parked``, ``deferred``,
    ``already_sent``, ``skipped``, ``blocked``, ``rate_limited``, ``retry_later``
    or ``failed``."""


class ReminderDispatcher:
    """Claims due reminders and sends them.

    Args:
        scheduler: the reminder queue.
        store: the case store, to read cases and expire them.
        bot: a PTB bot, initialized by the caller, that sends chat reminders.
        limits: Telegram's shared send limits.
        mailer: sends e-mail reminders; None when no SMTP server is set up.
    """

    def __init__(
        self,
        scheduler: ReminderScheduler,
        store: CaseStore,
        bot: Bot,
        limits: SharedTelegramLimits,
        mailer: Mailer | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._store = store
        self._bot = bot
        self._limits = limits
        # The dispatcher acquires the limits itself, right before it marks a
        # reminder as sent, so the bot's own rate limiter must not count it again.
        self._send_options = preacquired_send_options(bot)
        self._mailer = mailer
        self._sends = asyncio.Semaphore(CONCURRENT_SENDS)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.counts: dict[str, int] = {}

    @property
    def scheduler(self) -> ReminderScheduler:
        """The reminder queue this dispatcher claims from."""
        return self._scheduler

    def request_stop(self) -> None:
        """Ask ``run`` to return after the batch at hand; safe in a signal handler."""
        self._stopping.set()

    def start(self) -> None:
        """Run the dispatcher in a background task."""
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.create_task(self.run(), name="gv-reminders")

    async def stop(self) -> None:
        """Stop claiming and wait for the reminders at hand."""
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def run(self) -> None:
        """Claim and send reminders until ``stop`` is called."""
        logger.info("reminder dispatcher started")
        await self.rebuild_if_lost()
        while not self._stopping.is_set():
            try:
                outcomes = await self.dispatch_once()
            except RedisError as error:
                logger.warning(
                    "reminder claim failed error=%s retry_in=%s",
                    type(error).__name__,
                    ERROR_BACKOFF_SECONDS,
                )
                await self._pause(ERROR_BACKOFF_SECONDS)
                continue
            if not outcomes:
                await self._pause(IDLE_POLL_SECONDS)
        logger.info("reminder dispatcher stopped counts=%s", self.counts)

    async def rebuild_if_lost(self) -> int:
        """Rebuild the queue from the cases when it is empty; return the count.

        NOTE: a queue that lost only some of its members is not detected.
        """
        try:
            if await self._scheduler.queue_size() > 0:
                return 0
            return await self._scheduler.rebuild(scan_open_cases(self._store.redis))
        except RedisError as error:
            logger.warning("reminder rebuild failed error=%s", type(error).__name__)
            return 0

    async def dispatch_once(self) -> list[Outcome]:
        """Claim one batch of due reminders and handle each; return the outcomes."""
        claim = await self._scheduler.claim(CLAIM_BATCH)
        if not claim.reminders:
            return []
        results = await asyncio.gather(
            *(self._handle(reminder, claim.now) for reminder in claim.reminders),
            return_exceptions=True,
        )
        outcomes = []
        for reminder, result in zip(claim.reminders, results, strict=True):
            if isinstance(result, BaseException):
                # The claim stays and its lease ends, so another round retries it.
                logger.error(
                    "reminder failed kind=%s error=%s", reminder.kind, repr(result)
                )
                result = Outcome(reminder, "failed")
            outcomes.append(result)
            self.counts[result.result] = self.counts.get(result.result, 0) + 1
            REMINDERS.labels(result.result).inc()
        return outcomes

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _handle(self, reminder: Reminder, now: float) -> Outcome:
        scheduler = self._scheduler
        case = await self._store.find(reminder.case_id)
        if case is None or case.tombstone or case.step in TERMINAL_STEPS:
            await scheduler.cancel(reminder.case_id)
            return Outcome(reminder, "dropped")
        if case.step in NO_REMINDER_STEPS:
            await scheduler.complete(reminder, None)
            return Outcome(reminder, "dropped")

        state = await scheduler.state(case.case_id)
        if state.paused or (state.blocked and reminder.kind is not Kind.EXPIRY):
            await scheduler.park(reminder)
            return Outcome(reminder, "parked")
        if not scheduler.window.contains(now):
            await scheduler.defer(reminder, scheduler.window.next_opening(now))
            return Outcome(reminder, "deferred")

        next_due = self._next_due(reminder, case)
        if next_due is not None and next_due <= now and reminder.kind is not Kind.LATER:
            # A worker outage let the next reminder fall due too; send only that.
            await scheduler.complete(reminder, next_due)
            return Outcome(reminder, "skipped")

        if state.blocked:
            result = "blocked"
        elif case.chat_id is not None:
            result = await self._send_chat(reminder, case, now)
        else:
            result = await self._send_email(reminder, case, now)

        if result == "already_sent":
            # A claim that came back after a crash: its worker marked it, and
            # may or may not have sent it, so it is never sent again.
            await self._finish(reminder, case, next_due)
            return Outcome(reminder, result)
        if result in ("rate_limited", "retry_later"):
            return Outcome(reminder, result)
        if result == "blocked":
            if reminder.kind is not Kind.EXPIRY:
                await scheduler.unmark(reminder)
                await scheduler.block(case.case_id)
                await scheduler.park(reminder)
                return Outcome(reminder, "blocked")
        await self._finish(reminder, case, next_due)
        return Outcome(reminder, result)

    def _next_due(self, reminder: Reminder, case: Case) -> float | None:
        following = next_in_series(reminder.kind)
        if following is None:
            return None
        return series_due_time(following, case.created_at, self._scheduler.window)

    async def _finish(
        self, reminder: Reminder, case: Case, next_due: float | None
    ) -> None:
        if reminder.kind is Kind.EXPIRY:
            await self._expire(case)
            await self._scheduler.cancel(case.case_id)
            return
        await self._scheduler.complete(reminder, next_due)

    async def _expire(self, case: Case) -> None:
        try:
            await self._store.finish(case.case_id, Event.EXPIRE)
        except (CaseNotFound, TransitionRejected, StaleCase) as error:
            logger.info(
                "case not expired case=%s reason=%s", case.ref, type(error).__name__
            )
            return
        if case.chat_id is not None:
            await self._store.unlink_chat(case.chat_id, case.case_id)
        logger.info("case expired case=%s", case.ref)

    async def _send_chat(self, reminder: Reminder, case: Case, now: float) -> str:
        assert case.chat_id is not None
        text = translate(REMINDER_TEXT_KEYS[reminder.kind], case.language)
        async with self._sends:
            await self._limits.acquire(case.chat_id)
            # Mark right before the request: a crash between the two loses this
            # reminder, but none is sent twice, and Telegram has no idempotency key.
            if not await self._scheduler.mark_sent(reminder, now):
                return "already_sent"
            try:
                await self._bot.send_message(case.chat_id, text, **self._send_options)
            except RetryAfter as error:
                # A 429 is a certain non-delivery, so sending again is safe.
                seconds = retry_after_seconds(error)
                await self._limits.pause(seconds)
                await self._scheduler.unmark(reminder)
                now = await self._scheduler.now()
                await self._scheduler.defer(reminder, now + seconds)
                logger.warning("reminder rate limited case=%s", case.ref)
                return "rate_limited"
            except Forbidden:
                logger.info("reminder rejected, bot blocked case=%s", case.ref)
                return "blocked"
            except TimedOut:
                # Telegram may have delivered it; a second copy is worse than none.
                logger.warning("reminder timed out, not resent case=%s", case.ref)
                return "failed"
            except BadRequest as error:
                logger.warning(
                    "reminder rejected case=%s error=%s", case.ref, error.message
                )
                return "failed"
            except NetworkError as error:
                logger.warning(
                    "reminder send failed, not resent case=%s error=%s",
                    case.ref,
                    type(error).__name__,
                )
                return "failed"
        logger.info("reminder sent case=%s kind=%s", case.ref, reminder.kind)
        return "sent"

    async def _send_email(self, reminder: Reminder, case: Case, now: float) -> str:
        if case.email is None or self._mailer is None:
            logger.info("reminder has no channel case=%s", case.ref)
            return "dropped"
        name = "expired" if reminder.kind is Kind.EXPIRY else "reminder"
        message = build_message(self._mailer.settings, case.email, name, case.language)
        if not await self._scheduler.mark_sent(reminder, now):
            return "already_sent"
        try:
            await self._mailer.send(message, case_ref=case.ref)
        except MailError as error:
            if error.maybe_delivered:
                return "failed"
            # The server was never reached, so sending later sends one copy.
            await self._scheduler.unmark(reminder)
            now = await self._scheduler.now()
            await self._scheduler.defer(reminder, now + MAIL_RETRY_SECONDS)
            return "retry_later"
        return "emailed"


# The bot's side: block and unblock from updates, and the lifecycle hooks.


async def handle_member_update(update: Update, context: Any) -> None:
    """Stop a case's reminders when the client blocks the bot in a private chat."""
    change: ChatMemberUpdated | None = update.my_chat_member
    if change is None or change.chat.type != ChatType.PRIVATE:
        return
    if change.new_chat_member.status not in _HOLDING_STATUSES:
        return
    scheduler: ReminderScheduler | None = context.bot_data.get(REMINDERS_KEY)
    store = _store_of(context)
    if scheduler is None or store is None:
        return
    case = await store.find_by_chat(change.chat.id)
    if case is not None:
        await scheduler.block(case.case_id)
        logger.info("reminders stopped, bot blocked case=%s", case.ref)


async def handle_client_activity(update: Update, context: Any) -> None:
    """Restart the reminders of a client who blocked the bot and writes again."""
    chat = update.effective_chat
    if chat is None or chat.type != ChatType.PRIVATE or update.my_chat_member:
        return
    scheduler: ReminderScheduler | None = context.bot_data.get(REMINDERS_KEY)
    store = _store_of(context)
    if scheduler is None or store is None:
        return
    case = await store.find_by_chat(chat.id)
    if case is None:
        return
    state = await scheduler.state(case.case_id)
    if state.blocked:
        await scheduler.unblock(case.case_id)
        logger.info("reminders resumed case=%s", case.ref)


def _store_of(context: Any) -> CaseStore | None:
    services = context.bot_data.get("services")
    return getattr(services, "store", None)


def build_handlers() -> list[BaseHandler[Update, Any, Any]]:
    """Return the handlers for handler group -2, which run before every step.

    They never reply and never stop other handlers, so each update still
    reaches its step handler in group 0.
    """
    return [
        ChatMemberHandler(handle_member_update, ChatMemberHandler.MY_CHAT_MEMBER),
        TypeHandler(Update, handle_client_activity),
    ]


@dataclass(frozen=True, slots=True)
class ReminderSettings:
    """Settings of the dispatcher, read from the environment."""

    window: SendWindow
    send_limits: SendLimits = field(default_factory=SendLimits)
    lease_seconds: float = CLAIM_LEASE_SECONDS
    mail: MailSettings | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ReminderSettings:
        """Read ``REMINDER_SEND_WINDOW`` (``HH:MM-HH:MM`` in Amsterdam time,
        default 09:00-20:00), Telegram's send limits as the bot reads them
        (``bot.config.send_limits_from_env``), ``REMINDER_CLAIM_LEASE_SECONDS``
        (default 60) and the ``SMTP_*`` variables of
        ``pairing_service.mail.MailSettings``.

        Raises:
            ValueError: a variable is invalid; the message names it.
        """
        window_text = environ.get("REMINDER_SEND_WINDOW", "") or DEFAULT_WINDOW_TEXT
        try:
            window = SendWindow.parse(window_text)
        except WindowError as error:
            raise ValueError(f"REMINDER_SEND_WINDOW: {error}") from None
        return cls(
            window=window,
            send_limits=send_limits_from_env(environ),
            lease_seconds=_positive(
                environ, "REMINDER_CLAIM_LEASE_SECONDS", CLAIM_LEASE_SECONDS
            ),
            mail=MailSettings.from_env(environ),
        )


def _positive(environ: Mapping[str, str], name: str, default: float) -> float:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}: must be a number, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"{name}: must be above 0, got {value}")
    return value


def build_dispatcher(
    redis: Redis,
    bot: Bot,
    settings: ReminderSettings,
    limits: SharedTelegramLimits | None = None,
) -> ReminderDispatcher:
    """Build a dispatcher on ``redis`` that sends through ``bot``.

    Without ``limits``, the dispatcher applies ``settings.send_limits``.
    """
    scheduler = ReminderScheduler(
        redis, window=settings.window, lease_seconds=settings.lease_seconds
    )
    if limits is None:
        limits = SharedTelegramLimits(redis, bot.token, settings.send_limits)
    mailer = Mailer(settings.mail) if settings.mail is not None else None
    return ReminderDispatcher(scheduler, CaseStore(redis), bot, limits, mailer)


async def start_in_application(
    application: Application[Any, Any, Any, Any, Any, Any], redis: Redis
) -> None:
    """Start a dispatcher inside the bot process, on the application's bot.

    The dispatcher counts its messages in the limits of the bot's
    ``SharedRateLimiter``, so it sends at the rates of the bot's settings.
    """
    settings = ReminderSettings.from_env(os.environ)
    rate_limiter = application.bot.rate_limiter
    limits = (
        rate_limiter.limits if isinstance(rate_limiter, SharedRateLimiter) else None
    )
    dispatcher = build_dispatcher(redis, application.bot, settings, limits)
    application.bot_data[REMINDERS_KEY] = dispatcher.scheduler
    application.bot_data[_DISPATCHER_KEY] = dispatcher
    dispatcher.start()


async def stop_in_application(
    application: Application[Any, Any, Any, Any, Any, Any],
) -> None:
    """Stop the dispatcher that ``start_in_application`` started, if any."""
    dispatcher: ReminderDispatcher | None = application.bot_data.pop(
        _DISPATCHER_KEY, None
    )
    if dispatcher is not None:
        await dispatcher.stop()


def scheduler_of(bot_data: Mapping[str, Any]) -> ReminderScheduler | None:
    """Return the scheduler of the running bot, or None before it started."""
    scheduler: ReminderScheduler | None = bot_data.get(REMINDERS_KEY)
    return scheduler


async def _run_standalone() -> int:
    environ = os.environ
    token = environ.get("TELEGRAM_BOT_TOKEN", "").strip()
    redis_url = environ.get("REDIS_URL", "").strip()
    if not token or not redis_url:
        logger.error(
            "configuration invalid: TELEGRAM_BOT_TOKEN and REDIS_URL are required"
        )
        return 2
    try:
        settings = ReminderSettings.from_env(environ)
    except ValueError as error:
        logger.error("configuration invalid: %s", error)
        return 2

    redis = Redis.from_url(redis_url, decode_responses=True)
    bot = Bot(
        token,
        base_url=environ.get("TELEGRAM_API_BASE_URL") or "https://api.telegram.org/bot",
        request=HTTPXRequest(
            connection_pool_size=CONCURRENT_SENDS,
            read_timeout=TELEGRAM_TIMEOUT_SECONDS,
        ),
    )
    dispatcher = build_dispatcher(redis, bot, settings)
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, dispatcher.request_stop)
    try:
        await bot.initialize()
        await dispatcher.run()
    finally:
        await bot.shutdown()
        await redis.aclose()
    return 0


def main() -> int:
    """Run a dispatcher on its own until SIGINT or SIGTERM."""
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return asyncio.run(_run_standalone())


if __name__ == "__main__":
    sys.exit(main())
