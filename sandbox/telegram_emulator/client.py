"""An aiohttp client of the emulator's testing API, for tests.

Example::

    client = EmulatorClient(base_url)
    await client.send_text(42, "/start")
    event = await client.wait_for(42, lambda event: event["kind"] == "sent")
    message = event["message"]
    await client.tap(42, message["message_id"], button_data(message, "Ja"))
"""

import asyncio
import collections
from collections.abc import Callable
from types import TracebackType
from typing import Any

import aiohttp

# Seconds that one events request may wait on the server; longer waits are split.
_EVENTS_WAIT_SLICE = 25.0

# Extra seconds that a request may take beyond the wait it requests from the server.
_REQUEST_MARGIN = 10.0

Event = dict[str, Any]


class EmulatorError(Exception):
    """A testing API request that the emulator rejected."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"emulator answered {status}: {message}")
        self.status = status
        self.message = message


def buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the inline buttons of a Message JSON, row by row, left to right."""
    keyboard = (message.get("reply_markup") or {}).get("inline_keyboard") or []
    return [button for row in keyboard for button in row]


def button_data(message: dict[str, Any], text_contains: str) -> str:
    """Return the callback_data of the first button with ``text_contains`` in its text.

    Raises:
        LookupError: when no callback button has such a text; the message lists the
            button texts there are.
    """
    for button in buttons(message):
        if text_contains in button.get("text", "") and "callback_data" in button:
            return str(button["callback_data"])
    texts = [button.get("text", "") for button in buttons(message)]
    raise LookupError(
        f"no callback button with {text_contains!r} in its text; buttons: {texts}"
    )


class EmulatorClient:
    """Plays users and reads what the bot did, through the testing API.

    The client keeps a cursor per chat, so :meth:`next_event` returns each event
    once, in order. A session passed in is not closed by :meth:`close`.
    """

    def __init__(
        self, base_url: str, session: aiohttp.ClientSession | None = None
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._session = session
        self._owns_session = session is None
        self._cursors: dict[int, int] = {}
        self._buffers: dict[int, collections.deque[Event]] = {}

    async def __aenter__(self) -> "EmulatorClient":
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if the client created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        client_timeout: aiohttp.ClientTimeout | None = None,
    ) -> Any:
        async with self._http().request(
            method,
            f"{self._base_url}{path}",
            json=json,
            params=params,
            timeout=client_timeout or aiohttp.ClientTimeout(total=_REQUEST_MARGIN),
        ) as response:
            body = await response.json(content_type=None)
            if response.status >= 400:
                message = body.get("error", body) if isinstance(body, dict) else body
                raise EmulatorError(response.status, str(message))
            return body

    # Users

    async def send(self, user_id: int, kind: str, **fields: Any) -> dict[str, Any]:
        """Send a message of ``kind`` as the user.

        Returns the message_id, update_id and chat_id of the new message.

        ``fields`` are the other fields of the send request, such as ``text``,
        ``first_name``, ``chat_id``, ``chat_type`` or ``photo_base64``.
        """
        body = {"kind": kind, **fields}
        return dict(
            await self._request("POST", f"/_emulator/users/{user_id}/send", json=body)
        )

    async def send_text(self, user_id: int, text: str, **extra: Any) -> dict[str, Any]:
        """Send a text message as the user; a text starting with "/" is a command."""
        kind = "command" if text.startswith("/") else "text"
        return await self.send(user_id, kind, text=text, **extra)

    async def tap(
        self,
        user_id: int,
        message_id: int,
        callback_data: str,
        force: bool = False,
        **extra: Any,
    ) -> dict[str, Any]:
        """Tap the inline button with ``callback_data``.

        Returns the callback_query_id and update_id.

        With ``force=True`` the emulator accepts data that no button carries.
        """
        body = {
            "message_id": message_id,
            "callback_data": callback_data,
            "force": force,
            **extra,
        }
        return dict(
            await self._request("POST", f"/_emulator/users/{user_id}/tap", json=body)
        )

    async def edit(
        self, user_id: int, message_id: int, text: str, **extra: Any
    ) -> dict[str, Any]:
        """Edit the user's own text message; the bot gets an edited_message update."""
        body = {"message_id": message_id, "text": text, **extra}
        return dict(
            await self._request("POST", f"/_emulator/users/{user_id}/edit", json=body)
        )

    async def block(self, user_id: int) -> dict[str, Any]:
        """Block the bot as the user; the bot gets 403 when it writes to them."""
        return dict(await self._request("POST", f"/_emulator/users/{user_id}/block"))

    async def unblock(self, user_id: int) -> dict[str, Any]:
        """Unblock the bot as the user."""
        return dict(await self._request("POST", f"/_emulator/users/{user_id}/unblock"))

    async def create_user(self, user_id: int, **profile: Any) -> dict[str, Any]:
        """Create or change a user without starting a chat with the bot."""
        return dict(
            await self._request("PUT", f"/_emulator/users/{user_id}", json=profile)
        )

    # Groups

    async def create_forum(self, chat_id: int, title: str) -> dict[str, Any]:
        """Create a supergroup with topics (a forum) with id ``chat_id``."""
        body = {"title": title, "forum": True}
        return dict(
            await self._request("POST", f"/_emulator/groups/{chat_id}", json=body)
        )

    async def set_member(
        self, chat_id: int, user_id: int, status: str, **rights: Any
    ) -> dict[str, Any]:
        """Give a user a status in a group; ``rights`` are administrator rights."""
        body = {"status": status, **rights}
        path = f"/_emulator/groups/{chat_id}/members/{user_id}"
        return dict(await self._request("PUT", path, json=body))

    async def set_bot_member(
        self, chat_id: int, status: str, **rights: Any
    ) -> dict[str, Any]:
        """Give the bot a status in a group, such as an administrator's rights."""
        body = {"status": status, **rights}
        path = f"/_emulator/groups/{chat_id}/bot"
        return dict(await self._request("PUT", path, json=body))

    async def delete_topic(self, chat_id: int, thread_id: int) -> dict[str, Any]:
        """Delete a forum topic and its messages, as a group administrator."""
        path = f"/_emulator/groups/{chat_id}/topics/{thread_id}"
        return dict(await self._request("DELETE", path))

    async def send_in_topic(
        self, user_id: int, chat_id: int, thread_id: int, text: str
    ) -> dict[str, Any]:
        """Send a text (or a command) as the user in a forum topic."""
        return await self.send_text(
            user_id,
            text,
            chat_type="supergroup",
            chat_id=chat_id,
            message_thread_id=thread_id,
        )

    # What the bot did

    async def _fetch_events(self, chat_id: int, wait: float) -> None:
        cursor = self._cursors.get(chat_id, 0)
        body = await self._request(
            "GET",
            f"/_emulator/chats/{chat_id}/events",
            params={"after": str(cursor), "wait": f"{wait:.3f}"},
            client_timeout=aiohttp.ClientTimeout(total=wait + _REQUEST_MARGIN),
        )
        buffer = self._buffers.setdefault(chat_id, collections.deque())
        buffer.extend(body["events"])
        self._cursors[chat_id] = int(body["last_seq"])

    # next_event and wait_for take a timeout like asyncio.wait_for, which the tests
    # written against this client expect.
    async def next_event(
        self,
        chat_id: int,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> Event:
        """Return the next event of ``chat_id`` after the last one this client returned.

        Raises:
            asyncio.TimeoutError: when no event arrives within ``timeout`` seconds.
        """
        buffer = self._buffers.setdefault(chat_id, collections.deque())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not buffer:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"no event in chat {chat_id} within {timeout} s "
                    f"after event {self._cursors.get(chat_id, 0)}"
                )
            await self._fetch_events(chat_id, min(remaining, _EVENTS_WAIT_SLICE))
        return buffer.popleft()

    async def wait_for(
        self,
        chat_id: int,
        predicate: Callable[[Event], bool],
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> Event:
        """Consume events of ``chat_id`` until one matches ``predicate``; return it.

        Raises:
            asyncio.TimeoutError: when no matching event arrives within ``timeout``
                seconds; the message lists the kinds of the events skipped.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        skipped: list[str] = []
        while True:
            remaining = deadline - loop.time()
            try:
                event = await self.next_event(chat_id, timeout=max(remaining, 0.0))
            except TimeoutError:
                raise TimeoutError(
                    f"no matching event in chat {chat_id} within {timeout} s; "
                    f"skipped events: {skipped}"
                ) from None
            if predicate(event):
                return event
            skipped.append(event["kind"])

    def skip_pending(self, chat_id: int) -> None:
        """Drop the events of ``chat_id`` that were fetched but not yet returned."""
        self._buffers.pop(chat_id, None)

    async def messages(self, chat_id: int) -> list[dict[str, Any]]:
        """Return every message of the chat as it is now, both directions, in order."""
        body = await self._request("GET", f"/_emulator/chats/{chat_id}/messages")
        return list(body["messages"])

    async def file_bytes(self, file_id: str) -> bytes:
        """Return the bytes stored under ``file_id``, such as a photo the bot sent."""
        async with self._http().get(
            f"{self._base_url}/_emulator/files/{file_id}",
            timeout=aiohttp.ClientTimeout(total=_REQUEST_MARGIN),
        ) as response:
            if response.status >= 400:
                raise EmulatorError(response.status, await response.text())
            return await response.read()

    async def calls(self, method: str | None = None) -> list[dict[str, Any]]:
        """Return the logged Bot API calls, optionally only those of one method."""
        params = {"method": method} if method else None
        body = await self._request("GET", "/_emulator/calls", params=params)
        return list(body["calls"])

    async def stats(self) -> dict[str, Any]:
        """Return the emulator's counts, including the number of 429 responses."""
        return dict(await self._request("GET", "/_emulator/stats"))

    async def reset(self) -> None:
        """Clear the emulator's state and this client's cursors."""
        await self._request("POST", "/_emulator/reset")
        self._cursors.clear()
        self._buffers.clear()
