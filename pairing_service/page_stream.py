"""Live status of the QR page, pushed with Server-Sent Events.

``GET /koppel/{page_id}/events`` keeps a ``text/event-stream`` response open
and sends the page's status whenever it changes. One ``PageNotifier`` per
process reads the tail of the event stream (``gv:events``, without a consumer
group, so it takes nothing from the bot) and wakes the streams of the case an
event is about. It reads only while a page's stream is open: a QR page is open
for minutes per case, while the service publishes events all day. Changes
that publish no event, such as a renewal or the code's expiry, are caught by a
check at the expiry time and every ``RECHECK_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator

from aiohttp import web
from redis.exceptions import RedisError

from journey import keys
from pairing_service.errors import ApiError
from pairing_service.qr_page import (
    FINAL_STATUSES,
    PageState,
    page_case_id,
    read_page_state,
    resolve_page,
)
from pairing_service.services import SERVICES, Services, services_of

logger = logging.getLogger(__name__)

READ_BLOCK_MS = 2000
"""One blocking read of the event stream; also how fast ``stop`` takes effect."""

READ_BATCH = 200
"""Events read at once; each is only a dictionary lookup here."""

ERROR_BACKOFF_SECONDS = 2.0
"""Pause after a failed read, so a Redis outage is not a busy loop."""

RECHECK_SECONDS = 10.0
"""Status check without an event: catches a renewal or a cancellation, which
publish no event, and an event deleted by the bot before this reader saw it."""

KEEPALIVE_SECONDS = 15.0
"""A comment line this often keeps proxies from closing an idle stream."""

MAX_STREAM_SECONDS = 15 * 60
"""A stream ends after this long and the browser reconnects, so a page left
open for hours does not pin a connection for hours."""

RECONNECT_MS = 3000
"""The ``retry`` field: how long a browser waits before it reconnects."""

MAX_OPEN_STREAMS = 2000
"""Open streams per process. Each costs a connection and a small task; above
this the page falls back to polling the status endpoint."""


class PageNotifier:
    """Wakes the open page streams of a case when an event for it arrives."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._subscribed = asyncio.Event()
        """Set while at least one stream waits, so the reader runs."""
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def open_streams(self) -> int:
        """Number of streams waiting for a change."""
        return sum(len(waiters) for waiters in self._waiters.values())

    @property
    def stopping(self) -> bool:
        """True once the application shuts down."""
        return self._stopping.is_set()

    def start(self) -> None:
        """Start reading the event stream in a background task."""
        self._task = asyncio.create_task(self._run(), name="gv-page-notifier")

    async def stop(self) -> None:
        """Stop reading and wake every stream, so each one ends."""
        self._stopping.set()
        self._wake_all()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @contextlib.contextmanager
    def subscribe(self, case_id: str) -> Iterator[asyncio.Event]:
        """Register a wake-up for ``case_id`` for the duration of a ``with``."""
        waiter = asyncio.Event()
        self._waiters.setdefault(case_id, set()).add(waiter)
        self._subscribed.set()
        try:
            yield waiter
        finally:
            waiters = self._waiters.get(case_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[case_id]
            if not self._waiters:
                self._subscribed.clear()

    async def _run(self) -> None:
        redis = self._services.redis
        # The last entry read, or None while no stream is open.
        last_id: str | None = None
        logger.info("page notifier started")
        while not self._stopping.is_set():
            if not self._waiters:
                last_id = None
                await self._subscribed.wait()
                continue
            try:
                if last_id is None:
                    last_id = await self._stream_end()
                    # A stream that opened before this point read its status
                    # before the reader knew where to start. It checks again,
                    # so an event in between is not missed.
                    self._wake_all()
                response = await redis.xread(
                    {keys.events(): last_id}, count=READ_BATCH, block=READ_BLOCK_MS
                )
            except RedisError as error:
                logger.warning(
                    "page notifier read failed error=%s", type(error).__name__
                )
                await asyncio.sleep(ERROR_BACKOFF_SECONDS)
                continue
            for _stream, entries in response or []:
                for entry_id, fields in entries:
                    last_id = entry_id
                    self._wake(fields.get("case_id", ""))
        logger.info("page notifier stopped")

    async def _stream_end(self) -> str:
        # The id of the newest entry of the event stream, or the id before
        # every entry when the stream does not exist yet.
        newest = await self._services.redis.xrevrange(keys.events(), count=1)
        return str(newest[0][0]) if newest else "0-0"

    def _wake(self, case_id: str) -> None:
        for waiter in self._waiters.get(case_id, ()):
            waiter.set()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.set()


NOTIFIER = web.AppKey("page_notifier", PageNotifier)
"""Application key of the running ``PageNotifier``."""


async def stream_status(request: web.Request) -> web.StreamResponse:
    """``GET /koppel/{page_id}/events``: the page's status as Server-Sent Events.

    Each message is ``event: status`` with ``{"status", "expires_in"}`` as
    data, sent at the start and on every change. The stream ends after a
    final status, after ``MAX_STREAM_SECONDS`` or at shutdown.
    """
    services = services_of(request)
    notifier = request.app[NOTIFIER]
    page_id = request.match_info["page_id"]
    case_id = await page_case_id(services, page_id)
    if case_id is None:
        raise ApiError(404, "page_not_found", "no QR page with this id exists")
    if notifier.open_streams >= MAX_OPEN_STREAMS:
        raise ApiError(
            503,
            "too_many_streams",
            "too many open status streams; poll the status endpoint instead",
            headers={"Retry-After": str(int(RECHECK_SECONDS))},
        )

    # The stream subscribes before its first read, so an event that the
    # reader sees during that read wakes it, and it reads the status again.
    with notifier.subscribe(case_id) as waiter:
        state = await read_page_state(services, page_id, case_id)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        try:
            await response.write(f"retry: {RECONNECT_MS}\n\n".encode())
            await _send(response, state)
            await _follow(services, notifier, waiter, response, page_id, state)
        except ConnectionResetError:
            # The browser closed the page; nothing is left to send.
            pass
        except RedisError as error:
            # The headers are sent, so no JSON error can follow. The browser
            # reconnects after RECONNECT_MS and gets a 503 if Redis is still down.
            logger.warning("page stream ended error=%s", type(error).__name__)
    return response


async def _follow(
    services: Services,
    notifier: PageNotifier,
    waiter: asyncio.Event,
    response: web.StreamResponse,
    page_id: str,
    state: PageState,
) -> None:
    loop = asyncio.get_running_loop()
    ends_at = loop.time() + MAX_STREAM_SECONDS
    last_write = loop.time()
    while state.status not in FINAL_STATUSES and not notifier.stopping:
        now = loop.time()
        if now >= ends_at:
            break
        wait = min(RECHECK_SECONDS, KEEPALIVE_SECONDS, ends_at - now)
        if state.status == "waiting":
            wait = min(wait, state.expires_in + 1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter.wait(), timeout=wait)
        waiter.clear()
        if notifier.stopping:
            break

        fresh = await resolve_page(services, page_id)
        new_state = fresh[1] if fresh is not None else PageState("closed")
        if new_state.status != state.status:
            await _send(response, new_state)
            last_write = loop.time()
        elif loop.time() - last_write >= KEEPALIVE_SECONDS:
            await response.write(b": keep-alive\n\n")
            last_write = loop.time()
        state = new_state


async def _send(response: web.StreamResponse, state: PageState) -> None:
    data = json.dumps({"status": state.status, "expires_in": state.expires_in})
    await response.write(f"event: status\ndata: {data}\n\n".encode())


async def run_notifier(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: run the notifier while the application runs."""
    notifier = PageNotifier(app[SERVICES])
    notifier.start()
    app[NOTIFIER] = notifier
    yield
    await notifier.stop()


async def stop_streams(app: web.Application) -> None:
    """``on_shutdown`` hook: end the open streams before the server waits for them."""
    if NOTIFIER in app:
        await app[NOTIFIER].stop()


def add_routes(app: web.Application) -> None:
    """Register the stream route and the shutdown hook on ``app``.

    The caller adds ``run_notifier`` to ``app.cleanup_ctx`` after the context
    that closes Redis, so the notifier stops first.
    """
    app.router.add_get("/koppel/{page_id}/events", stream_status)
    app.on_shutdown.append(stop_streams)
