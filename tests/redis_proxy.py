"""A TCP proxy on loopback in front of a test's redis-server, which can hold
back a command or a reply.

A test points one service at the proxy and holds back the reply to the next
command that names a given key. Redis has then run that command, but the
service has not read its result. Or it holds back a command, which Redis then
runs only when the test lets it go. The test changes Redis through a client of
its own in the meantime, so its write lands at a chosen point between commands
of the service, with no timing luck involved.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

READ_BYTES = 65536
"""Bytes read from a socket at once. A test's commands are far smaller."""

MARKER_OVERLAP_BYTES = 256
"""Bytes of the previous read kept for marker matching, so a marker that a TCP
read splits in two still matches. Markers must be shorter than this."""


class Hold:
    """One command that names a marker, or its reply, held back by the proxy."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.arrived = asyncio.Event()
        """Set once the command or its reply has reached the proxy, which
        keeps it back."""
        self._released = asyncio.Event()

    def release(self) -> None:
        """Send the held command on to Redis, or the held reply to the service."""
        self._released.set()

    async def wait_released(self) -> None:
        await self._released.wait()


class RedisProxy:
    """Forwards every connection it accepts on 127.0.0.1 to the Redis server
    on ``upstream_port`` of 127.0.0.1."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._server: asyncio.Server | None = None
        self._armed_reply: Hold | None = None
        self._armed_command: Hold | None = None
        self._holds: list[Hold] = []
        self._sent = bytearray()
        """Every byte passed on to Redis, for ``wait_for_sent``."""
        self._sent_grew = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        """The redis:// URL of the proxy."""
        assert self._server is not None, "the proxy is not started"
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        """Release every hold, stop listening and close every connection."""
        for hold in self._holds:
            hold.release()
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    def hold_reply(self, marker: str) -> Hold:
        """Hold back the reply to the next command whose bytes contain ``marker``."""
        hold = self._new_hold(marker)
        self._armed_reply = hold
        return hold

    def hold_command(self, marker: str) -> Hold:
        """Hold back the next command whose bytes contain ``marker``."""
        hold = self._new_hold(marker)
        self._armed_command = hold
        return hold

    def _new_hold(self, marker: str) -> Hold:
        encoded = marker.encode()
        assert len(encoded) < MARKER_OVERLAP_BYTES
        hold = Hold(encoded)
        self._holds.append(hold)
        return hold

    async def wait_for_sent(self, marker: str) -> None:
        """Wait until the proxy has passed ``marker`` on to Redis."""
        encoded = marker.encode()
        while encoded not in self._sent:
            self._sent_grew.clear()
            await self._sent_grew.wait()

    async def _accept(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self._upstream_port
        )
        self._writers += [client_writer, upstream_writer]
        # The holds that the next replies on this connection wait for. A Redis
        # client sends its next command only after reading the last reply, so
        # the next reply belongs to the command that armed the hold.
        pending: list[Hold] = []
        to_server = self._spawn(
            self._forward_commands(client_reader, upstream_writer, pending)
        )
        to_client = self._spawn(
            self._forward_replies(upstream_reader, client_writer, pending)
        )
        await asyncio.wait({to_server, to_client}, return_when=asyncio.FIRST_COMPLETED)
        client_writer.close()
        upstream_writer.close()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(_until_disconnected(coroutine))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _forward_commands(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pending: list[Hold],
    ) -> None:
        overlap = b""
        while data := await reader.read(READ_BYTES):
            window = overlap + data
            overlap_before = overlap
            overlap = window[-MARKER_OVERLAP_BYTES:]
            command = self._armed_command
            if command is not None and _ends_in_new_bytes(
                window, command.marker, overlap_before
            ):
                self._armed_command = None
                command.arrived.set()
                await command.wait_released()
            reply = self._armed_reply
            if reply is not None and _ends_in_new_bytes(
                window, reply.marker, overlap_before
            ):
                self._armed_reply = None
                # Set before the command goes out, so its reply cannot pass.
                pending.append(reply)
            writer.write(data)
            self._sent += data
            self._sent_grew.set()
            await writer.drain()

    async def _forward_replies(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pending: list[Hold],
    ) -> None:
        while data := await reader.read(READ_BYTES):
            if pending:
                hold = pending.pop(0)
                hold.arrived.set()
                await hold.wait_released()
            writer.write(data)
            await writer.drain()


async def _until_disconnected(forward: Coroutine[Any, Any, None]) -> None:
    # Either side may close its socket at any time, which ends the forwarding.
    with contextlib.suppress(ConnectionError):
        await forward


def _ends_in_new_bytes(window: bytes, marker: bytes, overlap: bytes) -> bool:
    # A match that lies wholly in the overlap was in the previous read, which
    # may have gone out before the hold was armed.
    start = max(0, len(overlap) - len(marker) + 1)
    return window.find(marker, start) != -1


@contextlib.asynccontextmanager
async def redis_proxy(upstream_port: int) -> AsyncIterator[RedisProxy]:
    """Run a ``RedisProxy`` for the duration of a ``with`` block."""
    proxy = RedisProxy(upstream_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
