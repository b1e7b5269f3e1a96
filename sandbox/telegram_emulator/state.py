"""In-memory state of the emulated Telegram: users, chats, messages, updates and files.

The state is a test double of Telegram's servers, not product state, so it lives
in memory and is lost when the emulator stops. Update ids and event sequence
numbers survive a reset, so a bot that keeps polling with an old offset still
receives the updates queued after the reset.
"""

import asyncio
import bisect
import itertools
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import limits
from .errors import BOT_BLOCKED, CANT_INITIATE, CHAT_NOT_FOUND, bad_request, forbidden
from .forum import ForumTopic, MemberRecord
from .ratelimit import RateLimiter, RateLimits
from .validation import ReplyMarkup

# Bot id used in updates that the testing API creates before the bot made any call.
# Once the bot calls the Bot API, the id comes from its token.
DEFAULT_BOT_ID = 7000000001

DEFAULT_BOT_USERNAME = "gezondverzekerd_test_bot"
DEFAULT_BOT_FIRST_NAME = "GezondVerzekerd Test"


class Notifier:
    """Wakes every coroutine that waits for the next change."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Wake all current waiters; later waiters wait for the next notify."""
        self._event.set()
        self._event = asyncio.Event()

    # The timeout is part of the contract: the wait ends with False, not an error.
    async def wait(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait up to ``timeout`` seconds for a notify; return whether one came."""
        event = self._event
        if timeout <= 0:
            return False
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True


@dataclass
class User:
    """A Telegram user played by a test or by a person on the chat page."""

    id: int
    first_name: str
    last_name: str | None = None
    username: str | None = None
    language_code: str | None = None
    blocked: bool = False

    def to_json(self) -> dict[str, Any]:
        """Build the User object of the Bot API."""
        data: dict[str, Any] = {
            "id": self.id,
            "is_bot": False,
            "first_name": self.first_name,
        }
        if self.last_name:
            data["last_name"] = self.last_name
        if self.username:
            data["username"] = self.username
        if self.language_code:
            data["language_code"] = self.language_code
        return data


@dataclass
class Chat:
    """A private chat with one user, or a group that users write in."""

    id: int
    type: str
    title: str | None = None
    username: str | None = None
    user: User | None = None
    instance: str = field(default_factory=lambda: str(secrets.randbits(62)))
    next_message_id: int = 1
    messages: dict[int, "Message"] = field(default_factory=dict)
    # The last reply keyboard that the bot showed, or None when none is shown.
    reply_keyboard: dict[str, Any] | None = None
    # Forum supergroups only: topics by message_thread_id (see forum.py).
    is_forum: bool = False
    topics: dict[int, "ForumTopic"] = field(default_factory=dict)
    # Group members that the testing API registered, by user id, and the bot's
    # own membership; getChatMember reads both.
    members: dict[int, "MemberRecord"] = field(default_factory=dict)
    bot_member: "MemberRecord | None" = None
    pinned_message_ids: list[int] = field(default_factory=list)

    @property
    def is_private(self) -> bool:
        """Whether this is a private chat between the bot and one user."""
        return self.type == "private"

    def to_json(self) -> dict[str, Any]:
        """Build the Chat object of the Bot API."""
        data: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.user is not None:
            user = self.user.to_json()
            for name in ("first_name", "last_name", "username"):
                if name in user:
                    data[name] = user[name]
        else:
            data["title"] = self.title or ""
            if self.username:
                data["username"] = self.username
            if self.is_forum:
                data["is_forum"] = True
        return data


@dataclass
class Message:
    """A message in a chat, from the bot or from a user, as it is now."""

    message_id: int
    chat: Chat
    sender: dict[str, Any]
    from_bot: bool
    date: int
    # Emulator clock reading when the message was sent, for time limits.
    sent_at: float
    content: dict[str, Any]
    reply_markup: ReplyMarkup | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    reply_to: "Message | None" = None
    edit_date: int | None = None
    deleted: bool = False

    @property
    def inline_keyboard(self) -> dict[str, Any] | None:
        """The InlineKeyboardMarkup of the message, or None."""
        if (
            self.reply_markup is not None
            and self.reply_markup.kind == "inline_keyboard"
        ):
            return self.reply_markup.data
        return None

    def to_json(self, include_reply: bool = True) -> dict[str, Any]:
        """Build the Message object of the Bot API.

        Like Telegram, only an inline keyboard appears as ``reply_markup``; reply
        keyboards are shown by the client but not echoed.
        """
        data: dict[str, Any] = {
            "message_id": self.message_id,
            "from": dict(self.sender),
            "chat": self.chat.to_json(),
            "date": self.date,
        }
        if self.edit_date is not None:
            data["edit_date"] = self.edit_date
        if include_reply and self.reply_to is not None:
            data["reply_to_message"] = self.reply_to.to_json(include_reply=False)
        data.update(_copy_json(self.content))
        data.update(_copy_json(self.extra))
        if self.inline_keyboard is not None:
            data["reply_markup"] = _copy_json(self.inline_keyboard)
        return data

    def has_callback_data(self, callback_data: str) -> bool:
        """Tell whether an inline button of this message sends ``callback_data``."""
        keyboard = self.inline_keyboard
        if keyboard is None:
            return False
        return any(
            button.get("callback_data") == callback_data
            for row in keyboard["inline_keyboard"]
            for button in row
        )


def _copy_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_json(item) for item in value]
    return value


@dataclass(frozen=True)
class PendingUpdate:
    """An Update waiting to be fetched or delivered; the payload is a snapshot."""

    update_id: int
    kind: str
    payload: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """Build the Update object of the Bot API."""
        return {"update_id": self.update_id, self.kind: _copy_json(self.payload)}


@dataclass
class CallbackQueryRecord:
    """A button tap that the bot has to answer with answerCallbackQuery."""

    id: str
    user: User
    message: Message
    data: str
    created_at: float
    answered: bool = False


@dataclass(frozen=True)
class StoredFile:
    """The bytes behind a file_id, downloadable through getFile."""

    file_id: str
    file_unique_id: str
    kind: str
    data: bytes
    file_path: str
    mime_type: str | None = None
    file_name: str | None = None

    def to_file_json(self) -> dict[str, Any]:
        """Build the File object that getFile returns (before PTB adds the base URL)."""
        return {
            "file_id": self.file_id,
            "file_unique_id": self.file_unique_id,
            "file_size": len(self.data),
            "file_path": self.file_path,
        }


@dataclass(frozen=True)
class ChatEvent:
    """Something the bot did in a chat, for tests and the chat page to observe."""

    seq: int
    chat_id: int
    kind: str
    data: dict[str, Any]
    clock: float = 0.0
    """Emulator clock reading when the event was recorded, in seconds."""

    def to_json(self) -> dict[str, Any]:
        """Build the event object of the testing API."""
        event: dict[str, Any] = {
            "seq": self.seq,
            "kind": self.kind,
            "chat_id": self.chat_id,
            "clock": self.clock,
        }
        event.update(self.data)
        return event


@dataclass(frozen=True)
class CallRecord:
    """One Bot API call and its outcome."""

    method: str
    ok: bool
    error_code: int | None
    description: str | None
    chat_id: int | str | None
    timestamp: float
    clock: float

    def to_json(self) -> dict[str, Any]:
        """Build the call object of the testing API."""
        return {
            "method": self.method,
            "ok": self.ok,
            "error_code": self.error_code,
            "description": self.description,
            "chat_id": self.chat_id,
            "timestamp": self.timestamp,
            "clock": self.clock,
        }


@dataclass
class WebhookConfig:
    """The webhook that setWebhook configured, and its delivery errors."""

    url: str
    token: str
    secret_token: str | None
    max_connections: int
    ip_address: str | None
    last_error_date: int | None = None
    last_error_message: str | None = None


@dataclass(frozen=True)
class EmulatorConfig:
    """Settings of one emulator instance."""

    bot_username: str = DEFAULT_BOT_USERNAME
    bot_first_name: str = DEFAULT_BOT_FIRST_NAME
    # With privacy mode on, a bot in a group receives only commands, replies to its
    # own messages and mentions of its username.
    # Source: core.telegram.org/bots/features#privacy-mode.
    group_privacy: bool = True
    rate_limits: RateLimits = field(default_factory=RateLimits)
    # Seconds before the first retry of a failed webhook delivery. Each retry
    # doubles the delay, up to webhook_max_retry_delay.
    webhook_retry_delay: float = 1.0
    webhook_max_retry_delay: float = 30.0


class EmulatorState:
    """Everything the emulated Telegram stores, shared by the Bot and testing APIs."""

    def __init__(self, config: EmulatorConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.rate_limiter = RateLimiter(config.rate_limits, clock)
        self.updates_changed = Notifier()
        # Fires on every event in any chat, for observers in the same process.
        self.events_changed = Notifier()
        # One notifier per chat, so that an event wakes only the long polls of
        # its own chat and not those of every other chat.
        self.chat_events_changed: dict[int, Notifier] = {}
        self.webhook_changed = Notifier()
        self.closing = False
        self.bot_id = DEFAULT_BOT_ID
        # These counters survive reset(), see the module docstring.
        self._update_ids = itertools.count(1)
        self._event_seqs = itertools.count(1)
        self._file_numbers = itertools.count(1)
        self.poll_generation = 0
        self._clear()

    def _clear(self) -> None:
        self.users: dict[int, User] = {}
        self.chats: dict[int, Chat] = {}
        self.updates: list[PendingUpdate] = []
        self.allowed_updates: frozenset[str] | None = None
        # Events by chat, each list in ascending seq order, so that a long poll
        # reads its own chat's events without scanning every other chat's.
        self.events_by_chat: dict[int, list[ChatEvent]] = {}
        self.files: dict[str, StoredFile] = {}
        self.files_by_path: dict[str, StoredFile] = {}
        # file_id of any size of a photo -> every PhotoSize of that photo.
        self.photo_sets: dict[str, list[dict[str, Any]]] = {}
        self.callback_queries: dict[str, CallbackQueryRecord] = {}
        self.commands: dict[
            tuple[str, int | None, int | None, str], list[dict[str, str]]
        ] = {}
        self.webhook: WebhookConfig | None = None
        self.calls: list[CallRecord] = []
        self.counters: Counter[str] = Counter()

    def reset(self) -> None:
        """Forget all users, chats, updates, files, calls and counts."""
        self._clear()
        self.rate_limiter.reset()
        self.updates_changed.notify()
        self.wake_event_waiters()
        self.webhook_changed.notify()

    # Identities

    def bot_user_json(self, bot_id: int | None = None) -> dict[str, Any]:
        """Build the User object of the bot."""
        return {
            "id": bot_id if bot_id is not None else self.bot_id,
            "is_bot": True,
            "first_name": self.config.bot_first_name,
            "username": self.config.bot_username,
        }

    def user(self, user_id: int, profile: dict[str, Any] | None = None) -> User:
        """Return the user with ``user_id``, creating it, and apply profile fields."""
        user = self.users.get(user_id)
        if user is None:
            user = User(id=user_id, first_name=f"User {user_id}")
            self.users[user_id] = user
        for name in ("first_name", "last_name", "username", "language_code"):
            value = (profile or {}).get(name)
            if isinstance(value, str) and value:
                setattr(user, name, value)
        return user

    def private_chat(self, user: User) -> Chat:
        """Return the private chat of ``user``, creating it."""
        chat = self.chats.get(user.id)
        if chat is None:
            chat = Chat(id=user.id, type="private", user=user)
            self.chats[user.id] = chat
        return chat

    def group_chat(
        self,
        chat_id: int,
        chat_type: str,
        title: str | None,
        username: str | None = None,
    ) -> Chat:
        """Return the group or supergroup ``chat_id``, creating it."""
        chat = self.chats.get(chat_id)
        if chat is None:
            chat = Chat(
                id=chat_id,
                type=chat_type,
                title=title or f"Group {chat_id}",
                username=username,
            )
            self.chats[chat_id] = chat
        return chat

    def find_chat(self, chat_id: int | str) -> Chat:
        """Find a chat by id or by the ``@username`` of a group.

        Raises:
            BotApiError: 400 "chat not found".
        """
        if isinstance(chat_id, str):
            username = chat_id.removeprefix("@").lower()
            for group in self.chats.values():
                if (
                    group.username
                    and group.username.lower() == username
                    and not group.is_private
                ):
                    return group
            raise bad_request(CHAT_NOT_FOUND)
        chat = self.chats.get(chat_id)
        if chat is None:
            raise bad_request(CHAT_NOT_FOUND)
        return chat

    def chat_for_sending(self, chat_id: int | str) -> Chat:
        """Find a chat that the bot may send to or edit in.

        A private chat exists once its user wrote to the bot, so a known user without
        one has never started the bot.

        Raises:
            BotApiError: 400 "chat not found", or 403 when the user blocked the bot
                or never started it.
        """
        if (
            isinstance(chat_id, int)
            and chat_id not in self.chats
            and chat_id in self.users
        ):
            raise forbidden(CANT_INITIATE)
        chat = self.find_chat(chat_id)
        if chat.user is not None and chat.user.blocked:
            raise forbidden(BOT_BLOCKED)
        return chat

    # Messages

    def add_message(
        self,
        chat: Chat,
        *,
        sender: dict[str, Any],
        from_bot: bool,
        content: dict[str, Any],
        reply_markup: ReplyMarkup | None = None,
        extra: dict[str, Any] | None = None,
        reply_to: Message | None = None,
    ) -> Message:
        """Append a message to ``chat`` with the chat's next message id."""
        message = Message(
            message_id=chat.next_message_id,
            chat=chat,
            sender=sender,
            from_bot=from_bot,
            date=int(time.time()),
            sent_at=self.clock(),
            content=content,
            reply_markup=reply_markup,
            extra=extra or {},
            reply_to=reply_to,
        )
        chat.next_message_id += 1
        chat.messages[message.message_id] = message
        self.counters["messages_from_bot" if from_bot else "messages_from_users"] += 1
        return message

    # Updates

    def update_allowed(self, kind: str) -> bool:
        """Tell whether updates of ``kind`` reach the bot under its allowed_updates."""
        if self.allowed_updates is None:
            return kind not in limits.OPT_IN_UPDATE_TYPES
        return kind in self.allowed_updates

    def queue_update(self, kind: str, payload: dict[str, Any]) -> int | None:
        """Queue an update for getUpdates or the webhook; return its id.

        Returns None when allowed_updates excludes ``kind``: Telegram does not store
        such updates at all.
        """
        if not self.update_allowed(kind):
            self.counters["updates_dropped"] += 1
            return None
        update = PendingUpdate(next(self._update_ids), kind, _copy_json(payload))
        self.updates.append(update)
        self.counters["updates_queued"] += 1
        self.updates_changed.notify()
        return update.update_id

    def confirm_updates(self, offset: int) -> None:
        """Forget the updates before ``offset``, as getUpdates does with its offset.

        A negative offset keeps only the last ``-offset`` updates.
        """
        if offset < 0:
            self.updates = self.updates[offset:]
        else:
            self.updates = [
                update for update in self.updates if update.update_id >= offset
            ]

    def drop_pending_updates(self) -> None:
        """Forget every pending update."""
        self.updates = []

    # Events

    def record_event(self, chat_id: int, kind: str, data: dict[str, Any]) -> ChatEvent:
        """Record what the bot did in ``chat_id`` and wake that chat's long polls."""
        event = ChatEvent(next(self._event_seqs), chat_id, kind, data, self.clock())
        self.events_by_chat.setdefault(chat_id, []).append(event)
        notifier = self.chat_events_changed.get(chat_id)
        if notifier is not None:
            notifier.notify()
        self.events_changed.notify()
        return event

    def events_after(self, chat_id: int, seq: int) -> list[ChatEvent]:
        """Return the events of ``chat_id`` with a sequence number above ``seq``."""
        chat_events = self.events_by_chat.get(chat_id, [])
        start = bisect.bisect_right(chat_events, seq, key=lambda event: event.seq)
        return chat_events[start:]

    async def wait_for_chat_event(self, chat_id: int, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait up to ``timeout`` seconds for the next event of ``chat_id``.

        Returns True when notified. A reset and the emulator's shutdown also end
        the wait with True, so the caller reads the state again.
        """
        notifier = self.chat_events_changed.setdefault(chat_id, Notifier())
        return await notifier.wait(timeout)

    def wake_event_waiters(self) -> None:
        """Wake every event waiter of every chat, as on a reset or a shutdown."""
        notifiers = list(self.chat_events_changed.values())
        self.chat_events_changed.clear()
        for notifier in notifiers:
            notifier.notify()
        self.events_changed.notify()

    # Files

    def store_file(
        self,
        kind: str,
        data: bytes,
        extension: str,
        mime_type: str | None = None,
        file_name: str | None = None,
    ) -> StoredFile:
        """Store ``data`` under a new file_id and file_path."""
        number = next(self._file_numbers)
        folder = {"photo": "photos", "sticker": "stickers", "voice": "voice"}.get(
            kind, "documents"
        )
        stored = StoredFile(
            file_id=f"BQAC{kind[:2]}{number}_{secrets.token_urlsafe(24)}",
            file_unique_id=f"AQAD{number}{secrets.token_urlsafe(6)}",
            kind=kind,
            data=data,
            file_path=f"{folder}/file_{number}.{extension}",
            mime_type=mime_type,
            file_name=file_name,
        )
        self.files[stored.file_id] = stored
        self.files_by_path[stored.file_path] = stored
        return stored

    # Callback queries

    def new_callback_query(
        self, user: User, message: Message, data: str
    ) -> CallbackQueryRecord:
        """Record a tap on an inline button of ``message``."""
        query = CallbackQueryRecord(
            id=str(secrets.randbits(63)),
            user=user,
            message=message,
            data=data,
            created_at=self.clock(),
        )
        self.callback_queries[query.id] = query
        return query

    # Calls and stats

    def record_call(
        self,
        method: str,
        *,
        ok: bool,
        error_code: int | None = None,
        description: str | None = None,
        chat_id: int | str | None = None,
    ) -> None:
        """Log a Bot API call and count it."""
        self.calls.append(
            CallRecord(
                method, ok, error_code, description, chat_id, time.time(), self.clock()
            )
        )
        self.counters["calls"] += 1
        self.counters[f"method:{method}"] += 1
        if not ok:
            self.counters["errors"] += 1
            self.counters[f"error:{error_code}"] += 1
        if error_code == 429:
            self.counters["rate_limited"] += 1

    def stats(self) -> dict[str, Any]:
        """Summarise the calls, errors, updates and messages since the last reset."""
        counters = self.counters
        return {
            "calls": counters["calls"],
            "calls_by_method": _prefixed(counters, "method:"),
            "errors": counters["errors"],
            "errors_by_code": _prefixed(counters, "error:"),
            "rate_limited": counters["rate_limited"],
            "updates_queued": counters["updates_queued"],
            "updates_dropped": counters["updates_dropped"],
            "updates_pending": len(self.updates),
            "webhook_deliveries": counters["webhook_deliveries"],
            "webhook_failures": counters["webhook_failures"],
            "messages_from_bot": counters["messages_from_bot"],
            "messages_from_users": counters["messages_from_users"],
            "users": len(self.users),
            "chats": len(self.chats),
        }


def _prefixed(counters: Counter[str], prefix: str) -> dict[str, int]:
    return {
        key[len(prefix) :]: value
        for key, value in counters.items()
        if key.startswith(prefix)
    }
