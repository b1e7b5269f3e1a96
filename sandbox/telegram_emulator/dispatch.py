"""Run one Bot API call: check the token, find the method, log the outcome."""

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

# The api_* modules register their methods in METHODS when imported.
from . import api_bot, api_forum, api_messages, api_updates  # noqa: F401
from .errors import BotApiError, method_not_found, unauthorized
from .methods import METHODS, CallContext, Described
from .params import Params
from .state import EmulatorState

logger = logging.getLogger(__name__)

# A bot token is "<bot id>:<secret>". Real secrets are 35 characters of this
# alphabet; the emulator accepts any length so tests can use short fake tokens.
_TOKEN_PATTERN = re.compile(r"([1-9][0-9]{0,19}):[A-Za-z0-9_-]+")


def bot_id_from_token(token: str) -> int:
    """Return the bot id that starts ``token``.

    Raises:
        BotApiError: 401 Unauthorized when the token is not ``<bot id>:<secret>``.
    """
    match = _TOKEN_PATTERN.fullmatch(token)
    if match is None:
        raise unauthorized()
    return int(match.group(1))


def _initial_chat_id(params: Params) -> int | str | None:
    value = params.string("chat_id")
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.lstrip("-").isdigit() else value


async def call_method(
    state: EmulatorState,
    token: str,
    method: str,
    load_params: Callable[[], Awaitable[Params]],
) -> tuple[int, dict[str, Any]]:
    """Run the Bot API method ``method`` and return the HTTP status and JSON body.

    ``load_params`` reads the parameters. It runs after the token and method
    checks, so a bad token is rejected before the body is read.
    """
    name = method
    context: CallContext | None = None
    try:
        bot_id = bot_id_from_token(token)
        entry = METHODS.get(method.lower())
        if entry is None:
            raise method_not_found()
        name, handler = entry
        params = await load_params()
        context = CallContext(state, bot_id, token, chat_id=_initial_chat_id(params))
        result = await handler(context, params)
    except BotApiError as error:
        chat_id = context.chat_id if context is not None else None
        state.record_call(
            name,
            ok=False,
            error_code=error.error_code,
            description=error.description,
            chat_id=chat_id,
        )
        logger.info(
            "bot api call failed method=%s chat=%s code=%s",
            name,
            chat_id,
            error.error_code,
        )
        return error.error_code, error.to_json()

    state.record_call(name, ok=True, chat_id=context.chat_id)
    if isinstance(result, Described):
        return 200, {
            "ok": True,
            "result": result.result,
            "description": result.description,
        }
    return 200, {"ok": True, "result": result}
