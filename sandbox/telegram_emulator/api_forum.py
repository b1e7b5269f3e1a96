"""Bot API methods for forum topics, copies, pins and group members.

Errors use Telegram's descriptions where they are known; each other one has a
NOTE at its constant.
"""

import logging
from typing import Any

from .api_messages import _deliver, _event_data, _reply_target
from .errors import CHAT_NOT_FOUND, bad_request
from .forum import ICON_COLORS, MAX_TOPIC_NAME_LENGTH, ForumTopic, MemberRecord
from .forum_threads import THREAD_NOT_FOUND, live_topic
from .methods import CallContext, bot_method
from .params import Params
from .state import Chat, Message
from .validation import caption_text, parse_reply_markup

logger = logging.getLogger(__name__)

# NOTE: the next four descriptions are estimates modelled on tdlib's error
# names; Telegram documents none of them.
NOT_A_FORUM = "the chat is not a forum"
NO_TOPIC_RIGHTS = "not enough rights to manage topics"
NO_PIN_RIGHTS = "not enough rights to manage pinned messages in the chat"
TOPIC_NAME_INVALID = "TOPIC_TITLE_EMPTY"

# Descriptions reported by bot developers for these cases.
MESSAGE_TO_COPY_NOT_FOUND = "message to copy not found"
MESSAGE_CANT_BE_COPIED = "message can't be copied"
TOPIC_NOT_MODIFIED = "TOPIC_NOT_MODIFIED"
MESSAGE_TO_PIN_NOT_FOUND = "message to pin not found"
USER_NOT_FOUND = "user not found"

# Content keys of service messages, which copyMessage rejects.
_SERVICE_KEYS = frozenset(
    {"forum_topic_created", "forum_topic_edited", "pinned_message"}
)


def _forum(ctx: CallContext, params: Params) -> Chat:
    """Find the forum of a topic method and check the bot's right to manage topics.

    Raises:
        BotApiError: 400 when the chat is missing, no forum, or the bot may not
            manage its topics.
    """
    chat = ctx.state.chat_for_sending(ctx.chat_id_param(params))
    if not chat.is_forum:
        raise bad_request(NOT_A_FORUM)
    if chat.bot_member is None or not chat.bot_member.can("can_manage_topics"):
        raise bad_request(NO_TOPIC_RIGHTS)
    return chat


def _topic(chat: Chat, params: Params) -> ForumTopic:
    topic = live_topic(chat, params.integer("message_thread_id") or 0)
    if topic is None:
        raise bad_request(THREAD_NOT_FOUND)
    return topic


def _topic_name(params: Params) -> str:
    name = (params.string("name") or "").strip()
    if not name or len(name) > MAX_TOPIC_NAME_LENGTH:
        raise bad_request(TOPIC_NAME_INVALID)
    return name


def _service_message(
    ctx: CallContext, chat: Chat, thread_id: int | None, content: dict[str, Any]
) -> Message:
    extra: dict[str, Any] = {}
    if thread_id is not None:
        extra = {"message_thread_id": thread_id, "is_topic_message": True}
    return ctx.state.add_message(
        chat, sender=ctx.bot_json, from_bot=True, content=content, extra=extra
    )


@bot_method("createForumTopic")
async def create_forum_topic(ctx: CallContext, params: Params) -> dict[str, Any]:
    """Create a topic; see core.telegram.org/bots/api#createforumtopic.

    The topic's id is the id of its "topic created" service message.
    """
    chat = _forum(ctx, params)
    name = _topic_name(params)
    color = params.integer("icon_color")
    if color is not None and color not in ICON_COLORS:
        # NOTE: Telegram's description for an unlisted colour is not known.
        raise bad_request("TOPIC_ICON_COLOR_INVALID")

    thread_id = chat.next_message_id
    topic = ForumTopic(thread_id, name)
    if color is not None:
        topic.icon_color = color
    _service_message(ctx, chat, thread_id, {"forum_topic_created": topic.to_json()})
    chat.topics[thread_id] = topic
    ctx.state.record_event(chat.id, "topic_created", {"topic": topic.to_json()})
    logger.debug("forum topic created chat=%s thread=%s", chat.id, thread_id)
    return topic.to_json()


@bot_method("editForumTopic")
async def edit_forum_topic(ctx: CallContext, params: Params) -> bool:
    """Rename a topic; see core.telegram.org/bots/api#editforumtopic."""
    chat = _forum(ctx, params)
    topic = _topic(chat, params)
    if params.has("name"):
        topic.name = _topic_name(params)
    _service_message(
        ctx, chat, topic.message_thread_id, {"forum_topic_edited": {"name": topic.name}}
    )
    ctx.state.record_event(chat.id, "topic_edited", {"topic": topic.to_json()})
    return True


async def _set_closed(ctx: CallContext, params: Params, closed: bool) -> bool:
    chat = _forum(ctx, params)
    topic = _topic(chat, params)
    if topic.closed == closed:
        raise bad_request(TOPIC_NOT_MODIFIED)
    topic.closed = closed
    kind = "topic_closed" if closed else "topic_reopened"
    ctx.state.record_event(chat.id, kind, {"topic": topic.to_json()})
    return True


@bot_method("closeForumTopic")
async def close_forum_topic(ctx: CallContext, params: Params) -> bool:
    """Close a topic; see core.telegram.org/bots/api#closeforumtopic."""
    return await _set_closed(ctx, params, True)


@bot_method("reopenForumTopic")
async def reopen_forum_topic(ctx: CallContext, params: Params) -> bool:
    """Reopen a closed topic; see core.telegram.org/bots/api#reopenforumtopic."""
    return await _set_closed(ctx, params, False)


def delete_topic(chat: Chat, topic: ForumTopic) -> None:
    """Delete a topic and every message in it, as deleteForumTopic does."""
    topic.deleted = True
    for message in chat.messages.values():
        if message.extra.get("message_thread_id") == topic.message_thread_id:
            message.deleted = True


@bot_method("deleteForumTopic")
async def delete_forum_topic(ctx: CallContext, params: Params) -> bool:
    """Delete a topic and its messages.

    See core.telegram.org/bots/api#deleteforumtopic.
    """
    chat = _forum(ctx, params)
    topic = _topic(chat, params)
    delete_topic(chat, topic)
    ctx.state.record_event(chat.id, "topic_deleted", {"topic": topic.to_json()})
    return True


def _source_message(ctx: CallContext, params: Params) -> Message:
    """Find the message that copyMessage copies.

    Raises:
        BotApiError: 400 when the chat or message is missing, or the message is
            a service message or has protected content.
    """
    raw = (params.string("from_chat_id") or "").strip()
    if not raw:
        raise bad_request("from_chat_id is empty")
    try:
        from_chat_id: int | str = int(raw)
    except ValueError:
        from_chat_id = raw
    if isinstance(from_chat_id, str) and not from_chat_id.startswith("@"):
        raise bad_request(CHAT_NOT_FOUND)
    chat = ctx.state.find_chat(from_chat_id)
    message = chat.messages.get(params.integer("message_id") or 0)
    if message is None or message.deleted:
        raise bad_request(MESSAGE_TO_COPY_NOT_FOUND)
    if _SERVICE_KEYS & message.content.keys():
        raise bad_request(MESSAGE_CANT_BE_COPIED)
    # NOTE: Telegram rejects copies of protected content; the exact description
    # is an estimate.
    if message.extra.get("has_protected_content"):
        raise bad_request(MESSAGE_CANT_BE_COPIED)
    return message


def _copied_content(source: Message, params: Params) -> dict[str, Any]:
    content = {
        key: value
        for key, value in source.content.items()
        if key not in ("caption", "caption_entities")
    }
    if "text" in content or not params.has("caption"):
        for key in ("caption", "caption_entities"):
            if key in source.content:
                content[key] = source.content[key]
        return content
    caption = caption_text(params)
    if caption.text:
        content["caption"] = caption.text
    if caption.entities:
        content["caption_entities"] = caption.entity_list()
    return content


@bot_method("copyMessage")
async def copy_message(ctx: CallContext, params: Params) -> dict[str, Any]:
    """Copy a message without a link to the original.

    See core.telegram.org/bots/api#copymessage. The copy has the bot as its
    sender, so the original author is not shown.
    """
    state = ctx.state
    source = _source_message(ctx, params)
    markup = parse_reply_markup(params.raw("reply_markup"))
    chat = state.chat_for_sending(ctx.chat_id_param(params))
    reply_to = _reply_target(params, chat)
    content = _copied_content(source, params)
    state.rate_limiter.acquire(chat.id, chat.is_private)
    message = _deliver(ctx, params, chat, content, markup, reply_to)
    return {"message_id": message.message_id}


@bot_method("pinChatMessage")
async def pin_chat_message(ctx: CallContext, params: Params) -> bool:
    """Pin a message; see core.telegram.org/bots/api#pinchatmessage.

    In a group the bot needs the administrator right ``can_pin_messages``. A
    pin adds a "pinned message" service message, in the pinned message's topic.
    """
    state = ctx.state
    chat = state.chat_for_sending(ctx.chat_id_param(params))
    message = chat.messages.get(params.integer("message_id") or 0)
    if message is None or message.deleted:
        raise bad_request(MESSAGE_TO_PIN_NOT_FOUND)
    if not chat.is_private and (
        chat.bot_member is None or not chat.bot_member.can("can_pin_messages")
    ):
        raise bad_request(NO_PIN_RIGHTS)

    if message.message_id in chat.pinned_message_ids:
        chat.pinned_message_ids.remove(message.message_id)
    chat.pinned_message_ids.append(message.message_id)
    thread_id = message.extra.get("message_thread_id")
    _service_message(
        ctx,
        chat,
        thread_id,
        {"pinned_message": message.to_json(include_reply=False)},
    )
    state.record_event(chat.id, "pinned", _event_data(message))
    return True


@bot_method("getChatMember")
async def get_chat_member(ctx: CallContext, params: Params) -> dict[str, Any]:
    """Describe a user's membership of a chat.

    See core.telegram.org/bots/api#getchatmember. In a group, a user whom the
    testing API never added is "left". The bot is "member" unless the testing
    API gave it another status.
    """
    state = ctx.state
    chat = state.find_chat(ctx.chat_id_param(params))
    user_id = params.integer("user_id") or 0
    if user_id == ctx.bot_id:
        record = chat.bot_member or MemberRecord("member")
        return record.to_json(ctx.bot_json)

    user = state.users.get(user_id)
    if user is None:
        # NOTE: Telegram may return PARTICIPANT_ID_INVALID here instead.
        raise bad_request(USER_NOT_FOUND)
    if chat.is_private:
        status = "member" if chat.id == user_id else "left"
        return MemberRecord(status).to_json(user.to_json())
    record = chat.members.get(user_id, MemberRecord("left"))
    return record.to_json(user.to_json())
