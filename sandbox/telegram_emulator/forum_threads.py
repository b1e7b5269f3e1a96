"""Checks for messages that name a forum topic, shared by every send method."""

from typing import Any

from .errors import bad_request
from .forum import ForumTopic
from .state import Chat

# Telegram's description for a topic that does not exist or was deleted, as
# bot developers report it from the Bot API server for groups.
THREAD_NOT_FOUND = "message thread not found"

# NOTE: the wording for a send into a closed topic is an estimate from tdlib's
# error name. Nobody checked it against a live Bot API server.
TOPIC_CLOSED = "TOPIC_CLOSED"


def live_topic(chat: Chat, thread_id: int) -> ForumTopic | None:
    """Return the topic ``thread_id`` of a forum, or None if missing or deleted."""
    topic = chat.topics.get(thread_id)
    if topic is None or topic.deleted:
        return None
    return topic


def bot_thread_extra(chat: Chat, thread_id: int) -> dict[str, Any]:
    """Check that the bot may post in topic ``thread_id``; return the fields to echo.

    Raises:
        BotApiError: 400 "message thread not found" for a missing or deleted
            topic, or "TOPIC_CLOSED" for a closed topic when the bot may not
            manage topics.
    """
    topic = live_topic(chat, thread_id)
    if topic is None:
        raise bad_request(THREAD_NOT_FOUND)
    manages = chat.bot_member is not None and chat.bot_member.can("can_manage_topics")
    if topic.closed and not manages:
        raise bad_request(TOPIC_CLOSED)
    return {"message_thread_id": thread_id, "is_topic_message": True}
