"""Testing API actions on groups: forums, members, the bot's rights, topics.

A test sets up a support group with these before the bot starts, then plays
its members with ``user_actions.send_message`` and a ``message_thread_id``.
The emulator does not stop a user who is no member from writing in a group,
so tests can play someone who was removed a moment ago.
"""

import logging
from typing import Any

from .api_forum import delete_topic
from .forum import ADMINISTRATOR_RIGHTS, MEMBER_STATUSES, MemberRecord
from .forum_threads import live_topic
from .state import Chat, EmulatorState
from .user_actions import ActionError

logger = logging.getLogger(__name__)


def _member(body: dict[str, Any]) -> MemberRecord:
    status = body.get("status")
    if status not in MEMBER_STATUSES:
        raise ActionError(
            400,
            f"status must be one of {', '.join(MEMBER_STATUSES)}, got {status!r}",
        )
    rights: dict[str, bool] = {}
    for right in ADMINISTRATOR_RIGHTS:
        value = body.get(right, False)
        if not isinstance(value, bool):
            raise ActionError(400, f"field {right!r} must be a boolean, got {value!r}")
        rights[right] = value
    return MemberRecord(str(status), rights)


def _group(state: EmulatorState, chat_id: int) -> Chat:
    chat = state.chats.get(chat_id)
    if chat is None or chat.is_private:
        raise ActionError(404, f"group {chat_id} not found; create it first")
    return chat


def create_group(
    state: EmulatorState, chat_id: int, body: dict[str, Any]
) -> dict[str, Any]:
    """Create a supergroup, with topics when ``"forum": true``.

    Raises:
        ActionError: for a chat id that is not negative, or a chat that
            exists as another type.
    """
    if chat_id >= 0:
        raise ActionError(400, f"a group needs a negative chat id, got {chat_id}")
    title = body.get("title")
    chat = state.group_chat(
        chat_id, "supergroup", title if isinstance(title, str) else None
    )
    if chat.type != "supergroup":
        raise ActionError(409, f"chat {chat_id} exists as a {chat.type}")
    chat.is_forum = bool(body.get("forum", True))
    logger.debug("group created chat=%s forum=%s", chat_id, chat.is_forum)
    return {"chat": chat.to_json()}


def set_member(
    state: EmulatorState, chat_id: int, user_id: int, body: dict[str, Any]
) -> dict[str, Any]:
    """Give a user a status (and administrator rights) in a group."""
    chat = _group(state, chat_id)
    user = state.user(user_id, body)
    record = _member(body)
    chat.members[user_id] = record
    return {"chat_member": record.to_json(user.to_json())}


def set_bot_member(
    state: EmulatorState, chat_id: int, body: dict[str, Any]
) -> dict[str, Any]:
    """Give the bot a status and administrator rights in a group."""
    chat = _group(state, chat_id)
    record = _member(body)
    chat.bot_member = record
    return {"chat_member": record.to_json(state.bot_user_json())}


def delete_topic_as_admin(
    state: EmulatorState, chat_id: int, thread_id: int
) -> dict[str, Any]:
    """Delete a topic as a group administrator would, with all its messages."""
    chat = _group(state, chat_id)
    topic = live_topic(chat, thread_id)
    if topic is None:
        raise ActionError(404, f"topic {thread_id} not found in chat {chat_id}")
    delete_topic(chat, topic)
    state.record_event(chat.id, "topic_deleted", {"topic": topic.to_json()})
    return {"topic": topic.to_json(), "deleted": True}
