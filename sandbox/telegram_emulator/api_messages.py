"""Bot API methods that send, edit and delete messages and answer callback queries."""

import logging
import time
from typing import Any

from . import limits
from .errors import (
    MESSAGE_NOT_MODIFIED,
    MESSAGE_TO_EDIT_NOT_FOUND,
    QUERY_TOO_OLD,
    bad_request,
)
from .formatting import FormattedText
from .forum_threads import bot_thread_extra
from .media import image_format, image_size
from .methods import CallContext, bot_method
from .params import Params, UploadedFile
from .state import Chat, EmulatorState, Message
from .validation import (
    ReplyMarkup,
    callback_answer_text,
    caption_text,
    message_text,
    parse_inline_markup,
    parse_reply_markup,
)

logger = logging.getLogger(__name__)

# Longest side of the sizes made of an uploaded photo: up to three smaller copies,
# then the photo itself, scaled down to a maximum side of 2560 pixels.
# NOTE: Telegram documents no sizes, so these are estimates. The emulator serves
# the original bytes for every size instead of scaled copies.
_PHOTO_THUMBNAIL_BOXES = (90, 320, 800)
_PHOTO_MAX_SIDE = 2560

_IMAGE_MIME_TYPES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
}


def _text_content(formatted: FormattedText) -> dict[str, Any]:
    content: dict[str, Any] = {"text": formatted.text}
    if formatted.entities:
        content["entities"] = formatted.entity_list()
    return content


def _caption_content(formatted: FormattedText) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if formatted.text:
        content["caption"] = formatted.text
    if formatted.entities:
        content["caption_entities"] = formatted.entity_list()
    return content


def _message_extra(params: Params, chat: Chat) -> dict[str, Any]:
    """Collect the optional fields that a sent message echoes."""
    extra: dict[str, Any] = {}
    if params.boolean("protect_content"):
        extra["has_protected_content"] = True
    options = params.json_value(
        "link_preview_options", "can't parse link preview options JSON object"
    )
    if isinstance(options, dict):
        extra["link_preview_options"] = options
    elif params.boolean("disable_web_page_preview"):
        extra["link_preview_options"] = {"is_disabled": True}
    thread_id = params.integer("message_thread_id")
    if thread_id and chat.is_forum:
        extra.update(bot_thread_extra(chat, thread_id))
    elif thread_id and chat.type == "supergroup":
        extra["message_thread_id"] = thread_id
    return extra


def _reply_target(params: Params, chat: Chat) -> Message | None:
    """Find the message that the new message replies to, if any.

    Raises:
        BotApiError: 400 "message to be replied not found" unless
            allow_sending_without_reply is set.
    """
    reply = params.json_value(
        "reply_parameters", "can't parse reply parameters JSON object"
    )
    if isinstance(reply, dict):
        message_id = reply.get("message_id")
        allow_without = bool(reply.get("allow_sending_without_reply"))
    else:
        message_id = params.integer("reply_to_message_id")
        allow_without = params.boolean("allow_sending_without_reply")
    if not message_id:
        return None

    target = chat.messages.get(int(message_id))
    if target is None or target.deleted:
        if allow_without:
            return None
        raise bad_request("message to be replied not found")
    return target


def _apply_reply_keyboard(chat: Chat, markup: ReplyMarkup | None) -> None:
    if markup is None:
        return
    if markup.kind == "keyboard":
        chat.reply_keyboard = markup.data
    elif markup.kind == "remove_keyboard":
        chat.reply_keyboard = None


def _event_data(message: Message) -> dict[str, Any]:
    data: dict[str, Any] = {"message": message.to_json()}
    if (
        message.reply_markup is not None
        and message.reply_markup.kind != "inline_keyboard"
    ):
        # Reply keyboards are not part of the Message object, but tests and the chat
        # page need to see them.
        data["reply_keyboard"] = message.reply_markup.data
    return data


def _deliver(
    ctx: CallContext,
    params: Params,
    chat: Chat,
    content: dict[str, Any],
    markup: ReplyMarkup | None,
    reply_to: Message | None,
) -> Message:
    """Store a message from the bot and record the "sent" event."""
    state = ctx.state
    message = state.add_message(
        chat,
        sender=ctx.bot_json,
        from_bot=True,
        content=content,
        reply_markup=markup,
        extra=_message_extra(params, chat),
        reply_to=reply_to,
    )
    _apply_reply_keyboard(chat, markup)
    state.record_event(chat.id, "sent", _event_data(message))
    logger.debug("bot message sent chat=%s message_id=%s", chat.id, message.message_id)
    return message


@bot_method("sendMessage")
async def send_message(ctx: CallContext, params: Params) -> dict[str, Any]:
    """Send a text message; see core.telegram.org/bots/api#sendmessage."""
    formatted = message_text(params)
    markup = parse_reply_markup(params.raw("reply_markup"))
    chat = ctx.state.chat_for_sending(ctx.chat_id_param(params))
    reply_to = _reply_target(params, chat)
    ctx.state.rate_limiter.acquire(chat.id, chat.is_private)
    message = _deliver(ctx, params, chat, _text_content(formatted), markup, reply_to)
    return message.to_json()


# Photos


def _check_photo(data: bytes) -> tuple[str, int, int]:
    """Return the format, width and height of an uploaded photo.

    Raises:
        BotApiError: 400 for an empty, oversized, unreadable or badly shaped image.
    """
    if not data:
        raise bad_request("file must be non-empty")
    if len(data) > limits.MAX_PHOTO_BYTES:
        # NOTE: Telegram's description for a photo above 10 MB is not known to the
        # emulator; it uses the one for oversized downloads.
        raise bad_request("file is too big")
    kind = image_format(data)
    size = image_size(data)
    if kind is None or size is None:
        raise bad_request("IMAGE_PROCESS_FAILED")
    width, height = size
    if (
        min(width, height) == 0
        or width + height > limits.MAX_PHOTO_WIDTH_PLUS_HEIGHT
        or max(width, height) / min(width, height) > limits.MAX_PHOTO_ASPECT_RATIO
    ):
        raise bad_request("PHOTO_INVALID_DIMENSIONS")
    return kind, width, height


def _scaled(width: int, height: int, box: int) -> tuple[int, int]:
    scale = box / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def store_photo(
    state: EmulatorState, data: bytes, kind: str, width: int, height: int
) -> list[dict[str, Any]]:
    """Store a photo and return its PhotoSize list, smallest first."""
    dimensions = [
        _scaled(width, height, box)
        for box in _PHOTO_THUMBNAIL_BOXES
        if max(width, height) > box
    ]
    if max(width, height) > _PHOTO_MAX_SIDE:
        dimensions.append(_scaled(width, height, _PHOTO_MAX_SIDE))
    else:
        dimensions.append((width, height))

    sizes: list[dict[str, Any]] = []
    for size_width, size_height in dimensions:
        stored = state.store_file(
            "photo", data, "jpg" if kind == "jpeg" else kind, _IMAGE_MIME_TYPES[kind]
        )
        sizes.append(
            {
                "file_id": stored.file_id,
                "file_unique_id": stored.file_unique_id,
                "file_size": len(data),
                "width": size_width,
                "height": size_height,
            }
        )
    for size in sizes:
        state.photo_sets[size["file_id"]] = sizes
    return sizes


def _photo_source(params: Params) -> UploadedFile | str:
    """Find the photo of sendPhoto: an uploaded file or a file_id/URL string.

    Raises:
        BotApiError: 400 "there is no photo in the request".
    """
    value = params.string("photo")
    if value and value.startswith("attach://"):
        attached = params.file(value.removeprefix("attach://"))
        if attached is not None:
            return attached
    uploaded = params.file("photo")
    if uploaded is not None:
        return uploaded
    if value and not value.startswith("attach://"):
        return value.strip()
    raise bad_request("there is no photo in the request")


def _known_photo(state: EmulatorState, file_id: str) -> list[dict[str, Any]]:
    sizes = state.photo_sets.get(file_id)
    if sizes is not None:
        return [dict(size) for size in sizes]
    if file_id in state.files:
        raise bad_request("type of file mismatch")
    if file_id.lower().startswith(("http://", "https://")):
        # NOTE: the emulator never downloads URLs; Telegram would fetch this one.
        raise bad_request("failed to get HTTP URL content")
    raise bad_request("wrong file identifier/HTTP URL specified")


@bot_method("sendPhoto")
async def send_photo(ctx: CallContext, params: Params) -> dict[str, Any]:
    """Send a photo by upload or file_id; see core.telegram.org/bots/api#sendphoto."""
    state = ctx.state
    caption = caption_text(params)
    markup = parse_reply_markup(params.raw("reply_markup"))
    source = _photo_source(params)
    chat = state.chat_for_sending(ctx.chat_id_param(params))
    reply_to = _reply_target(params, chat)

    if isinstance(source, UploadedFile):
        kind, width, height = _check_photo(source.data)
        state.rate_limiter.acquire(chat.id, chat.is_private)
        sizes = store_photo(state, source.data, kind, width, height)
    else:
        sizes = _known_photo(state, source)
        state.rate_limiter.acquire(chat.id, chat.is_private)

    content: dict[str, Any] = {"photo": sizes}
    content.update(_caption_content(caption))
    if params.boolean("has_spoiler"):
        content["has_media_spoiler"] = True
    if params.boolean("show_caption_above_media"):
        content["show_caption_above_media"] = True
    message = _deliver(ctx, params, chat, content, markup, reply_to)
    return message.to_json()


# Edits


def _message_to_edit(ctx: CallContext, params: Params) -> Message:
    """Find the bot message that an edit method names.

    Raises:
        BotApiError: 400 when the message is missing, deleted or not the bot's, or
            403 when the user blocked the bot.
    """
    if params.has("inline_message_id"):
        # The emulator has no inline mode, so no inline message id is valid.
        raise bad_request("MESSAGE_ID_INVALID")
    chat = ctx.state.chat_for_sending(ctx.chat_id_param(params))
    message_id = params.integer("message_id")
    if not message_id:
        raise bad_request("message identifier is not specified")
    message = chat.messages.get(message_id)
    if message is None or message.deleted:
        raise bad_request(MESSAGE_TO_EDIT_NOT_FOUND)
    if not message.from_bot:
        raise bad_request("message can't be edited")
    return message


def _inline_data(markup: ReplyMarkup | None) -> dict[str, Any] | None:
    return markup.data if markup is not None else None


def _finish_edit(
    ctx: CallContext, message: Message, markup: ReplyMarkup | None
) -> dict[str, Any]:
    message.reply_markup = markup
    message.edit_date = max(message.date, int(time.time()))
    ctx.state.record_event(message.chat.id, "edited", _event_data(message))
    logger.debug(
        "bot message edited chat=%s message_id=%s", message.chat.id, message.message_id
    )
    return message.to_json()


@bot_method("editMessageText")
async def edit_message_text(ctx: CallContext, params: Params) -> dict[str, Any]:
    """Replace the text of a bot message.

    See core.telegram.org/bots/api#editmessagetext.
    As in Telegram, an edit without reply_markup removes the inline keyboard.
    """
    formatted = message_text(params)
    markup = parse_inline_markup(params.raw("reply_markup"))
    message = _message_to_edit(ctx, params)
    if "text" not in message.content:
        raise bad_request("there is no text in the message to edit")

    content = _text_content(formatted)
    if content == message.content and _inline_data(markup) == message.inline_keyboard:
        raise bad_request(MESSAGE_NOT_MODIFIED)
    message.content = content
    options = params.json_value(
        "link_preview_options", "can't parse link preview options JSON object"
    )
    if isinstance(options, dict):
        message.extra["link_preview_options"] = options
    return _finish_edit(ctx, message, markup)


@bot_method("editMessageCaption")
async def edit_message_caption(ctx: CallContext, params: Params) -> dict[str, Any]:
    """Replace the caption of a bot photo.

    See core.telegram.org/bots/api#editmessagecaption.
    """
    caption = caption_text(params)
    markup = parse_inline_markup(params.raw("reply_markup"))
    message = _message_to_edit(ctx, params)
    if "photo" not in message.content:
        raise bad_request("there is no caption in the message to edit")

    old_caption = {
        key: value
        for key, value in message.content.items()
        if key in ("caption", "caption_entities")
    }
    new_caption = _caption_content(caption)
    if new_caption == old_caption and _inline_data(markup) == message.inline_keyboard:
        raise bad_request(MESSAGE_NOT_MODIFIED)
    content = {
        key: value
        for key, value in message.content.items()
        if key not in ("caption", "caption_entities")
    }
    content.update(new_caption)
    message.content = content
    return _finish_edit(ctx, message, markup)


@bot_method("editMessageReplyMarkup")
async def edit_message_reply_markup(ctx: CallContext, params: Params) -> dict[str, Any]:
    """Replace or remove the inline keyboard of a bot message.

    See core.telegram.org/bots/api#editmessagereplymarkup.
    """
    markup = parse_inline_markup(params.raw("reply_markup"))
    message = _message_to_edit(ctx, params)
    if _inline_data(markup) == message.inline_keyboard:
        raise bad_request(MESSAGE_NOT_MODIFIED)
    return _finish_edit(ctx, message, markup)


@bot_method("deleteMessage")
async def delete_message(ctx: CallContext, params: Params) -> bool:
    """Delete a message; see core.telegram.org/bots/api#deletemessage.

    The emulated bot is no group administrator, so in groups it can delete only its
    own messages. No message older than 48 hours can be deleted.
    """
    state = ctx.state
    chat = state.find_chat(ctx.chat_id_param(params))
    message_id = params.integer("message_id")
    if not message_id:
        raise bad_request("message identifier is not specified")
    message = chat.messages.get(message_id)
    if message is None or message.deleted:
        raise bad_request("message to delete not found")
    if not chat.is_private and not message.from_bot:
        raise bad_request("message can't be deleted")
    if state.clock() - message.sent_at >= limits.MESSAGE_DELETE_WINDOW:
        raise bad_request("message can't be deleted")

    message.deleted = True
    state.record_event(chat.id, "deleted", {"message": message.to_json()})
    logger.debug("message deleted chat=%s message_id=%s", chat.id, message.message_id)
    return True


def _check_callback_url(state: EmulatorState, url: str) -> None:
    """Accept only the t.me start links that answerCallbackQuery allows without a game.

    Raises:
        BotApiError: 400 "URL_INVALID" for any other URL.
    """
    link = url.strip().removeprefix("https://").removeprefix("http://").lower()
    if not link.startswith(f"t.me/{state.config.bot_username.lower()}?start="):
        raise bad_request("URL_INVALID")


@bot_method("answerCallbackQuery")
async def answer_callback_query(ctx: CallContext, params: Params) -> bool:
    """Answer a button tap; see core.telegram.org/bots/api#answercallbackquery.

    A query can be answered once, within the answer timeout.
    """
    state = ctx.state
    text = callback_answer_text(params)
    url = params.string("url")
    query = state.callback_queries.get(params.string("callback_query_id") or "")
    if query is None or query.answered:
        raise bad_request(QUERY_TOO_OLD)
    if state.clock() - query.created_at > limits.CALLBACK_QUERY_ANSWER_TIMEOUT:
        raise bad_request(QUERY_TOO_OLD)
    if url:
        _check_callback_url(state, url)

    query.answered = True
    chat = query.message.chat
    ctx.chat_id = chat.id
    state.record_event(
        chat.id,
        "callback_answered",
        {
            "callback_query_id": query.id,
            "text": text,
            "show_alert": params.boolean("show_alert"),
            "url": url or None,
            "message": query.message.to_json(),
        },
    )
    return True


@bot_method("sendChatAction")
async def send_chat_action(ctx: CallContext, params: Params) -> bool:
    """Accept a chat action such as "typing".

    See core.telegram.org/bots/api#sendchataction.
    """
    action = (params.string("action") or "").strip().lower()
    if action not in limits.CHAT_ACTIONS:
        raise bad_request("wrong parameter action in request")
    ctx.state.chat_for_sending(ctx.chat_id_param(params))
    return True
