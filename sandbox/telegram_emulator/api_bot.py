"""Bot API methods about the bot itself, its commands, chats and files."""

from typing import Any

from . import limits
from .errors import bad_request
from .methods import CallContext, bot_method
from .params import Params
from .validation import bot_commands, language_code

_GLOBAL_SCOPES = frozenset(
    {"default", "all_private_chats", "all_group_chats", "all_chat_administrators"}
)
_CHAT_SCOPES = frozenset({"chat", "chat_administrators", "chat_member"})

ScopeKey = tuple[str, int | None, int | None]


@bot_method("getMe")
async def get_me(ctx: CallContext, params: Params) -> dict[str, Any]:
    """Describe the bot; its id is the number before the colon of the token."""
    ctx.state.bot_id = ctx.bot_id
    me = ctx.bot_json
    me.update(
        {
            "can_join_groups": True,
            "can_read_all_group_messages": not ctx.state.config.group_privacy,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }
    )
    return me


def _scope_key(ctx: CallContext, params: Params) -> ScopeKey:
    """Read the BotCommandScope of a command method as a dictionary key.

    Raises:
        BotApiError: 400 for an unknown scope type, or a chat or user that does
            not exist.
    """
    scope = params.json_value("scope", "can't parse BotCommandScope JSON object")
    if scope is None:
        return ("default", None, None)
    if not isinstance(scope, dict):
        raise bad_request("can't parse BotCommandScope: expected an Object")
    kind = scope.get("type")
    if kind in _GLOBAL_SCOPES:
        return (str(kind), None, None)
    if kind not in _CHAT_SCOPES:
        raise bad_request("can't parse BotCommandScope: Unsupported type specified")

    raw_chat_id = scope.get("chat_id")
    if isinstance(raw_chat_id, str) and raw_chat_id.lstrip("-").isdigit():
        raw_chat_id = int(raw_chat_id)
    if not isinstance(raw_chat_id, int | str) or isinstance(raw_chat_id, bool):
        raise bad_request("chat_id is empty")
    chat = ctx.state.find_chat(raw_chat_id)
    user_id: int | None = None
    if kind == "chat_member":
        raw_user_id = scope.get("user_id")
        if not isinstance(raw_user_id, int) or raw_user_id not in ctx.state.users:
            raise bad_request("user not found")
        user_id = raw_user_id
    return (str(kind), chat.id, user_id)


@bot_method("setMyCommands")
async def set_my_commands(ctx: CallContext, params: Params) -> bool:
    """Store the commands of a scope and language.

    See core.telegram.org/bots/api#setmycommands.
    """
    commands = bot_commands(params)
    key = (*_scope_key(ctx, params), language_code(params))
    if commands:
        ctx.state.commands[key] = commands
    else:
        ctx.state.commands.pop(key, None)
    return True


@bot_method("getMyCommands")
async def get_my_commands(ctx: CallContext, params: Params) -> list[dict[str, str]]:
    """Return the commands of exactly this scope and language, without fallback."""
    key = (*_scope_key(ctx, params), language_code(params))
    return [dict(command) for command in ctx.state.commands.get(key, [])]


@bot_method("deleteMyCommands")
async def delete_my_commands(ctx: CallContext, params: Params) -> bool:
    """Delete the commands of a scope and language.

    See core.telegram.org/bots/api#deletemycommands.
    """
    key = (*_scope_key(ctx, params), language_code(params))
    ctx.state.commands.pop(key, None)
    return True


@bot_method("getChat")
async def get_chat(ctx: CallContext, params: Params) -> dict[str, Any]:
    """Describe a chat as a ChatFullInfo; see core.telegram.org/bots/api#getchat."""
    chat = ctx.state.find_chat(ctx.chat_id_param(params))
    info = chat.to_json()
    info.update(
        {
            "accent_color_id": 0,
            "max_reaction_count": 11,
            "accepted_gift_types": {
                "unlimited_gifts": False,
                "limited_gifts": False,
                "unique_gifts": False,
                "premium_subscription": False,
                "gifts_from_channels": False,
            },
        }
    )
    return info


@bot_method("getFile")
async def get_file(ctx: CallContext, params: Params) -> dict[str, Any]:
    """Return the File of a file_id.

    The bytes are served at ``/file/bot<token>/<file_path>``.
    """
    stored = ctx.state.files.get((params.string("file_id") or "").strip())
    if stored is None:
        raise bad_request("invalid file_id")
    if len(stored.data) > limits.MAX_DOWNLOAD_BYTES:
        raise bad_request("file is too big")
    return stored.to_file_json()


@bot_method("close")
async def close(ctx: CallContext, params: Params) -> bool:
    """Accept close; the emulator keeps running."""
    return True


@bot_method("logOut")
async def log_out(ctx: CallContext, params: Params) -> bool:
    """Accept logOut; the emulator keeps running."""
    return True
