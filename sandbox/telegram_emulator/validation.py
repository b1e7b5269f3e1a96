"""Checks of Bot API parameters, failing with Telegram's error descriptions.

Descriptions come from the Bot API server (tdlib's telegram-bot-api, Client.cpp)
or from the Telegram server errors that it passes through (``BUTTON_DATA_INVALID``).
Where the emulator is stricter than Telegram, the message states this.
"""

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from . import limits
from .errors import bad_request
from .formatting import FormattedText, format_text, link_problem
from .params import Params

ReplyMarkupKind = Literal[
    "inline_keyboard", "keyboard", "remove_keyboard", "force_reply"
]

# Fields of an InlineKeyboardButton that give the button its action. Source:
# core.telegram.org/bots/api#inlinekeyboardbutton ("You must use exactly one of the
# optional fields").
_INLINE_BUTTON_ACTIONS = (
    "url",
    "callback_data",
    "web_app",
    "login_url",
    "switch_inline_query",
    "switch_inline_query_current_chat",
    "switch_inline_query_chosen_chat",
    "copy_text",
    "callback_game",
    "pay",
)

# Actions whose empty string value tdlib treats as "not set".
_STRING_ACTIONS_EMPTY_MEANS_UNSET = ("url", "callback_data")

_BOOLEAN_MARKUP_FIELDS = {
    "resize_keyboard": "ReplyKeyboardMarkup",
    "one_time_keyboard": "ReplyKeyboardMarkup",
    "is_persistent": "ReplyKeyboardMarkup",
    "remove_keyboard": "ReplyKeyboardRemove",
    "selective": "reply markup",
    "force_reply": "reply markup",
}

_COMMAND_PATTERN = re.compile(rf"[a-z0-9_]{{1,{limits.MAX_COMMAND_LENGTH}}}")
_LANGUAGE_CODE_PATTERN = re.compile(r"[a-z]{2}")
_SECRET_TOKEN_PATTERN = re.compile(
    rf"[A-Za-z0-9_-]{{1,{limits.MAX_WEBHOOK_SECRET_TOKEN_LENGTH}}}"
)


@dataclass(frozen=True)
class ReplyMarkup:
    """A parsed reply_markup: its kind and the JSON object as Telegram keeps it."""

    kind: ReplyMarkupKind
    data: dict[str, Any]


def _check_string_field(item: dict[str, Any], name: str, required: bool) -> str | None:
    value = item.get(name)
    if value is None:
        if required:
            raise bad_request(
                f"can't parse inline keyboard button: Can't find field \"{name}\""
            )
        return None
    if not isinstance(value, str):
        raise bad_request(
            "can't parse inline keyboard button: "
            f'Field "{name}" must be of type String'
        )
    return value


def _validate_inline_button(button: Any) -> dict[str, Any]:
    if not isinstance(button, dict):
        raise bad_request(
            "can't parse inline keyboard button: InlineKeyboardButton must be an Object"
        )
    _check_string_field(button, "text", required=True)
    for name in (
        "url",
        "callback_data",
        "switch_inline_query",
        "switch_inline_query_current_chat",
    ):
        _check_string_field(button, name, required=False)

    actions = [
        name
        for name in _INLINE_BUTTON_ACTIONS
        if name in button
        and button[name] is not None
        and not (name in _STRING_ACTIONS_EMPTY_MEANS_UNSET and button[name] == "")
    ]
    if not actions:
        raise bad_request(
            "can't parse inline keyboard button: "
            "Text buttons are unallowed in the inline keyboard"
        )
    if len(actions) > 1:
        # NOTE: tdlib uses the first field it finds and ignores the others. The emulator
        # rejects the button because the Bot API docs require exactly one field.
        raise bad_request(
            "can't parse inline keyboard button: exactly one of the optional "
            f"fields must be used, found {', '.join(actions)} "
            "(the emulator is stricter than Telegram here)"
        )

    action = actions[0]
    if action == "callback_data":
        if (
            len(button["callback_data"].encode("utf-8"))
            > limits.MAX_CALLBACK_DATA_BYTES
        ):
            raise bad_request("BUTTON_DATA_INVALID")
    elif action == "url":
        problem = link_problem(button["url"])
        if problem is not None:
            raise bad_request(
                f"inline keyboard button URL '{button['url']}' is invalid: {problem}"
            )
    elif action == "web_app":
        web_app = button["web_app"]
        url = web_app.get("url") if isinstance(web_app, dict) else None
        if (
            not isinstance(url, str)
            or not url.lower().startswith("https://")
            or link_problem(url)
        ):
            raise bad_request(
                f"inline keyboard button Web App URL '{url}' is invalid: "
                "Only HTTPS links are allowed"
            )
    elif action == "login_url":
        login_url = button["login_url"]
        url = login_url.get("url") if isinstance(login_url, dict) else None
        if not isinstance(url, str) or link_problem(url):
            raise bad_request("BUTTON_URL_INVALID")
    elif action == "copy_text":
        copy_text = button["copy_text"]
        text = copy_text.get("text") if isinstance(copy_text, dict) else None
        if (
            not isinstance(text, str)
            or not 1 <= len(text) <= limits.MAX_COPY_TEXT_LENGTH
        ):
            raise bad_request("COPY_TEXT_INVALID")
    return dict(button)


def _validate_inline_keyboard(keyboard: Any) -> list[list[dict[str, Any]]]:
    if not isinstance(keyboard, list):
        raise bad_request(
            'Field "inline_keyboard" of the InlineKeyboardMarkup must be an Array'
        )
    rows: list[list[dict[str, Any]]] = []
    total = 0
    for row in keyboard:
        if not isinstance(row, list):
            raise bad_request(
                'Field "inline_keyboard" of the InlineKeyboardMarkup '
                "must be an Array of Arrays"
            )
        # NOTE: Telegram documents neither button limit. The emulator rejects both
        # with Telegram's description for REPLY_MARKUP_TOO_LONG.
        if len(row) > limits.MAX_INLINE_KEYBOARD_ROW_BUTTONS:
            raise bad_request("reply markup is too long")
        rows.append([_validate_inline_button(button) for button in row])
        total += len(row)
    if total > limits.MAX_INLINE_KEYBOARD_BUTTONS:
        raise bad_request("reply markup is too long")
    return [row for row in rows if row]


def _validate_keyboard(keyboard: Any) -> list[list[Any]]:
    if not isinstance(keyboard, list):
        raise bad_request(
            'Field "keyboard" of the ReplyKeyboardMarkup must be an Array'
        )
    rows: list[list[Any]] = []
    for row in keyboard:
        if not isinstance(row, list):
            raise bad_request(
                'Field "keyboard" of the ReplyKeyboardMarkup must be an Array of Arrays'
            )
        for button in row:
            if isinstance(button, str):
                continue
            if not isinstance(button, dict):
                raise bad_request(
                    "can't parse keyboard button: "
                    "KeyboardButton must be a String or an Object"
                )
            if not isinstance(button.get("text"), str):
                raise bad_request(
                    'can\'t parse keyboard button: Field "text" must be of type String'
                )
        rows.append(list(row))
    return [row for row in rows if row]


def parse_reply_markup(value: Any) -> ReplyMarkup | None:
    """Parse and check a reply_markup parameter.

    ``value`` is the JSON string that python-telegram-bot sends, or an already
    decoded object from a JSON body. An empty inline keyboard means no markup, as
    in tdlib.

    Raises:
        BotApiError: 400 with Telegram's description of what is wrong.
    """
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise bad_request("can't parse reply keyboard markup JSON object") from None
    if not isinstance(value, dict):
        raise bad_request("Object expected as reply markup")

    for name, owner in _BOOLEAN_MARKUP_FIELDS.items():
        if name in value and not isinstance(value[name], bool):
            raise bad_request(
                f'Field "{name}" of the {owner} must be of the type Boolean'
            )

    if "keyboard" in value:
        rows = _validate_keyboard(value["keyboard"])
        if rows:
            data = dict(value)
            data["keyboard"] = rows
            return ReplyMarkup("keyboard", data)
    if "inline_keyboard" in value:
        inline_rows = _validate_inline_keyboard(value["inline_keyboard"])
        if inline_rows:
            return ReplyMarkup("inline_keyboard", {"inline_keyboard": inline_rows})
    if value.get("remove_keyboard") is True:
        return ReplyMarkup("remove_keyboard", dict(value))
    if value.get("force_reply") is True:
        return ReplyMarkup("force_reply", dict(value))
    return None


def parse_inline_markup(value: Any) -> ReplyMarkup | None:
    """Parse a reply_markup that must be an inline keyboard, as edits require.

    Raises:
        BotApiError: 400 when the markup is invalid or is another kind of keyboard.
    """
    markup = parse_reply_markup(value)
    if markup is not None and markup.kind != "inline_keyboard":
        raise bad_request("inline keyboard expected")
    return markup


def message_text(params: Params) -> FormattedText:
    """Read and check the text of sendMessage or editMessageText.

    Raises:
        BotApiError: 400 "message text is empty" or "message is too long", or a
            formatting error.
    """
    raw_text = params.string("text") or ""
    if not raw_text:
        raise bad_request("message text is empty")
    entities = params.json_value("entities", "can't parse entities JSON object")
    formatted = format_text(raw_text, params.string("parse_mode"), entities)
    if not formatted.text:
        raise bad_request("message text is empty")
    if len(formatted.text) > limits.MAX_MESSAGE_TEXT_LENGTH:
        raise bad_request("message is too long")
    return formatted


def caption_text(params: Params) -> FormattedText:
    """Read and check a caption; an absent caption is an empty text.

    Raises:
        BotApiError: 400 "message caption is too long" or a formatting error.
    """
    raw_caption = params.string("caption") or ""
    entities = params.json_value("caption_entities", "can't parse entities JSON object")
    formatted = format_text(raw_caption, params.string("parse_mode"), entities)
    if len(formatted.text) > limits.MAX_CAPTION_LENGTH:
        raise bad_request("message caption is too long")
    return formatted


def callback_answer_text(params: Params) -> str | None:
    """Read and check the notification text of answerCallbackQuery.

    Raises:
        BotApiError: 400 "MESSAGE_TOO_LONG" above 200 characters.
    """
    text = params.string("text")
    if text is not None and len(text) > limits.MAX_CALLBACK_ANSWER_TEXT_LENGTH:
        raise bad_request("MESSAGE_TOO_LONG")
    return text or None


def bot_commands(params: Params) -> list[dict[str, str]]:
    """Read and check the commands of setMyCommands.

    Raises:
        BotApiError: 400 ``BOT_COMMAND_INVALID``, ``BOT_COMMAND_DESCRIPTION_INVALID``
            or ``BOT_COMMANDS_TOO_MUCH``, or a JSON error.
    """
    value = params.json_value("commands", "can't parse commands JSON object")
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad_request("Expected an Array of BotCommand")

    commands: list[dict[str, str]] = []
    for item in value:
        if not isinstance(item, dict):
            raise bad_request("can't parse BotCommand: expected an Object")
        for field_name in ("command", "description"):
            if field_name not in item:
                raise bad_request(
                    f"can't parse BotCommand: Can't find field \"{field_name}\""
                )
            if not isinstance(item[field_name], str):
                raise bad_request(
                    "can't parse BotCommand: "
                    f'Field "{field_name}" must be of type String'
                )
        command = item["command"]
        description = item["description"]
        if not _COMMAND_PATTERN.fullmatch(command):
            raise bad_request("BOT_COMMAND_INVALID")
        if not description.strip():
            raise bad_request("command description must be non-empty")
        if len(description) > limits.MAX_COMMAND_DESCRIPTION_LENGTH:
            raise bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
        commands.append({"command": command, "description": description})
    if len(commands) > limits.MAX_COMMANDS:
        raise bad_request("BOT_COMMANDS_TOO_MUCH")
    return commands


def language_code(params: Params) -> str:
    """Read the language_code of the command methods: empty or two letters.

    Raises:
        BotApiError: 400 for any other value.
    """
    code = (params.string("language_code") or "").strip()
    if code and not _LANGUAGE_CODE_PATTERN.fullmatch(code):
        raise bad_request(
            f"invalid language code specified: '{code}' "
            "is not a two-letter ISO 639-1 code"
        )
    return code


def webhook_secret_token(params: Params) -> str | None:
    """Read the secret_token of setWebhook.

    Raises:
        BotApiError: 400 when it has characters other than A-Z, a-z, 0-9, _ and -
            or more than 256 of them.
    """
    token = params.string("secret_token")
    if not token:
        return None
    if not _SECRET_TOKEN_PATTERN.fullmatch(token):
        raise bad_request(
            "secret token contains unallowed characters "
            "or is longer than 256 characters"
        )
    return token
