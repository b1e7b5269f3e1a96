"""The support desk: topics, help requests, takeover, hand back, close, timeouts.

A case's support state is in its Redis hash (``Case.support_state``):
``requested`` while a help request waits, ``active`` while an agent has the
conversation, ``closed`` after an agent closed the topic, else empty. The
topic of a case is found from a Telegram update through
``keys.support_topic``. Every Bot API call that posts in the support group
runs as a job of one ``GroupSendQueue``, so the calls keep their order, and the
bot's rate limiter (``bot.telegram_limits``) keeps the group's limit.
Reminders are paused through ``ReminderScheduler`` from the help request
until the conversation goes back to the bot.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError
from telegram import Bot, Message, MessageEntity
from telegram.constants import ChatMemberStatus
from telegram.error import BadRequest, Forbidden, TelegramError

from bot.i18n import translate
from bot.services import BotServices
from bot.support.group_queue import GroupSendQueue
from bot.support.hours import WEEKDAYS, OpeningHours, format_minutes
from bot.support.summary import agent_text, render_summary, topic_name
from handlers.render import render_step
from journey import keys
from journey.model import Case
from journey.reminders import ReminderScheduler
from journey.steps import TransitionRejected
from journey.store import CaseNotFound, StaleCase

logger = logging.getLogger(__name__)

SUPPORT_REQUESTED = "requested"
SUPPORT_ACTIVE = "active"
SUPPORT_CLOSED = "closed"
RELAYED_STATES = frozenset({SUPPORT_REQUESTED, SUPPORT_ACTIVE})
"""States in which the client's messages are copied into the topic."""

AGENT_STATUSES = frozenset(
    {ChatMemberStatus.OWNER, ChatMemberStatus.ADMINISTRATOR, ChatMemberStatus.MEMBER}
)
"""Members of the support group with one of these statuses may act as agents."""

TIMEOUT_POLL_SECONDS = 5.0
"""How often the desk looks for help requests past their takeover deadline;
a client waits at most this much longer than the configured timeout."""

_TOPIC_GONE = ("message thread not found", "topic_deleted", "topic_id_invalid")
"""Lowercase fragments of Telegram's errors for a deleted topic."""

# KEYS[1] the sorted set of deadlines. ARGV[1] now. Removes and returns the
# members that are due, so of two desks only one handles each timeout.
_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, member in ipairs(due) do redis.call('ZREM', KEYS[1], member) end
return due
"""


class HelpOutcome(enum.Enum):
    """Outcome of a help request."""

    REQUESTED = "requested"
    ALREADY = "already"
    FAILED = "failed"


def is_topic_gone(error: TelegramError) -> bool:
    """Tell whether ``error`` reports that the topic no longer exists."""
    return any(fragment in error.message.lower() for fragment in _TOPIC_GONE)


class SupportDesk:
    """Hands conversations between the bot and the agents of the support group.

    Args:
        services: the bot's store, registry and settings; the settings name
            the group.
        bot: the PTB bot that makes the calls.
        clock: Unix time source for opening hours and deadlines.
    """

    def __init__(
        self,
        services: BotServices,
        bot: Bot,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        settings = services.settings
        if settings.support_group_id is None:
            raise ValueError("a support desk needs settings.support_group_id")
        self._services = services
        self._bot = bot
        self._clock = clock
        self.group_id: int = settings.support_group_id
        self.queue = GroupSendQueue()
        self.available = False
        """Whether the start-up check found the group usable."""
        self._reminders = ReminderScheduler(services.store.redis)
        self._claim_due = services.store.redis.register_script(_CLAIM_DUE)
        self._stopping = asyncio.Event()
        self._timeouts: asyncio.Task[None] | None = None

    # Start and stop

    async def start(self) -> None:
        """Check the group, start the send queue and the takeover timeouts."""
        problems = await self.check_group()
        self.available = not problems
        for problem in problems:
            logger.error(
                "support group unusable group=%s problem=%s", self.group_id, problem
            )
        self.queue.start()
        self._stopping.clear()
        self._timeouts = asyncio.create_task(
            self._run_timeouts(), name="gv-support-timeouts"
        )
        logger.info(
            "support desk started group=%s available=%s", self.group_id, self.available
        )

    async def stop(self) -> None:
        """Stop the timeout task and the send queue."""
        self._stopping.set()
        if self._timeouts is not None:
            self._timeouts.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timeouts
            self._timeouts = None
        await self.queue.stop()
        logger.info("support desk stopped group=%s", self.group_id)

    async def check_group(self) -> list[str]:
        """Return what keeps the bot from running the support group; empty if fine.

        The bot must be an administrator of a supergroup with topics, with the
        rights to manage topics and to pin messages.
        """
        try:
            chat = await self._bot.get_chat(self.group_id)
            member = await self._bot.get_chat_member(self.group_id, self._bot.id)
        except TelegramError as error:
            return [
                f"the group cannot be read ({error.message}); add the bot to the "
                "group and check SUPPORT_GROUP_ID"
            ]
        problems = []
        if not chat.is_forum:
            problems.append("the group has no topics; switch on topics in its settings")
        if member.status not in (
            ChatMemberStatus.ADMINISTRATOR,
            ChatMemberStatus.OWNER,
        ):
            problems.append(
                f"the bot is {member.status}, not an administrator; make it an "
                "administrator with the rights to manage topics and pin messages"
            )
            return problems
        if not getattr(member, "can_manage_topics", False):
            problems.append("the bot lacks the administrator right to manage topics")
        if not getattr(member, "can_pin_messages", False):
            problems.append("the bot lacks the administrator right to pin messages")
        return problems

    # Questions

    def is_open(self) -> bool:
        """Tell whether the helpdesk is open now."""
        return self._services.settings.support_opening_hours.is_open(self._clock())

    def hours_text(self, language: str) -> str:
        """Describe the helpdesk's opening hours in ``language``."""
        return describe_hours(self._services.settings.support_opening_hours, language)

    async def is_agent(self, user_id: int) -> bool:
        """Tell whether ``user_id`` is a member of the support group now."""
        try:
            member = await self._bot.get_chat_member(self.group_id, user_id)
        except TelegramError as error:
            logger.info("agent check failed error=%s", error.message)
            return False
        return member.status in AGENT_STATUSES

    async def case_of_topic(self, thread_id: int) -> Case | None:
        """Return the open case whose topic is ``thread_id``, or None."""
        case_id = await self._services.store.redis.get(
            keys.support_topic(self.group_id, thread_id)
        )
        if case_id is None:
            return None
        case = await self._services.store.find(case_id)
        if case is None or case.tombstone or case.support_topic_id != thread_id:
            return None
        return case

    # The client's side

    async def request_help(
        self,
        case: Case,
        *,
        note_key: str = "support.note.requested",
        **note_values: object,
    ) -> HelpOutcome:
        """Open a help request and return what became of it.

        The case's topic is made or reused and gets a pinned summary and a
        note for the agents; the takeover deadline starts and reminders pause.

        Args:
            case: the client's case.
            note_key: catalog key of the note; by default the client's own
                request for help.
            **note_values: values for the note besides the case reference.
        """
        if case.support_state in RELAYED_STATES:
            return HelpOutcome.ALREADY
        job = self.queue.submit(
            lambda: self._open_request(case.case_id, note_key, note_values)
        )
        try:
            opened = await job
        except (TelegramError, RedisError, CaseNotFound, TransitionRejected, StaleCase):
            logger.warning("help request failed case=%s", case.ref, exc_info=True)
            return HelpOutcome.FAILED
        if not opened:
            return HelpOutcome.FAILED

        deadline = self._clock() + self._services.settings.support_takeover_timeout
        redis = self._services.store.redis
        await redis.zadd(keys.support_timeouts(), {case.case_id: deadline})
        await redis.expire(keys.support_timeouts(), keys.SUPPORT_TIMEOUTS_TTL_SECONDS)
        await self._reminders.pause(case.case_id)
        logger.info("help requested case=%s", case.ref)
        return HelpOutcome.REQUESTED

    def relay_to_topic(self, case: Case, message_id: int) -> None:
        """Queue a copy of the client's message into the case's topic.

        The copy is protected, so agents cannot forward or save it.
        """
        assert case.chat_id is not None
        chat_id = case.chat_id

        async def copy() -> None:
            await self._in_topic(
                case.case_id,
                lambda thread_id: self._bot.copy_message(
                    self.group_id,
                    from_chat_id=chat_id,
                    message_id=message_id,
                    message_thread_id=thread_id,
                    protect_content=True,
                ),
            )

        self.queue.post(copy, "relay_to_topic")

    # The agent's side

    async def take_over(self, case: Case) -> None:
        """Give the conversation to the agents: the bot goes silent."""
        await self._services.store.update(
            case.case_id, {"support_state": SUPPORT_ACTIVE}
        )
        await self._services.store.redis.zrem(keys.support_timeouts(), case.case_id)
        await self._reminders.pause(case.case_id)
        await self.note(case, "support.note.taken_over")
        await self._tell_client(case, "support.client.taken_over")
        logger.info("conversation taken over case=%s", case.ref)

    async def hand_back(self, case: Case) -> None:
        """Give the conversation back to the bot, which sends the current step."""
        await self._end(case, None)
        await self.note(case, "support.note.handed_back")
        await self._tell_client(case, "support.client.handed_back", with_step=True)
        logger.info("conversation handed back case=%s", case.ref)

    async def close(self, case: Case) -> None:
        """End the help: the bot takes over again and the topic is closed."""
        await self._end(case, SUPPORT_CLOSED)
        await self.note(case, "support.note.closed")
        await self._tell_client(case, "support.client.closed", with_step=True)
        thread_id = case.support_topic_id
        if thread_id is not None:
            self.queue.post(lambda: self._close_topic(thread_id), "close_topic")
        logger.info("support closed case=%s", case.ref)

    async def relay_to_client(self, case: Case, message: Message) -> None:
        """Copy an agent's message to the client, without the agent's name.

        With ``SUPPORT_AGENT_DISPLAY_NAME`` set, that name goes above the text
        or the caption; a sticker or a message without caption goes unsigned.
        """
        assert case.chat_id is not None
        display_name = self._services.settings.support_agent_display_name
        if display_name and message.text:
            prefix = display_name + ":\n"
            await self._bot.send_message(
                case.chat_id,
                prefix + message.text,
                entities=_shifted(message.entities, prefix),
            )
            return
        caption: str | None = None
        entities: list[MessageEntity] | None = None
        if display_name and message.caption is not None:
            prefix = display_name + ":\n"
            caption = prefix + message.caption
            entities = _shifted(message.caption_entities, prefix)
        await self._bot.copy_message(
            case.chat_id,
            from_chat_id=self.group_id,
            message_id=message.message_id,
            caption=caption,
            caption_entities=entities,
        )

    async def note(self, case: Case, key: str) -> None:
        """Post a note for the agents in the case's topic, through the queue."""
        text = agent_text(key, ref=case.ref)
        job = self.queue.submit(
            lambda: self._in_topic(
                case.case_id,
                lambda thread_id: self._bot.send_message(
                    self.group_id, text, message_thread_id=thread_id
                ),
            )
        )
        try:
            await job
        except TelegramError as error:
            logger.warning(
                "support note not sent case=%s error=%s", case.ref, error.message
            )

    async def note_in_thread(self, thread_id: int, key: str) -> None:
        """Post a note for the agents in a topic that belongs to no open case."""

        async def post() -> None:
            await self._bot.send_message(
                self.group_id, agent_text(key), message_thread_id=thread_id
            )

        try:
            await self.queue.submit(post)
        except TelegramError as error:
            logger.warning("support note not sent error=%s", error.message)

    # Timeouts

    async def expire_due_requests(self, now: float | None = None) -> int:
        """Give the contact details to every client whose request nobody took over.

        ``now`` is the Unix time to compare deadlines with, the clock's by
        default. Returns the number of requests that ran out.
        """
        moment = self._clock() if now is None else now
        due = await self._claim_due(keys=[keys.support_timeouts()], args=[moment])
        expired = 0
        for case_id in due:
            case = await self._services.store.find(case_id)
            if (
                case is None
                or case.tombstone
                or case.support_state != SUPPORT_REQUESTED
            ):
                continue
            await self._end(case, None)
            await self.note(case, "support.note.timed_out")
            await self._tell_client(case, "support.client.timed_out", with_step=True)
            logger.info("help request timed out case=%s", case.ref)
            expired += 1
        return expired

    async def _run_timeouts(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.expire_due_requests()
            except (RedisError, TelegramError) as error:
                logger.warning(
                    "support timeouts not checked error=%s", type(error).__name__
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), TIMEOUT_POLL_SECONDS)

    # Jobs of the queue

    async def _open_request(
        self, case_id: str, note_key: str, note_values: dict[str, object]
    ) -> bool:
        case = await self._services.store.get(case_id)
        if case.support_topic_id is None:
            await self._create_topic(case)
        elif case.support_state == SUPPORT_CLOSED:
            await self._reopen_topic(case.support_topic_id)
        await self._services.store.update(
            case_id,
            {"support_state": SUPPORT_REQUESTED, "support_requested_at": self._clock()},
        )
        await self._post_summary(case_id)
        await self._in_topic(
            case_id,
            lambda thread_id: self._bot.send_message(
                self.group_id,
                agent_text(note_key, ref=case.ref, **note_values),
                message_thread_id=thread_id,
            ),
        )
        return True

    async def _post_summary(self, case_id: str) -> None:
        case = await self._services.store.get(case_id)
        thread_id = case.support_topic_id
        if thread_id is None:
            thread_id = await self._create_topic(case)
        try:
            await self._post_summary_in(case_id, thread_id)
        except BadRequest as error:
            if not is_topic_gone(error):
                raise
            thread_id = await self._create_topic(case)
            await self._post_summary_in(case_id, thread_id)

    async def _in_topic(self, case_id: str, call: Callable[[int], Any]) -> Any:
        """Make ``call(thread_id)`` in the case's topic.

        A topic that an agent deleted is made again, once, with a new pinned
        summary, and the call goes there.
        """
        case = await self._services.store.get(case_id)
        thread_id = case.support_topic_id
        if thread_id is None:
            thread_id = await self._create_topic(case)
            await self._post_summary_in(case_id, thread_id)
        try:
            return await call(thread_id)
        except BadRequest as error:
            if not is_topic_gone(error):
                raise
        logger.info("support topic gone, recreated case=%s", case.ref)
        thread_id = await self._create_topic(case)
        await self._post_summary_in(case_id, thread_id)
        return await call(thread_id)

    async def _post_summary_in(self, case_id: str, thread_id: int) -> None:
        case = await self._services.store.get(case_id)
        state = await self._reminders.state(case_id)
        text = render_summary(case, self._services, len(state.sent))
        summary = await self._bot.send_message(
            self.group_id, text, message_thread_id=thread_id
        )
        await self._bot.pin_chat_message(
            self.group_id, summary.message_id, disable_notification=True
        )

    async def _create_topic(self, case: Case) -> int:
        topic = await self._bot.create_forum_topic(
            self.group_id, topic_name(case, self._services)
        )
        thread_id = topic.message_thread_id
        await self._services.store.update(case.case_id, {"support_topic_id": thread_id})
        lifetime = max(1, int(case.expires_at - self._clock()))
        await self._services.store.redis.set(
            keys.support_topic(self.group_id, thread_id), case.case_id, ex=lifetime
        )
        logger.info("support topic created case=%s thread=%s", case.ref, thread_id)
        return thread_id

    async def _reopen_topic(self, thread_id: int) -> None:
        try:
            await self._bot.reopen_forum_topic(self.group_id, thread_id)
        except BadRequest as error:
            # Open already, or deleted: _in_topic then makes a new one.
            logger.info("support topic not reopened error=%s", error.message)

    async def _close_topic(self, thread_id: int) -> None:
        try:
            await self._bot.close_forum_topic(self.group_id, thread_id)
        except BadRequest as error:
            logger.info("support topic not closed error=%s", error.message)

    # Helpers

    async def _end(self, case: Case, state: str | None) -> None:
        store = self._services.store
        if state is None:
            await store.update(case.case_id, {}, deletions=["support_state"])
        else:
            await store.update(case.case_id, {"support_state": state})
        await store.redis.zrem(keys.support_timeouts(), case.case_id)
        await self._reminders.resume(case.case_id)

    async def _tell_client(
        self, case: Case, key: str, *, with_step: bool = False
    ) -> None:
        if case.chat_id is None:
            return
        notice = translate(key, case.language, hours=self.hours_text(case.language))
        try:
            if with_step:
                current = await self._services.store.get(case.case_id)
                reply = render_step(current, self._services, notice=notice)
                await reply.send(self._bot, case.chat_id)
            else:
                await self._bot.send_message(case.chat_id, notice)
        except Forbidden:
            logger.info("client blocked the bot case=%s", case.ref)


def describe_hours(hours: OpeningHours, language: str) -> str:
    """Describe opening hours in words, one line per rule."""
    lines = []
    for rule in hours.rules:
        lines.append(
            translate(
                "support.hours.rule",
                language,
                days=_describe_days(rule.days, language),
                start=format_minutes(rule.start),
                end=format_minutes(rule.end),
            )
        )
    return "\n".join(lines)


def _describe_days(days: tuple[int, ...], language: str) -> str:
    names = [translate(f"label.weekday.{WEEKDAYS[day]}", language) for day in days]
    contiguous = list(days) == list(range(days[0], days[-1] + 1))
    if len(days) > 2 and contiguous:
        return translate(
            "support.hours.range", language, first=names[0], last=names[-1]
        )
    return ", ".join(names)


def _shifted(
    entities: tuple[MessageEntity, ...] | None, prefix: str
) -> list[MessageEntity] | None:
    """Move entities behind ``prefix``; offsets count UTF-16 code units."""
    if not entities:
        return None
    shift = len(prefix.encode("utf-16-le")) // 2
    moved = []
    for entity in entities:
        data = entity.to_dict()
        data["offset"] = entity.offset + shift
        moved.append(MessageEntity.de_json(data, None))
    return moved
