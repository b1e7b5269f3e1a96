"""The testing API under ``/_emulator/`` and the chat page at ``/chat``.

Tests and people use these routes to play the users of the emulated Telegram and
to watch what the bot does. They are not under ``/bot<token>/``, so a bot cannot
reach them through the Bot API.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from . import group_actions, user_actions
from .state import EmulatorState
from .user_actions import ActionError

logger = logging.getLogger(__name__)

# Maximum wait of an events long poll, in seconds.
MAX_EVENTS_WAIT = 60.0

_STATIC_DIR = Path(__file__).parent / "static"
_STATIC_FILES = {
    "chat.js": "application/javascript",
    "chat.css": "text/css",
}

StateGetter = Callable[[web.Request], EmulatorState]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"ok": False, "error": message}, status=status)


def _int_path(request: web.Request, name: str) -> int:
    value = request.match_info[name]
    try:
        return int(value)
    except ValueError:
        raise ActionError(400, f"{name} must be an integer, got {value!r}") from None


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.body_exists:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise ActionError(400, "request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ActionError(400, "request body must be a JSON object")
    return body


Route = Callable[[web.Request, EmulatorState], Awaitable[web.StreamResponse]]


def _route(
    get_state: StateGetter, route: Route
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap a route so that an ActionError becomes a JSON error response."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await route(request, get_state(request))
        except ActionError as error:
            logger.info(
                "testing api request rejected path=%s status=%s",
                request.path,
                error.status,
            )
            return _error(error.status, error.message)

    return handle


async def _send(request: web.Request, state: EmulatorState) -> web.Response:
    body = await _json_body(request)
    return web.json_response(
        user_actions.send_message(state, _int_path(request, "user_id"), body)
    )


async def _tap(request: web.Request, state: EmulatorState) -> web.Response:
    body = await _json_body(request)
    return web.json_response(
        user_actions.tap_button(state, _int_path(request, "user_id"), body)
    )


async def _edit(request: web.Request, state: EmulatorState) -> web.Response:
    body = await _json_body(request)
    return web.json_response(
        user_actions.edit_message(state, _int_path(request, "user_id"), body)
    )


async def _block(request: web.Request, state: EmulatorState) -> web.Response:
    return web.json_response(
        user_actions.set_blocked(state, _int_path(request, "user_id"), True)
    )


async def _unblock(request: web.Request, state: EmulatorState) -> web.Response:
    return web.json_response(
        user_actions.set_blocked(state, _int_path(request, "user_id"), False)
    )


async def _profile(request: web.Request, state: EmulatorState) -> web.Response:
    body = await _json_body(request)
    return web.json_response(
        user_actions.update_profile(state, _int_path(request, "user_id"), body)
    )


async def _create_group(request: web.Request, state: EmulatorState) -> web.Response:
    body = await _json_body(request)
    return web.json_response(
        group_actions.create_group(state, _int_path(request, "chat_id"), body)
    )


async def _set_member(request: web.Request, state: EmulatorState) -> web.Response:
    body = await _json_body(request)
    chat_id = _int_path(request, "chat_id")
    user_id = _int_path(request, "user_id")
    return web.json_response(group_actions.set_member(state, chat_id, user_id, body))


async def _set_bot_member(request: web.Request, state: EmulatorState) -> web.Response:
    body = await _json_body(request)
    return web.json_response(
        group_actions.set_bot_member(state, _int_path(request, "chat_id"), body)
    )


async def _delete_topic(request: web.Request, state: EmulatorState) -> web.Response:
    chat_id = _int_path(request, "chat_id")
    thread_id = _int_path(request, "thread_id")
    return web.json_response(
        group_actions.delete_topic_as_admin(state, chat_id, thread_id)
    )


async def _users(request: web.Request, state: EmulatorState) -> web.Response:
    return web.json_response(user_actions.list_users(state))


def _float_query(request: web.Request, name: str, default: float) -> float:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ActionError(
            400, f"query parameter {name} must be a number, got {value!r}"
        ) from None


async def _events(request: web.Request, state: EmulatorState) -> web.Response:
    """Long-poll the events of a chat; respond at once if some follow ``after``."""
    chat_id = _int_path(request, "chat_id")
    after = int(_float_query(request, "after", 0))
    wait = min(max(_float_query(request, "wait", 0), 0.0), MAX_EVENTS_WAIT)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    events = state.events_after(chat_id, after)
    while not events and not state.closing:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        await state.wait_for_chat_event(chat_id, remaining)
        events = state.events_after(chat_id, after)

    last_seq = events[-1].seq if events else after
    return web.json_response(
        {"events": [event.to_json() for event in events], "last_seq": last_seq}
    )


async def _messages(request: web.Request, state: EmulatorState) -> web.Response:
    chat = state.chats.get(_int_path(request, "chat_id"))
    if chat is None:
        return web.json_response({"chat": None, "messages": [], "reply_keyboard": None})
    messages = [
        message.to_json() for message in chat.messages.values() if not message.deleted
    ]
    return web.json_response(
        {
            "chat": chat.to_json(),
            "messages": messages,
            "reply_keyboard": chat.reply_keyboard,
        }
    )


async def _file(request: web.Request, state: EmulatorState) -> web.Response:
    stored = state.files.get(request.match_info["file_id"])
    if stored is None:
        raise ActionError(404, f"file {request.match_info['file_id']!r} not found")
    return web.Response(
        body=stored.data, content_type=stored.mime_type or "application/octet-stream"
    )


async def _calls(request: web.Request, state: EmulatorState) -> web.Response:
    method = request.query.get("method")
    calls = [
        call.to_json()
        for call in state.calls
        if method is None or call.method.lower() == method.lower()
    ]
    return web.json_response({"calls": calls})


async def _stats(request: web.Request, state: EmulatorState) -> web.Response:
    return web.json_response(state.stats())


async def _reset(request: web.Request, state: EmulatorState) -> web.Response:
    state.reset()
    logger.info("emulator state reset")
    return web.json_response({"ok": True})


async def _chat_page(request: web.Request, state: EmulatorState) -> web.FileResponse:
    return web.FileResponse(
        _STATIC_DIR / "chat.html", headers={"Content-Type": "text/html; charset=utf-8"}
    )


async def _static(request: web.Request, state: EmulatorState) -> web.StreamResponse:
    name = request.match_info["name"]
    content_type = _STATIC_FILES.get(name)
    if content_type is None:
        raise ActionError(404, f"no static file {name!r}")
    return web.FileResponse(
        _STATIC_DIR / name, headers={"Content-Type": f"{content_type}; charset=utf-8"}
    )


def add_testing_routes(app: web.Application, get_state: StateGetter) -> None:
    """Add the ``/_emulator/`` routes and the chat page to ``app``."""
    routes: list[tuple[str, str, Route]] = [
        ("POST", "/_emulator/users/{user_id}/send", _send),
        ("POST", "/_emulator/users/{user_id}/tap", _tap),
        ("POST", "/_emulator/users/{user_id}/edit", _edit),
        ("POST", "/_emulator/users/{user_id}/block", _block),
        ("POST", "/_emulator/users/{user_id}/unblock", _unblock),
        ("PUT", "/_emulator/users/{user_id}", _profile),
        ("GET", "/_emulator/users", _users),
        ("POST", "/_emulator/groups/{chat_id}", _create_group),
        ("PUT", "/_emulator/groups/{chat_id}/members/{user_id}", _set_member),
        ("PUT", "/_emulator/groups/{chat_id}/bot", _set_bot_member),
        ("DELETE", "/_emulator/groups/{chat_id}/topics/{thread_id}", _delete_topic),
        ("GET", "/_emulator/chats/{chat_id}/events", _events),
        ("GET", "/_emulator/chats/{chat_id}/messages", _messages),
        ("GET", "/_emulator/files/{file_id}", _file),
        ("GET", "/_emulator/calls", _calls),
        ("GET", "/_emulator/stats", _stats),
        ("POST", "/_emulator/reset", _reset),
        ("GET", "/chat", _chat_page),
        ("GET", "/chat/{name}", _static),
    ]
    for method, path, route in routes:
        app.router.add_route(method, path, _route(get_state, route))
