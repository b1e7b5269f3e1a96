"""User actions in the emulated Telegram: send, tap, edit, block.

Each action changes the state and queues the Update that Telegram would send the
bot. The testing API calls these functions with the JSON body of its requests.
"""

import base64
import binascii
import logging
import re
import time
from typing import Any

from . import limits
from .api_messages import store_photo
from .formatting import utf16_length
from .forum_threads import live_topic
from .media import (
    PLACEHOLDER_DOCUMENT,
    PLACEHOLDER_VOICE,
    image_format,
    image_size,
    placeholder_png,
)
from .state import Chat, EmulatorState, Message, User

logger = logging.getLogger(__name__)

MESSAGE_KINDS = (
    "text",
    "command",
    "sticker",
    "photo",
    "voice",
    "contact",
    "location",
    "document",
)
CHAT_TYPES = ("private", "group", "supergroup")

# A bot command: "/" and 1-32 letters, digits or underscores, optionally followed by
# "@botusername". Source: core.telegram.org/bots/features#commands.
_COMMAND_PATTERN = re.compile(r"(?<![\w/])/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?")

# Size of the sticker that a test sends; Telegram's static stickers are 512 px wide.
_STICKER_SIDE = 512


class ActionError(Exception):
    """A testing API request that cannot be carried out, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _require_int(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ActionError(400, f"field {name!r} must be an integer, got {value!r}")
    return value


def _require_text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ActionError(400, f"field {name!r} must be a non-empty string")
    return value


def _decode_base64(body: dict[str, Any], name: str) -> bytes | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ActionError(400, f"field {name!r} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ActionError(400, f"field {name!r} is not valid base64") from None


def command_entities(text: str) -> list[dict[str, Any]]:
    """Find the bot commands in ``text`` as bot_command entities."""
    entities = []
    for match in _COMMAND_PATTERN.finditer(text):
        entities.append(
            {
                "type": "bot_command",
                "offset": utf16_length(text[: match.start()]),
                "length": utf16_length(match.group(0)),
            }
        )
    return entities


def _text_content(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    text = _require_text(body, "text")
    if kind == "command" and not text.startswith("/"):
        text = "/" + text
    if len(text) > limits.MAX_MESSAGE_TEXT_LENGTH:
        raise ActionError(
            400, f"text has {len(text)} characters; Telegram clients send at most 4096"
        )
    content: dict[str, Any] = {"text": text}
    entities = command_entities(text)
    if entities:
        content["entities"] = entities
    return content


def _caption(content: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    caption = body.get("caption")
    if isinstance(caption, str) and caption:
        content["caption"] = caption
    return content


def _photo_content(state: EmulatorState, body: dict[str, Any]) -> dict[str, Any]:
    data = _decode_base64(body, "photo_base64") or placeholder_png()
    kind = image_format(data)
    size = image_size(data)
    if kind is None or size is None:
        raise ActionError(400, "photo_base64 is not a PNG, JPEG, GIF or WebP image")
    sizes = store_photo(state, data, kind, size[0], size[1])
    return _caption({"photo": sizes}, body)


def _sticker_content(state: EmulatorState, body: dict[str, Any]) -> dict[str, Any]:
    # NOTE: real stickers are WebP; the emulator stores a PNG of the same size.
    stored = state.store_file(
        "sticker", placeholder_png(_STICKER_SIDE, _STICKER_SIDE), "png", "image/png"
    )
    sticker: dict[str, Any] = {
        "file_id": stored.file_id,
        "file_unique_id": stored.file_unique_id,
        "type": "regular",
        "width": _STICKER_SIDE,
        "height": _STICKER_SIDE,
        "is_animated": False,
        "is_video": False,
        "file_size": len(stored.data),
    }
    emoji = body.get("emoji", "👍")
    if isinstance(emoji, str) and emoji:
        sticker["emoji"] = emoji
    return {"sticker": sticker}


def _voice_content(state: EmulatorState, body: dict[str, Any]) -> dict[str, Any]:
    data = _decode_base64(body, "data_base64") or PLACEHOLDER_VOICE
    duration = body.get("duration", 1)
    if isinstance(duration, bool) or not isinstance(duration, int) or duration < 0:
        raise ActionError(
            400, "field 'duration' must be a non-negative integer of seconds"
        )
    stored = state.store_file("voice", data, "oga", "audio/ogg")
    voice = {
        "file_id": stored.file_id,
        "file_unique_id": stored.file_unique_id,
        "duration": duration,
        "mime_type": "audio/ogg",
        "file_size": len(data),
    }
    return _caption({"voice": voice}, body)


def _document_content(state: EmulatorState, body: dict[str, Any]) -> dict[str, Any]:
    data = _decode_base64(body, "data_base64") or PLACEHOLDER_DOCUMENT
    file_name = body.get("file_name") or "document.pdf"
    mime_type = body.get("mime_type") or "application/pdf"
    if not isinstance(file_name, str) or not isinstance(mime_type, str):
        raise ActionError(400, "fields 'file_name' and 'mime_type' must be strings")
    extension = file_name.rsplit(".", 1)[-1] if "." in file_name else "bin"
    stored = state.store_file("document", data, extension, mime_type, file_name)
    document = {
        "file_id": stored.file_id,
        "file_unique_id": stored.file_unique_id,
        "file_name": file_name,
        "mime_type": mime_type,
        "file_size": len(data),
    }
    return _caption({"document": document}, body)


def _contact_content(user: User, body: dict[str, Any]) -> dict[str, Any]:
    contact: dict[str, Any] = {
        "phone_number": _require_text(body, "phone_number"),
        "first_name": body.get("contact_first_name") or user.first_name,
        # A user who shares their own number through a request_contact button sends
        # a contact with their own user id.
        "user_id": body.get("contact_user_id", user.id),
    }
    last_name = body.get("contact_last_name") or user.last_name
    if last_name:
        contact["last_name"] = last_name
    return {"contact": contact}


def _location_content(body: dict[str, Any]) -> dict[str, Any]:
    latitude = body.get("latitude")
    longitude = body.get("longitude")
    numbers = (int, float)
    if not isinstance(latitude, numbers) or not -90 <= latitude <= 90:
        raise ActionError(
            400, f"field 'latitude' must be a number from -90 to 90, got {latitude!r}"
        )
    if not isinstance(longitude, numbers) or not -180 <= longitude <= 180:
        raise ActionError(
            400,
            f"field 'longitude' must be a number from -180 to 180, got {longitude!r}",
        )
    return {"location": {"latitude": float(latitude), "longitude": float(longitude)}}


def _content(
    state: EmulatorState, kind: str, body: dict[str, Any], user: User
) -> dict[str, Any]:
    if kind in ("text", "command"):
        return _text_content(kind, body)
    if kind == "photo":
        return _photo_content(state, body)
    if kind == "sticker":
        return _sticker_content(state, body)
    if kind == "voice":
        return _voice_content(state, body)
    if kind == "document":
        return _document_content(state, body)
    if kind == "contact":
        return _contact_content(user, body)
    return _location_content(body)


def _target_chat(state: EmulatorState, user: User, body: dict[str, Any]) -> Chat:
    chat_type = body.get("chat_type", "private")
    if chat_type not in CHAT_TYPES:
        raise ActionError(
            400, f"chat_type must be one of {', '.join(CHAT_TYPES)}, got {chat_type!r}"
        )
    if chat_type == "private":
        chat_id = body.get("chat_id", user.id)
        if chat_id != user.id:
            raise ActionError(
                400,
                f"a private chat has the id of its user ({user.id}), "
                f"got chat_id {chat_id!r}",
            )
        if user.blocked:
            raise ActionError(
                409, f"user {user.id} has blocked the bot; unblock the user first"
            )
        return state.private_chat(user)

    chat_id = body.get("chat_id")
    if isinstance(chat_id, bool) or not isinstance(chat_id, int) or chat_id >= 0:
        raise ActionError(
            400, f"a {chat_type} needs a negative integer chat_id, got {chat_id!r}"
        )
    username = body.get("chat_username")
    chat = state.group_chat(
        chat_id,
        chat_type,
        body.get("chat_title"),
        username if isinstance(username, str) and username else None,
    )
    if chat.type != chat_type:
        raise ActionError(400, f"chat {chat_id} is a {chat.type}, not a {chat_type}")
    return chat


def topic_extra(chat: Chat, body: dict[str, Any]) -> dict[str, Any]:
    """Check the ``message_thread_id`` of a user's message; return the fields to echo.

    Raises:
        ActionError: when the chat is no forum, or the topic is missing,
            deleted or closed.
    """
    thread_id = body.get("message_thread_id")
    if thread_id is None:
        return {}
    if isinstance(thread_id, bool) or not isinstance(thread_id, int):
        raise ActionError(
            400, f"field 'message_thread_id' must be an integer, got {thread_id!r}"
        )
    if not chat.is_forum:
        raise ActionError(400, f"chat {chat.id} is not a forum with topics")
    topic = live_topic(chat, thread_id)
    if topic is None:
        raise ActionError(404, f"topic {thread_id} not found in chat {chat.id}")
    if topic.closed:
        raise ActionError(409, f"topic {thread_id} in chat {chat.id} is closed")
    return {"message_thread_id": thread_id, "is_topic_message": True}


def _reaches_bot(state: EmulatorState, chat: Chat, message: Message) -> bool:
    """Tell whether a group message passes the bot's privacy mode."""
    if chat.is_private or not state.config.group_privacy:
        return True
    # NOTE: assumed from Telegram's description of privacy mode: a bot that is
    # an administrator of a group receives every message in it.
    if chat.bot_member is not None and chat.bot_member.is_admin:
        return True
    if message.reply_to is not None and message.reply_to.from_bot:
        return True
    text = str(message.content.get("text") or message.content.get("caption") or "")
    username = state.config.bot_username.lower()
    if f"@{username}" in text.lower():
        return True
    for match in _COMMAND_PATTERN.finditer(text):
        _, _, addressee = match.group(0).partition("@")
        if not addressee or addressee.lower() == username:
            return True
    return False


def send_message(
    state: EmulatorState, user_id: int, body: dict[str, Any]
) -> dict[str, Any]:
    """Create a user's message and queue the ``message`` update for the bot.

    The update id is None when the bot does not receive the message, because of
    privacy mode in a group or because allowed_updates excludes messages.

    Raises:
        ActionError: for an unknown kind, a missing field or a blocked user.
    """
    kind = body.get("kind", "text")
    if kind not in MESSAGE_KINDS:
        raise ActionError(
            400, f"kind must be one of {', '.join(MESSAGE_KINDS)}, got {kind!r}"
        )
    user = state.user(user_id, body)
    chat = _target_chat(state, user, body)
    content = _content(state, kind, body, user)

    reply_to = None
    if body.get("reply_to_message_id") is not None:
        reply_id = _require_int(body, "reply_to_message_id")
        reply_to = chat.messages.get(reply_id)
        if reply_to is None or reply_to.deleted:
            raise ActionError(404, f"message {reply_id} not found in chat {chat.id}")

    message = state.add_message(
        chat,
        sender=user.to_json(),
        from_bot=False,
        content=content,
        reply_to=reply_to,
        extra=topic_extra(chat, body),
    )
    if chat.reply_keyboard is not None and chat.reply_keyboard.get("one_time_keyboard"):
        # A one-time keyboard hides after the user has used it.
        chat.reply_keyboard = None

    update_id = None
    if _reaches_bot(state, chat, message):
        update_id = state.queue_update("message", message.to_json())
    logger.debug(
        "user message queued chat=%s message_id=%s update_id=%s",
        chat.id,
        message.message_id,
        update_id,
    )
    return {
        "message_id": message.message_id,
        "update_id": update_id,
        "chat_id": chat.id,
    }


def _existing_chat(state: EmulatorState, user_id: int, body: dict[str, Any]) -> Chat:
    chat_id = body.get("chat_id", user_id)
    if isinstance(chat_id, bool) or not isinstance(chat_id, int):
        raise ActionError(400, f"field 'chat_id' must be an integer, got {chat_id!r}")
    chat = state.chats.get(chat_id)
    if chat is None:
        raise ActionError(
            404, f"chat {chat_id} not found; a user has to send a message first"
        )
    if chat.is_private and chat.id != user_id:
        raise ActionError(400, f"user {user_id} is not in the private chat {chat_id}")
    return chat


def _existing_message(chat: Chat, body: dict[str, Any]) -> Message:
    message_id = _require_int(body, "message_id")
    message = chat.messages.get(message_id)
    if message is None:
        raise ActionError(404, f"message {message_id} not found in chat {chat.id}")
    if message.deleted:
        raise ActionError(404, f"message {message_id} in chat {chat.id} was deleted")
    return message


def tap_button(
    state: EmulatorState, user_id: int, body: dict[str, Any]
) -> dict[str, Any]:
    """Tap an inline button of a bot message and queue the ``callback_query`` update.

    With ``"force": true`` the callback_data need not belong to a button, so tests
    can send forged data.

    Raises:
        ActionError: when the message does not exist, is not the bot's or has no
            button with that callback_data.
    """
    chat = _existing_chat(state, user_id, body)
    user = state.user(user_id, body)
    if user.blocked:
        raise ActionError(
            409, f"user {user_id} has blocked the bot; unblock the user first"
        )
    message = _existing_message(chat, body)
    if not message.from_bot:
        raise ActionError(
            400, f"message {message.message_id} in chat {chat.id} is not from the bot"
        )
    data = body.get("callback_data")
    if not isinstance(data, str):
        raise ActionError(400, f"field 'callback_data' must be a string, got {data!r}")
    if not body.get("force") and not message.has_callback_data(data):
        raise ActionError(
            400,
            f"message {message.message_id} in chat {chat.id} has no inline button "
            f"with callback_data {data!r}",
        )

    query = state.new_callback_query(user, message, data)
    payload = {
        "id": query.id,
        "from": user.to_json(),
        "message": message.to_json(),
        "chat_instance": chat.instance,
        "data": data,
    }
    update_id = state.queue_update("callback_query", payload)
    return {"callback_query_id": query.id, "update_id": update_id}


def edit_message(
    state: EmulatorState, user_id: int, body: dict[str, Any]
) -> dict[str, Any]:
    """Edit the text of a user's own message and queue the ``edited_message`` update.

    Raises:
        ActionError: when the message is not this user's text message.
    """
    chat = _existing_chat(state, user_id, body)
    message = _existing_message(chat, body)
    if message.from_bot or message.sender.get("id") != user_id:
        raise ActionError(
            400,
            f"message {message.message_id} in chat {chat.id} "
            f"was not sent by user {user_id}",
        )
    if "text" not in message.content:
        raise ActionError(
            400, f"message {message.message_id} in chat {chat.id} has no text to edit"
        )

    message.content = _text_content("text", body)
    message.edit_date = max(message.date, int(time.time()))
    update_id = state.queue_update("edited_message", message.to_json())
    return {
        "message_id": message.message_id,
        "update_id": update_id,
        "chat_id": chat.id,
    }


def set_blocked(state: EmulatorState, user_id: int, blocked: bool) -> dict[str, Any]:
    """Block or unblock the bot for a user and queue the ``my_chat_member`` update.

    Blocking twice changes nothing and queues no update.

    Raises:
        ActionError: when the user has no private chat with the bot.
    """
    chat = state.chats.get(user_id)
    if chat is None or chat.user is None:
        raise ActionError(404, f"user {user_id} has no private chat with the bot")
    user = chat.user
    if user.blocked == blocked:
        return {"update_id": None, "blocked": blocked}

    user.blocked = blocked
    bot = state.bot_user_json()
    old_member: dict[str, Any] = {"user": bot, "status": "member"}
    new_member: dict[str, Any] = {"user": bot, "status": "kicked", "until_date": 0}
    if not blocked:
        old_member, new_member = new_member, old_member
    payload = {
        "chat": chat.to_json(),
        "from": user.to_json(),
        "date": int(time.time()),
        "old_chat_member": old_member,
        "new_chat_member": new_member,
    }
    update_id = state.queue_update("my_chat_member", payload)
    logger.debug("user blocked=%s user=%s update_id=%s", blocked, user_id, update_id)
    return {"update_id": update_id, "blocked": blocked}


def _describe_user(state: EmulatorState, user: User) -> dict[str, Any]:
    return {
        "user": user.to_json(),
        "has_private_chat": user.id in state.chats,
        "blocked": user.blocked,
    }


def update_profile(
    state: EmulatorState, user_id: int, body: dict[str, Any]
) -> dict[str, Any]:
    """Create or change a user without starting a private chat with the bot."""
    return _describe_user(state, state.user(user_id, body))


def list_users(state: EmulatorState) -> dict[str, Any]:
    """Describe every known user, in the order they appeared."""
    return {"users": [_describe_user(state, user) for user in state.users.values()]}
