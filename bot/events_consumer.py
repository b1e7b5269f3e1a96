"""Consumer of the pairing service's events: a message to the client for each.

Reads ``journey.events.EventStream`` in the consumer group ``bot`` under a
name unique to this process, renders each event in the case's chat and
acknowledges it afterwards. The events of one batch are handled concurrently
across cases and in stream order within a case. An event that failed for a
passing reason (network, Telegram flood control) stays unacknowledged, so the
stream hands it out again after ``journey.events.CLAIM_IDLE_MS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.exceptions import RedisError
from telegram import Bot
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter

from bot.i18n import translate
from bot.services import BotServices
from bot.support.desk import SUPPORT_ACTIVE, HelpOutcome, SupportDesk
from bot.update_order import ChatOrderedUpdateProcessor
from handlers.render import Reply, render_progress, render_step
from journey.events import EventType, ServiceEvent
from journey.model import Case
from journey.steps import Step
from journey.store import CaseNotFound, StaleCase

logger = logging.getLogger(__name__)

READ_BLOCK_MS = 1000
"""How long one read waits for new events; also how fast ``stop`` takes effect."""

READ_BATCH = 20
"""Events read at once, and so the maximum number of cases handled at the same
time. Each event needs one or two Telegram calls."""

ERROR_BACKOFF_SECONDS = 2.0
"""Pause after Redis failed, so a Redis outage is not a busy loop."""

_NOT_MODIFIED = "message is not modified"


class EventConsumer:
    """Reads service events and renders them for the client.

    Args:
        services: the bot's store, event stream and registry.
        bot: the PTB bot that sends the messages.
        consumer_name: this process's name in the consumer group.
    """

    def __init__(
        self,
        services: BotServices,
        bot: Bot,
        consumer_name: str,
        *,
        support_desk: SupportDesk | None = None,
        chat_order: ChatOrderedUpdateProcessor | None = None,
    ) -> None:
        self._services = services
        self._bot = bot
        self._consumer = consumer_name
        self._support_desk = support_desk
        self._chat_order = chat_order
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._handling = False

    def start(self) -> None:
        """Start reading in a background task."""
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.create_task(self.run(), name="gv-event-consumer")

    async def stop(self) -> None:
        """Stop reading and wait for the event at hand to finish."""
        self._stopping.set()
        if self._task is None:
            return
        if not self._handling:
            # Cancelling a blocked read loses nothing: entries it may already
            # have taken stay pending and are claimed again after CLAIM_IDLE_MS.
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def run(self) -> None:
        """Read and handle events until ``stop`` is called."""
        events = self._services.events
        while not self._stopping.is_set():
            try:
                await events.ensure_group()
                break
            except RedisError as error:
                logger.warning(
                    "event group not created, retrying error=%s", type(error).__name__
                )
                await self._pause(ERROR_BACKOFF_SECONDS)
        logger.info("event consumer started consumer=%s", self._consumer)
        while not self._stopping.is_set():
            try:
                batch = await events.read(
                    self._consumer, count=READ_BATCH, block_ms=READ_BLOCK_MS
                )
            except RedisError as error:
                logger.warning("event read failed error=%s", type(error).__name__)
                await self._pause(ERROR_BACKOFF_SECONDS)
                continue
            self._handling = True
            try:
                await self._handle_batch(batch)
            finally:
                self._handling = False
        logger.info("event consumer stopped consumer=%s", self._consumer)

    async def _handle_batch(self, batch: list[ServiceEvent]) -> None:
        # Cases are independent, so each case's events run in a task of their
        # own and one slow chat does not hold up the others. Within a case the
        # events keep their stream order, because a progress edit must find the
        # message that the case's previous event sent.
        by_case: dict[str, list[ServiceEvent]] = {}
        for event in batch:
            by_case.setdefault(event.case_id, []).append(event)
        if len(by_case) == 1:
            await self._handle_in_order(batch)
            return
        await asyncio.gather(
            *(self._handle_in_order(events) for events in by_case.values())
        )

    async def _handle_in_order(self, events: list[ServiceEvent]) -> None:
        for event in events:
            await self.handle(event)

    async def handle(self, event: ServiceEvent) -> None:
        """Render one event and acknowledge it, unless it should be tried again."""
        try:
            done = await self._render(event)
        except RetryAfter as error:
            logger.warning(
                "event delayed by flood control event=%s retry_after=%s",
                event.type,
                error.retry_after,
            )
            done = False
        except (NetworkError, RedisError, StaleCase) as error:
            # NetworkError covers timeouts. BadRequest is a subclass too, but
            # _render handles it and never lets it out.
            logger.warning(
                "event not handled event=%s error=%s", event.type, type(error).__name__
            )
            done = False
        except Exception:
            # An event that fails for a reason that will not pass would come
            # back forever; it is logged and dropped instead.
            logger.exception("event failed for good event=%s", event.type)
            done = True
        if not done:
            return
        try:
            await self._services.events.ack(event)
        except RedisError as error:
            # The event stays pending and is handed out again after
            # CLAIM_IDLE_MS, so the client may see its message twice.
            logger.warning(
                "event not acknowledged event=%s error=%s",
                event.type,
                type(error).__name__,
            )

    async def _render(self, event: ServiceEvent) -> bool:
        case = await self._services.store.find(event.case_id)
        chat_id = _chat_of(case, event)
        reference = case.ref if case is not None else "-"
        if case is None or chat_id is None:
            logger.info(
                "event for a case without chat acknowledged case=%s event=%s",
                reference,
                event.type,
            )
            return True
        if case.support_state == SUPPORT_ACTIVE and not case.tombstone:
            # An agent has the chat, so the bot stays silent; hand back sends
            # the current step, which shows what these events changed. A
            # failed delivery is news the agent must have at once.
            logger.info("event held for support case=%s event=%s", case.ref, event.type)
            if event.type is EventType.DELIVERY_FAILED:
                await self._tell_support_of_failure(case, event.data, client_told=False)
            return True

        try:
            async with self._turn_of(chat_id):
                await self._send_for(event, case, chat_id)
        except Forbidden:
            # The client blocked the bot or deleted the chat.
            logger.info(
                "chat gone, event dropped case=%s event=%s", case.ref, event.type
            )
        except BadRequest as error:
            logger.warning(
                "event rejected by Telegram case=%s event=%s error=%s",
                case.ref,
                event.type,
                error.message,
            )
        else:
            logger.debug("event rendered case=%s event=%s", case.ref, event.type)
        return True

    def _turn_of(self, chat_id: int) -> contextlib.AbstractAsyncContextManager[None]:
        # NOTE: the turn orders an event's message after the update being
        # handled in this process only. With several webhook replicas, the
        # reply to an update on another replica may still come second.
        if self._chat_order is None:
            return contextlib.nullcontext()
        return self._chat_order.chat_turn(chat_id)

    async def _send_for(self, event: ServiceEvent, case: Case, chat_id: int) -> None:
        language = str(event.data.get("language") or case.language)
        municipality = self._services.municipality_name(case.municipality_code)

        if event.type is EventType.PAIRING_CLAIMED:
            await Reply(translate("paired.body", language)).send(self._bot, chat_id)
        elif event.type is EventType.PROGRESS:
            await self._show_progress(case, chat_id, event.data)
        elif event.type is EventType.REVIEW_READY:
            await Reply(translate("review.body", language)).send(self._bot, chat_id)
        elif event.type is EventType.CONSENT_NEEDED:
            await self._ask_consent(case, chat_id)
        elif event.type is EventType.DELIVERED:
            text = translate("delivered.body", language, municipality=municipality)
            await Reply(text).send(self._bot, chat_id)
        elif event.type is EventType.DELIVERY_FAILED:
            await Reply(translate("delivery_failed.body", language)).send(
                self._bot, chat_id
            )
            await self._tell_support_of_failure(case, event.data, client_told=True)
        elif event.type is EventType.REFUSED:
            # The consent handler confirms the refusal in the same tap that
            # caused it, so the event only closes the case's trail.
            logger.debug("refusal already confirmed case=%s", case.ref)

    async def _tell_support_of_failure(
        self, case: Case, data: dict[str, Any], *, client_told: bool
    ) -> None:
        # Without a support group, the service's ERROR line and the dead-letter
        # list (python -m pairing_service.admin dead-letters) are the signal.
        desk = self._support_desk
        if desk is None or not desk.available:
            return
        if not client_told:
            await desk.note(case, "support.note.delivery_failed_silent")
            outcome = HelpOutcome.ALREADY
        else:
            outcome = await desk.request_help(
                case,
                note_key="support.note.delivery_failed",
                attempts=str(data.get("attempts", "?")),
                reason=str(data.get("reason", "?")),
            )
            if outcome is HelpOutcome.ALREADY:
                # The client asked for help before: the topic is open already.
                await desk.note(case, "support.note.delivery_failed_open")
        logger.info(
            "delivery failure reported to support case=%s outcome=%s",
            case.ref,
            outcome.name.lower(),
        )

    async def _ask_consent(self, case: Case, chat_id: int) -> None:
        if case.step not in (Step.CONSENT, Step.CONSENT_PARTNER):
            # The client replied before the event arrived, e.g. in a second tab.
            logger.info(
                "consent event for a later step case=%s step=%s", case.ref, case.step
            )
            return
        await render_step(case, self._services).send(self._bot, chat_id)

    async def _show_progress(
        self, case: Case, chat_id: int, data: dict[str, Any]
    ) -> None:
        # The stored progress is the newest. The event's copy may be older when
        # events arrive late, so it is used only when the case has none.
        if not case.progress and isinstance(data.get("progress"), dict):
            case.progress = data["progress"]
        text = render_progress(case)

        if case.progress_message_id is not None:
            try:
                await self._bot.edit_message_text(
                    text, chat_id=chat_id, message_id=case.progress_message_id
                )
                return
            except BadRequest as error:
                if _NOT_MODIFIED in error.message.lower():
                    return
                # The message was deleted or is too old to edit: send a new one.
                logger.info("progress message replaced case=%s", case.ref)

        message = await Reply(text).send(self._bot, chat_id)
        try:
            await self._services.store.update(
                case.case_id, {"progress_message_id": message.message_id}
            )
        except CaseNotFound:
            logger.info("case gone before progress was stored case=%s", case.ref)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)


def _chat_of(case: Case | None, event: ServiceEvent) -> int | None:
    if case is not None and case.chat_id is not None and not case.tombstone:
        return case.chat_id
    # A final event (delivered, refused) arrives after the service reduced the
    # case to a tombstone, which keeps no chat id, so the event carries it.
    raw = event.data.get("chat_id")
    if isinstance(raw, int) or (isinstance(raw, str) and raw.lstrip("-").isdigit()):
        return int(raw)
    return None
