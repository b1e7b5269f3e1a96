"""A headless Chromium driven over the DevTools protocol, for browser tests.

Only loopback: Chromium listens for DevTools on 127.0.0.1 and every page a
test opens is served on 127.0.0.1. The protocol runs over aiohttp's WebSocket
client, so no browser driver package is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")

START_TIMEOUT_SECONDS = 30.0
"""Chromium's first start on a cold disk takes a few seconds."""

COMMAND_TIMEOUT_SECONDS = 30.0

_DEVTOOLS_LINE = re.compile(r"DevTools listening on (ws://\S+)")


def chromium_path() -> str | None:
    """Return the Chromium executable, or None when none is installed."""
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    return shutil.which("chromium")


class Page:
    """One browser tab attached through a flat DevTools session."""

    def __init__(self, browser: Browser, session_id: str) -> None:
        self._browser = browser
        self._session_id = session_id

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a command to this tab and return its result."""
        return await self._browser.send(method, session_id=self._session_id, **params)

    async def wait_for(self, method: str) -> dict[str, Any]:
        """Wait for the next protocol event ``method`` of this tab."""
        return await self._browser.wait_for(method, self._session_id)

    def events(self, method: str) -> list[dict[str, Any]]:
        """Return the parameters of every event ``method`` of this tab so far."""
        return [
            params
            for name, session_id, params in self._browser.events
            if name == method and session_id == self._session_id
        ]

    async def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the tab, awaiting a returned promise.

        Raises:
            RuntimeError: the script threw.
        """
        result = await self.send(
            "Runtime.evaluate",
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


class Browser:
    """A connection to Chromium's browser-level DevTools endpoint."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiters: list[tuple[str, str | None, asyncio.Future[dict[str, Any]]]] = []
        self.events: list[tuple[str, str | None, dict[str, Any]]] = []
        """Every protocol event so far: method, session id and parameters."""
        self._reader = asyncio.create_task(self._read())

    async def send(
        self, method: str, *, session_id: str | None = None, **params: Any
    ) -> dict[str, Any]:
        """Send a command and return its result.

        Raises:
            RuntimeError: the browser returned an error.
        """
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session_id is not None:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[message_id] = future
        await self._socket.send_str(json.dumps(message))
        async with asyncio.timeout(COMMAND_TIMEOUT_SECONDS):
            reply = await future
        if "error" in reply:
            raise RuntimeError(f"{method} failed: {reply['error']}")
        return dict(reply.get("result", {}))

    async def wait_for(self, method: str, session_id: str | None) -> dict[str, Any]:
        """Wait for the next event ``method`` (of one tab when ``session_id``)."""
        future: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiters.append((method, session_id, future))
        async with asyncio.timeout(COMMAND_TIMEOUT_SECONDS):
            return await future

    async def new_page(self) -> Page:
        """Open a blank tab and attach to it."""
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        return Page(self, attached["sessionId"])

    async def close(self) -> None:
        """Close the connection; the process is stopped by ``launch``."""
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._socket.close()

    async def _read(self) -> None:
        async for raw in self._socket:
            if raw.type is not aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(raw.data)
            if "method" in message:
                self.events.append(
                    (
                        message["method"],
                        message.get("sessionId"),
                        dict(message.get("params", {})),
                    )
                )
            if "id" in message:
                future = self._pending.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
                continue
            for waiter in list(self._waiters):
                method, session_id, future = waiter
                if method != message.get("method"):
                    continue
                if session_id is not None and session_id != message.get("sessionId"):
                    continue
                self._waiters.remove(waiter)
                if not future.done():
                    future.set_result(dict(message.get("params", {})))


@contextlib.asynccontextmanager
async def launch(executable: str) -> AsyncIterator[Browser]:
    """Start headless Chromium with a throwaway profile and connect to it."""
    with tempfile.TemporaryDirectory(prefix="gv-chromium-") as profile:
        process = await asyncio.create_subprocess_exec(
            executable,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        drain: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(START_TIMEOUT_SECONDS):
                url = await _devtools_url(process)
            # Keep reading, so a chatty Chromium never blocks on a full pipe.
            drain = asyncio.create_task(_drain(process))
            async with aiohttp.ClientSession() as session:
                socket = await session.ws_connect(url, max_msg_size=0)
                browser = Browser(socket)
                try:
                    yield browser
                finally:
                    await browser.close()
        finally:
            if process.returncode is None:
                process.terminate()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
            if drain is not None:
                await drain


async def _devtools_url(process: asyncio.subprocess.Process) -> str:
    assert process.stderr is not None
    async for raw in process.stderr:
        match = _DEVTOOLS_LINE.search(raw.decode(errors="replace"))
        if match:
            return match.group(1)
    raise RuntimeError(f"chromium exited with {await process.wait()} before DevTools")


async def _drain(process: asyncio.subprocess.Process) -> None:
    assert process.stderr is not None
    async for _line in process.stderr:
        pass
