"""The delivery worker: sends each queued package to its municipality's webhook.

An attempt is a Standard Webhooks POST (``webhook-id`` is the delivery id on
every attempt, so the receiver can drop repeats). A 2xx response delivers the
package: the case becomes a tombstone and the package is deleted. Any other
response, a network error or a timeout schedules a retry after a jittered delay
from the retry schedule; ``410 Gone`` and an exhausted schedule fail the
delivery for good, which lists it as a dead letter, tells the bot (the client
is told) and logs an ERROR line for support. ``410 Gone`` also disables the
municipality's endpoint: later deliveries to it fail at once, without a
request, until an operator enables it again (``python -m pairing_service.admin
enable-endpoint``) or the flag expires.

The worker keeps no delivery state in memory: the schedule and the leases are
in Redis (see ``pairing_service.deliveries``), so a restart loses nothing and
any number of workers can run. Attempts that reach the same step at the same
time share its Redis round trips (see ``pairing_service.batching``): the
leases, the reads of cases and packages, and the bookkeeping after a 2xx. On
one Redis server each of these steps is one Lua script per delivery or per
batch (see ``pairing_service.delivery_scripts``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from journey import keys
from journey.events import EventType
from journey.model import Case
from journey.municipalities import Municipality
from journey.steps import Event, Step, TransitionRejected
from pairing_service import metrics
from pairing_service.batching import Coalescer
from pairing_service.deliveries import (
    ABANDONED,
    DELIVERED,
    FAILED,
    DeliveryQueue,
    DeliveryRecord,
)
from pairing_service.delivery_scripts import (
    NOT_APPLIED,
    AttemptInputs,
    FinishedDelivery,
    OneServerSteps,
)
from pairing_service.packages import StoredPackage
from pairing_service.retry import Jitter, full_jitter, parse_retry_after, retry_delay
from pairing_service.services import Services
from pairing_service.webhook import build_payload, signed_headers

logger = logging.getLogger(__name__)

LEASE_SECONDS = 60.0
"""Minimum time one attempt may own a delivery. With the default request
timeout the lease is ``LEASE_PER_TIMEOUT`` timeouts, 75 seconds, so a dead
worker's delivery is retried within about a minute and a quarter."""

IDLE_WAIT_SECONDS = 1.0
"""Maximum pause between two reads of the schedule, so retries scheduled by
other workers and a test's injected clock take effect within this time."""

MIN_WAIT_SECONDS = 0.01
"""Minimum pause, so a schedule entry that cannot be taken never spins the loop."""

INTAKE_BLOCK_MS = 2000
"""How long one read of the intake stream waits for a new delivery."""

REDIS_BACKOFF_SECONDS = 2.0
"""Pause after Redis could not be reached before the worker tries again."""

LEASED_AHEAD_PER_REQUEST = 3
"""Attempts leased and read ahead, per request slot, while the requests before
them are in flight. Their Redis round trips then overlap those requests, and
each waits for a free slot to send. A worker therefore holds up to
``concurrency * (1 + LEASED_AHEAD_PER_REQUEST)`` packages in memory, 32 with
the default concurrency: about 180 MB if each had the maximum size."""

LEASE_PER_TIMEOUT = LEASED_AHEAD_PER_REQUEST + 2
"""Request timeouts per lease. An attempt leased ahead waits for at most
``LEASED_AHEAD_PER_REQUEST`` requests per slot before it sends its own, so a
lease of that many timeouts plus one stays with a live worker. One timeout
more leaves room for a slow Redis."""

AHEAD_HORIZON_SECONDS = 0.25
"""How far ahead, in time of requests, the worker leases. With requests that
take 4 ms the full ``LEASED_AHEAD_PER_REQUEST`` applies. With requests of a
quarter of a second or more per slot it leases none ahead, so a slow receiver
does not let one worker hold deliveries that another, idle worker could send."""

REQUEST_TIME_WEIGHT = 0.2
"""Weight of the latest request in the moving average of request durations."""

LEASE_BATCH_PER_REQUEST = 1.5
"""Free places, per request slot, that the worker waits for before it leases
again while attempts leased ahead still wait for a slot. Leasing in batches
spreads the cost of one lease script over several deliveries, and the
attempts leased ahead keep every slot busy meanwhile."""

FINISH_BATCH_PER_REQUEST = 0.75
"""Accepted deliveries, per request slot, whose bookkeeping waits to share one
pipeline, for at most ``FINISH_WAIT_SECONDS``. On the benchmark machine a
round trip cost the worker about 100 µs of CPU in redis-py 6.4, more than one
more finishing script in the same pipeline."""

FINISH_WAIT_SECONDS = 0.005
"""The maximum time that an accepted delivery's bookkeeping waits for others.
It delays the client's confirmation by at most this much."""

BOOKKEEPING_PER_REQUEST = 1
"""Attempts whose request has ended and that wait for their bookkeeping in
Redis, per request slot. Beyond this a slow Redis stops new leases instead of
piling up finished attempts."""

STOP_GRACE_SECONDS = 5.0
"""Time that ``stop`` gives, in all, to scheduling the intake entries this
worker read, to giving back unsent deliveries and to the requests in flight
with their bookkeeping. An attempt cut off after it keeps its lease and is
retried by another worker once the lease ends."""

BOOKKEEPING_RETRY_FIRST_SECONDS = 0.2
"""First pause before the bookkeeping of an accepted delivery is tried again
after Redis could not be reached. The pause doubles up to
``REDIS_BACKOFF_SECONDS`` while the lease lasts."""

USER_AGENT = "gezondverzekerd-delivery/1"

GONE_STATUS = 410
"""Standard Webhooks: a receiver answers ``410 Gone`` to ask the sender to stop
sending to this endpoint."""


@dataclass(frozen=True, slots=True)
class FailedDelivery:
    """A delivery that failed for good, as reported to support: ids and counts only."""

    delivery_id: str
    case_ref: str
    municipality_code: str
    attempts: int
    reason: str


SupportNotifier = Callable[[FailedDelivery], Awaitable[None]]
"""Called once per delivery that failed for good, after the dead letter is listed."""


@dataclass(frozen=True, slots=True)
class _Delivered:
    """A delivery whose receiver returned a 2xx status, waiting for its bookkeeping."""

    record: DeliveryRecord
    case: Case
    finished_here: bool
    """False when an earlier attempt wrote the tombstone and died before the close."""


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """The outcome of one POST to a webhook."""

    status: int | None
    """The HTTP status, or None when no response arrived."""
    retry_after: float | None
    error: str
    """A short code for logs and the record: ``http_500``, ``timeout``, ..."""

    @property
    def succeeded(self) -> bool:
        """Whether the receiver accepted the delivery (any 2xx)."""
        return self.status is not None and 200 <= self.status < 300


class DeliveryWorker:
    """Sends queued deliveries, retries failures and records the outcome.

    Args:
        services: the service's shared objects. Its clock also sets the
            ``webhook-timestamp``, which receivers accept only within five
            minutes of their own time.
        schedule: maximum delay in seconds before each retry.
        timeout_seconds: total time of one webhook request.
        concurrency: webhook requests kept in flight at once. As many
            attempts more are leased and read ahead, and an attempt frees
            its slot when its request ends, before its bookkeeping.
        jitter: draws the delay below a schedule entry (full jitter by default).
        lease_seconds: how long one attempt may hold a delivery. By default
            ``LEASE_PER_TIMEOUT`` request timeouts, and at least
            ``LEASE_SECONDS``.
        notify_support: called for every delivery that failed for good, in
            addition to the ERROR log line and the dead-letter list.
    """

    def __init__(
        self,
        services: Services,
        *,
        schedule: tuple[float, ...],
        timeout_seconds: float,
        concurrency: int = 8,
        jitter: Jitter = full_jitter,
        lease_seconds: float | None = None,
        notify_support: SupportNotifier | None = None,
    ) -> None:
        self._services = services
        self._queue = DeliveryQueue(services.redis, clock=services.clock)
        self._schedule = schedule
        self._timeout = timeout_seconds
        self._concurrency = concurrency
        self._jitter = jitter
        if lease_seconds is None:
            lease_seconds = max(LEASE_SECONDS, LEASE_PER_TIMEOUT * timeout_seconds)
        self._lease_seconds = lease_seconds
        # NOTE: no support group exists yet, so by default support learns of a
        # failure only from the ERROR log line and the dead-letter list.
        self._notify_support = notify_support
        self._requests_sent = 0
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._wake = asyncio.Event()
        self._active: dict[str, asyncio.Task[None]] = {}
        """Every attempt of this worker, by delivery id, until it ends."""
        self._unsent: set[str] = set()
        """The attempts from their lease until their request ends."""
        self._records: dict[str, DeliveryRecord] = {}
        """The leased record of every attempt in ``_active``."""
        self._lease_ends: dict[str, float] = {}
        """When the lease of every attempt in ``_active`` ends, by the clock."""
        self._waiting_for_slot: set[str] = set()
        """The attempts whose request waits for a free slot."""
        self._request_seconds: float | None = None
        """Moving average of the duration of this worker's requests."""
        self._stop_deadline = 0.0
        """When ``stop`` must be done, in event loop time."""
        self._max_unsent = concurrency * (1 + LEASED_AHEAD_PER_REQUEST)
        self._max_active = self._max_unsent + concurrency * BOOKKEEPING_PER_REQUEST
        self._lease_batch = max(1, int(concurrency * LEASE_BATCH_PER_REQUEST))
        self._request_slots = asyncio.Semaphore(concurrency)
        self._loops: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None
        self._group_ready = False
        self._stopping = False
        # On one server each step is one script. Redis Cluster keeps the
        # pipelines of one-key commands below.
        self._one_server = (
            OneServerSteps(services.store, event_stream=services.events.stream_key)
            if services.single_server
            else None
        )
        # Attempts that reach the same phase together share its round trips.
        batch = max(1, concurrency)
        self._inputs: Coalescer[DeliveryRecord, AttemptInputs] = Coalescer(
            self._read_inputs, max_batch=batch, name="delivery-inputs"
        )
        self._delivered: Coalescer[_Delivered, None] = Coalescer(
            self._close_delivered,
            max_batch=batch,
            name="delivery-delivered",
            min_batch=min(batch, max(1, int(concurrency * FINISH_BATCH_PER_REQUEST))),
            max_wait_seconds=FINISH_WAIT_SECONDS,
        )
        self._in_flight = 0
        """Webhook requests of this worker that have not ended."""

    @property
    def consumer(self) -> str:
        """This worker's name in the consumer group and in leases."""
        return self._consumer

    @property
    def lease_seconds(self) -> float:
        """How long one attempt of this worker owns its delivery."""
        return self._lease_seconds

    @property
    def requests_sent(self) -> int:
        """Webhook requests this worker has sent since it was created."""
        return self._requests_sent

    async def start(self) -> None:
        """Start reading the intake stream and sending due deliveries."""
        self._stopping = False
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            headers={"User-Agent": USER_AGENT},
        )
        self._loops = [
            asyncio.create_task(self._intake_loop(), name="delivery-intake"),
            asyncio.create_task(self._dispatch_loop(), name="delivery-dispatch"),
        ]
        logger.info("delivery worker started consumer=%s", self._consumer)

    async def stop(self) -> None:
        """Stop the loops, let attempts in flight finish briefly, close HTTP."""
        # With socket_timeout set, redis-py 6.4 wraps each send in
        # asyncio.wait_for, which on Python 3.11 can swallow a cancellation:
        # the delivery benchmark hung in stop() that way. The loops therefore
        # also end at their next turn once this flag is set.
        self._stopping = True
        self._wake.set()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []

        # Every step below shares one grace period, so the worker stops
        # within STOP_GRACE_SECONDS even when Redis hangs.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_GRACE_SECONDS
        self._stop_deadline = deadline

        def remaining() -> float:
            return max(0.0, deadline - loop.time())

        await self._schedule_own_intake(remaining())
        await self._give_back_waiting(remaining())
        attempts = list(self._active.values())
        if attempts:
            _done, pending = await asyncio.wait(attempts, timeout=remaining())
            self._log_cut_off(pending)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # A batch that an attempt left when it was cancelled still runs.
        for coalescer in (self._inputs, self._delivered):
            coalescer.hurry()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(remaining()):
                    await coalescer.drain()

        if self._http is not None:
            await self._http.close()
            self._http = None
        logger.info("delivery worker stopped consumer=%s", self._consumer)

    async def _intake_loop(self) -> None:
        while not self._stopping:
            try:
                if not self._group_ready:
                    await self._queue.ensure_group()
                    self._group_ready = True
                entries = await self._queue.read_new(
                    self._consumer, block_ms=INTAKE_BLOCK_MS
                )
                if self._one_server is not None:
                    await self._one_server.schedule_new(entries)
                else:
                    await self._queue.schedule_entries(entries)
                if entries:
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except (RedisConnectionError, RedisTimeoutError) as error:
                logger.warning(
                    "delivery intake cannot reach redis error=%s", type(error).__name__
                )
                await asyncio.sleep(REDIS_BACKOFF_SECONDS)
            except ResponseError as error:
                # The stream expired after a quiet week and took its group along.
                if "NOGROUP" not in str(error):
                    logger.exception("delivery intake failed")
                    await asyncio.sleep(REDIS_BACKOFF_SECONDS)
                self._group_ready = False
            except Exception:
                logger.exception("delivery intake failed")
                await asyncio.sleep(REDIS_BACKOFF_SECONDS)

    async def _dispatch_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                wait = await self._dispatch_due()
            except asyncio.CancelledError:
                raise
            except (RedisConnectionError, RedisTimeoutError) as error:
                logger.warning(
                    "delivery dispatch cannot reach redis error=%s",
                    type(error).__name__,
                )
                wait = REDIS_BACKOFF_SECONDS
            except Exception:
                logger.exception("delivery dispatch failed")
                wait = REDIS_BACKOFF_SECONDS
            # asyncio.timeout, unlike wait_for on Python 3.11, never swallows
            # the cancellation that stops the worker.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _dispatch_due(self) -> float:
        # Start an attempt for every due delivery this worker can lease, then
        # return how long to wait until the next one is due.
        free = self._free_slots()
        if free <= 0:
            return IDLE_WAIT_SECONDS
        lease_batch = min(self._lease_batch, self._leased_ahead_limit())
        if free < lease_batch and len(self._unsent) > self._concurrency:
            # An attempt leased ahead still waits for a request slot, so no
            # slot idles while this loop waits for a larger batch. The end of
            # each request wakes it.
            return IDLE_WAIT_SECONDS
        leased: list[tuple[DeliveryRecord, AttemptInputs | None]]
        lease_ends = self._services.clock() + self._lease_seconds
        if self._one_server is not None:
            batch = await self._one_server.take_due(
                self._consumer,
                limit=free,
                now=self._services.clock(),
                lease_seconds=self._lease_seconds,
                running=list(self._active),
            )
            due_count, next_at = batch.due, batch.next_at
            leased = list(batch.leased)
        else:
            due, next_at = await self._queue.due_and_next(limit=free)
            candidates = [
                delivery_id for delivery_id in due if delivery_id not in self._active
            ]
            records = await self._queue.lease_many(
                candidates, self._consumer, seconds=self._lease_seconds
            )
            due_count = len(due)
            leased = [(record, None) for record in records]
        for record, inputs in leased:
            task = asyncio.create_task(self._run_attempt(record, inputs))
            self._active[record.delivery_id] = task
            self._records[record.delivery_id] = record
            self._lease_ends[record.delivery_id] = lease_ends
            self._unsent.add(record.delivery_id)

        if self._free_slots() <= 0:
            return IDLE_WAIT_SECONDS
        if len(leased) < due_count:
            # A due delivery was not leased and moved in the schedule, so the
            # time read before the leases may be stale. Look again soon.
            return MIN_WAIT_SECONDS
        if next_at is None:
            return IDLE_WAIT_SECONDS
        until_due = next_at - self._services.clock()
        return min(IDLE_WAIT_SECONDS, max(MIN_WAIT_SECONDS, until_due))

    def _free_slots(self) -> int:
        max_unsent = self._concurrency + self._leased_ahead_limit()
        return min(
            max_unsent - len(self._unsent),
            self._max_active - len(self._active),
        )

    def _leased_ahead_limit(self) -> int:
        # The attempts that may wait for a slot: as many as the slots send in
        # AHEAD_HORIZON_SECONDS at the recent request duration.
        maximum = self._max_unsent - self._concurrency
        if not self._request_seconds:
            # No request has ended yet, so a newly started worker leases only
            # for its free slots and leaves the rest to running workers.
            return 0
        fitting = int(AHEAD_HORIZON_SECONDS * self._concurrency / self._request_seconds)
        return min(maximum, fitting)

    def _request_ended(self, delivery_id: str) -> None:
        if delivery_id in self._unsent:
            self._unsent.discard(delivery_id)
            self._wake.set()

    async def _run_attempt(
        self, record: DeliveryRecord, inputs: AttemptInputs | None
    ) -> None:
        try:
            await self._attempt(record, inputs)
        except asyncio.CancelledError:
            raise
        except (RedisConnectionError, RedisTimeoutError) as error:
            # The lease runs out and another attempt follows.
            logger.warning(
                "delivery attempt aborted, redis unreachable case=%s attempt=%s "
                "error=%s",
                record.case_ref,
                record.attempts,
                type(error).__name__,
            )
        except Exception:
            # The lease runs out and another attempt follows; nothing is lost.
            logger.exception(
                "delivery attempt aborted case=%s attempt=%s",
                record.case_ref,
                record.attempts,
            )
        finally:
            self._active.pop(record.delivery_id, None)
            self._records.pop(record.delivery_id, None)
            self._lease_ends.pop(record.delivery_id, None)
            self._unsent.discard(record.delivery_id)
            self._wake.set()

    async def _attempt(
        self, record: DeliveryRecord, inputs: AttemptInputs | None
    ) -> None:
        services = self._services
        if inputs is None:
            inputs = await self._inputs.submit(record)
        case, disabled, package = inputs.case, inputs.disabled, inputs.package
        if case is None or case.delivery_id != record.delivery_id:
            await self._abandon(record, "case_gone")
            return

        # A worker that died after finishing the case but before closing the
        # record left this; complete the bookkeeping without sending again.
        if case.step is Step.DELIVERED:
            self._delivered.hurry()
            await self._delivered.submit(_Delivered(record, case, finished_here=False))
            return
        if case.step is Step.DELIVERY_FAILED:
            await self._close_failed(record, case, record.last_error or "unknown")
            return
        if case.step is not Step.DELIVERING:
            await self._abandon(record, f"case_{case.step.value}")
            return

        municipality = services.registry.get(case.municipality_code)
        if municipality is None or not municipality.participates:
            await self._fail(record, case, "municipality_unavailable")
            return
        if municipality.code != record.municipality_code:
            disabled = await self._queue.endpoint_disabled(municipality.code)
        if disabled is not None:
            await self._fail(record, case, "endpoint_disabled")
            return
        if package is None:
            await self._fail(record, case, "package_missing")
            return

        body = build_payload(case, package, created_at=record.created_at)
        if self._stopping:
            await self._give_back_while_stopping([record])
            return
        self._waiting_for_slot.add(record.delivery_id)
        try:
            await self._request_slots.acquire()
        finally:
            self._waiting_for_slot.discard(record.delivery_id)
        try:
            if self._stopping:
                # stop() gives back the attempts that wait for a slot; this
                # one got its slot just as the worker began to stop.
                await self._give_back_while_stopping([record])
                return
            self._in_flight += 1
            try:
                result = await self._post(municipality, record, body)
            finally:
                self._in_flight -= 1
        finally:
            self._request_slots.release()
        self._request_ended(record.delivery_id)
        if self._in_flight == 0:
            # No request in flight can join the next bookkeeping batch.
            self._delivered.hurry()
        if result.succeeded:
            await self._finish_accepted(_Delivered(record, case, finished_here=True))
            return
        if result.status == GONE_STATUS:
            await self._queue.disable_endpoint(
                municipality.code,
                reason="endpoint_gone",
                delivery_id=record.delivery_id,
            )
            logger.error(
                "webhook endpoint disabled after 410 municipality=%s case=%s",
                municipality.code,
                record.case_ref,
            )
            await self._fail(record, case, "endpoint_gone")
            return

        delay = retry_delay(
            record.attempts,
            self._schedule,
            retry_after=result.retry_after,
            jitter=self._jitter,
        )
        if delay is None:
            await self._fail(record, case, result.error)
            return
        next_at = services.clock() + delay
        if await self._queue.release(
            record, self._consumer, next_at=next_at, last_error=result.error
        ):
            await self._queue.schedule(record.delivery_id, next_at)
        metrics.record_retry()
        logger.warning(
            "delivery attempt failed case=%s attempt=%s error=%s retry_in=%.1f",
            record.case_ref,
            record.attempts,
            result.error,
            delay,
        )

    async def _read_inputs(self, records: list[DeliveryRecord]) -> list[AttemptInputs]:
        # One pipeline for a batch of attempts: the case and the package of
        # each, and the endpoint flag of each municipality once. Each command
        # reads one key. The package is read even when the case turns out
        # not to need it, which only happens on the rare paths that send
        # nothing.
        codes = sorted({record.municipality_code for record in records})
        async with self._services.redis.pipeline(transaction=False) as pipe:
            for record in records:
                pipe.hgetall(keys.case(record.case_id))
                pipe.hgetall(keys.package(record.case_id))
            for code in codes:
                pipe.hgetall(keys.endpoint_disabled(code))
            replies = await pipe.execute()

        flags = dict(zip(codes, replies[2 * len(records) :], strict=True))
        inputs: list[AttemptInputs] = []
        for index, record in enumerate(records):
            raw_case, raw_package = replies[2 * index], replies[2 * index + 1]
            inputs.append(
                AttemptInputs(
                    case=Case.from_hash(record.case_id, raw_case) if raw_case else None,
                    disabled=flags[record.municipality_code] or None,
                    package=StoredPackage.from_hash(raw_package)
                    if raw_package
                    else None,
                )
            )
        return inputs

    async def _post(
        self, municipality: Municipality, record: DeliveryRecord, body: bytes
    ) -> AttemptResult:
        assert self._http is not None, "the worker is not started"
        headers = signed_headers(
            municipality.signing_secrets,
            record.delivery_id,
            body,
            now=self._services.clock(),
        )
        self._requests_sent += 1
        started = time.perf_counter()
        try:
            async with self._http.post(
                municipality.webhook_url,
                data=body,
                headers=headers,
                allow_redirects=False,
            ) as response:
                status = response.status
                retry_after = parse_retry_after(
                    response.headers.get("Retry-After"), now=self._services.clock()
                )
        except TimeoutError:
            return AttemptResult(None, None, "timeout")
        except aiohttp.ClientError as error:
            return AttemptResult(None, None, type(error).__name__)
        finally:
            duration = time.perf_counter() - started
            metrics.DELIVERY_ATTEMPT_DURATION.observe(duration)
            self._record_request_time(duration)
        return AttemptResult(status, retry_after, f"http_{status}")

    def _record_request_time(self, seconds: float) -> None:
        average = self._request_seconds
        if average is None:
            self._request_seconds = seconds
        else:
            weight = REQUEST_TIME_WEIGHT
            self._request_seconds = (1 - weight) * average + weight * seconds

    async def _finish_accepted(self, item: _Delivered) -> None:
        # The bookkeeping of an accepted delivery. While Redis cannot be
        # reached it is tried again for as long as the lease lasts, so the
        # delivery is not sent a second time after the lease ends. A retry
        # after a lost reply finds the tombstone written and publishes no
        # second event.
        record = item.record
        lease_ends = self._lease_ends.get(record.delivery_id, 0.0)
        pause = BOOKKEEPING_RETRY_FIRST_SECONDS
        while True:
            try:
                await self._delivered.submit(item)
                return
            except (RedisConnectionError, RedisTimeoutError) as error:
                # A stopping worker goes on trying within its grace period.
                if self._services.clock() + pause >= lease_ends:
                    raise
                logger.warning(
                    "delivery bookkeeping cannot reach redis case=%s attempt=%s "
                    "error=%s retry_in=%.1f",
                    record.case_ref,
                    record.attempts,
                    type(error).__name__,
                    pause,
                )
                await asyncio.sleep(pause)
                pause = min(2 * pause, REDIS_BACKOFF_SECONDS)

    async def _schedule_own_intake(self, grace_seconds: float) -> None:
        # The intake loop may have stopped between reading entries and
        # scheduling them. Schedule them now, so no other worker has to wait
        # to take them over.
        async def schedule() -> None:
            entries = await self._queue.read_own_pending(self._consumer)
            if self._one_server is not None:
                await self._one_server.schedule_new(entries)
            else:
                await self._queue.schedule_entries(entries)

        try:
            await self._retry_while_stopping(
                schedule, grace_seconds, "schedule its intake entries"
            )
        except ResponseError as error:
            # The intake stream or its group is gone, so no entry is left.
            if "NOGROUP" not in str(error):
                raise

    async def _retry_while_stopping(
        self, step: Callable[[], Awaitable[None]], grace_seconds: float, what: str
    ) -> None:
        # Run a step of stop(), and again after a pause while Redis cannot be
        # reached, until grace_seconds have passed. Then log what was left.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        pause = BOOKKEEPING_RETRY_FIRST_SECONDS
        while True:
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await step()
                return
            except (TimeoutError, RedisConnectionError, RedisTimeoutError) as error:
                if loop.time() + pause >= deadline:
                    logger.warning(
                        "delivery worker could not %s error=%s",
                        what,
                        type(error).__name__,
                    )
                    return
            await asyncio.sleep(pause)
            pause = min(2 * pause, REDIS_BACKOFF_SECONDS)

    def _log_cut_off(self, pending: set[asyncio.Task[None]]) -> None:
        # One WARNING for the attempts that the grace period cuts off. Their
        # leases run out and other workers send them again, so their clients
        # get the confirmation a lease later.
        if not pending:
            return
        cut_off = [
            self._records[delivery_id].case_ref
            for delivery_id, task in self._active.items()
            if task in pending and delivery_id in self._records
        ]
        logger.warning(
            "delivery worker stopped before %s attempts ended cases=%s",
            len(cut_off),
            ",".join(cut_off),
        )

    async def _give_back_waiting(self, grace_seconds: float) -> None:
        # Cancel the attempts that wait for a request slot and give their
        # deliveries back, so another worker sends them without waiting for
        # the lease to end.
        waiting = [
            delivery_id
            for delivery_id in self._waiting_for_slot
            if delivery_id in self._active
        ]
        if not waiting:
            return
        records = [self._records[delivery_id] for delivery_id in waiting]
        tasks = [self._active[delivery_id] for delivery_id in waiting]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._give_back_while_stopping(records, grace_seconds)

    async def _give_back_while_stopping(
        self, records: list[DeliveryRecord], grace_seconds: float | None = None
    ) -> None:
        # Deliveries not given back wait for their leases to run out, and
        # other workers send them then.
        if grace_seconds is None:
            loop = asyncio.get_running_loop()
            grace_seconds = max(0.0, self._stop_deadline - loop.time())
        await self._retry_while_stopping(
            lambda: self._give_back(records),
            grace_seconds,
            f"give back {len(records)} deliveries",
        )

    async def _give_back(self, records: list[DeliveryRecord]) -> None:
        # End the leases of attempts that sent nothing, without counting the
        # attempt, and schedule each delivery now.
        now = self._services.clock()

        async def give_back(record: DeliveryRecord) -> None:
            released = await self._queue.release(
                record, self._consumer, next_at=now, attempts=record.attempts - 1
            )
            if released:
                await self._queue.schedule(record.delivery_id, now)

        await asyncio.gather(*(give_back(record) for record in records))
        logger.info(
            "delivery worker gave back %s unsent deliveries consumer=%s",
            len(records),
            self._consumer,
        )

    async def _close_delivered(self, batch: list[_Delivered]) -> list[Exception | None]:
        if self._one_server is None:
            return await self._close_delivered_in_phases(batch)

        # One script per delivery, all in one round trip. A delivery whose
        # case changed since it was read, or is gone, takes the phases below.
        services = self._services
        delivered_at = services.clock()
        finished = await self._one_server.finish_delivered(
            [(item.record, item.case, item.finished_here) for item in batch],
            self._consumer,
            delivered_at=delivered_at,
        )
        outcomes: list[Exception | None] = [None] * len(batch)
        again: list[int] = []
        for index, outcome in enumerate(finished):
            record = batch[index].record
            if outcome is NOT_APPLIED:
                again.append(index)
            elif isinstance(outcome, FinishedDelivery):
                if outcome.closed_case:
                    metrics.record_delivered(record.created_at, delivered_at)
                # One line for the delivery and the case, which it closed
                # here or an earlier attempt closed.
                logger.info(
                    "delivery succeeded case=%s attempt=%s case_closed=%s",
                    record.case_ref,
                    record.attempts,
                    "here" if outcome.closed_case else "earlier",
                )
            else:
                outcomes[index] = outcome
        if again:
            retried = await self._close_delivered_in_phases(
                [batch[index] for index in again]
            )
            for index, outcome in zip(again, retried, strict=True):
                outcomes[index] = outcome
        return outcomes

    async def _close_delivered_in_phases(
        self, batch: list[_Delivered]
    ) -> list[Exception | None]:
        # The bookkeeping of a batch of 2xx responses, in three round trips:
        # the tombstones, then the index deletions with the events, then the
        # records' close. Each phase starts after the one before returned,
        # because on Redis Cluster a pipeline without a transaction runs its
        # commands on each node at the same time. A worker that dies before
        # the close leaves the record pending, and the next attempt publishes
        # the event (a second time if this one was sent). An error in the
        # second or third round trip leaves every record of the batch
        # pending in the same way.
        services = self._services
        outcomes: list[Exception | None] = [None] * len(batch)
        async with services.redis.pipeline(transaction=False) as pipe:
            sent_here = [
                index for index, item in enumerate(batch) if item.finished_here
            ]
            tombstones = await services.store.finish_cases(
                [batch[index].case for index in sent_here],
                Event.DELIVERED,
                expected_step=Step.DELIVERING,
                cleanup=pipe,
            )
            announce = [
                index for index, item in enumerate(batch) if not item.finished_here
            ]
            for index, tombstone in zip(sent_here, tombstones, strict=True):
                if isinstance(tombstone, TransitionRejected):
                    # Another worker, whose lease had run out, finished the
                    # case first and published the event, or a resent
                    # pipeline of this worker did.
                    logger.info(
                        "delivery already finished case=%s",
                        batch[index].record.case_ref,
                    )
                elif isinstance(tombstone, Exception):
                    outcomes[index] = tombstone
                else:
                    metrics.record_delivered(
                        batch[index].record.created_at, services.clock()
                    )
                    announce.append(index)

            for index in announce:
                case = batch[index].case
                # The tombstone keeps no chat id, so the final event carries
                # the chat and language the bot needs to confirm the delivery.
                services.events.queue_publish(
                    pipe,
                    EventType.DELIVERED,
                    case.case_id,
                    step=Step.DELIVERED.value,
                    chat_id=case.chat_id,
                    language=case.language,
                )
            await pipe.execute()

        closing = [index for index, outcome in enumerate(outcomes) if outcome is None]
        delivered_at = services.clock()
        await self._queue.close_many(
            [
                (
                    batch[index].record,
                    {"status": DELIVERED, "delivered_at": delivered_at},
                )
                for index in closing
            ],
            self._consumer,
        )
        for index in closing:
            record = batch[index].record
            logger.info(
                "delivery succeeded case=%s attempt=%s",
                record.case_ref,
                record.attempts,
            )
        return outcomes

    async def _fail(self, record: DeliveryRecord, case: Case, reason: str) -> None:
        try:
            await self._services.store.apply(
                case.case_id, Event.DELIVERY_FAILED, expected_step=Step.DELIVERING
            )
        except TransitionRejected:
            logger.info(
                "delivery already closed case=%s step=%s", record.case_ref, case.step
            )
            await self._queue.close(record, self._consumer, status=FAILED)
            return
        await self._close_failed(record, case, reason)

    async def _close_failed(
        self, record: DeliveryRecord, case: Case, reason: str
    ) -> None:
        await self._queue.dead_letter(record, reason)
        metrics.record_failed()
        await self._services.events.publish(
            EventType.DELIVERY_FAILED,
            case.case_id,
            step=Step.DELIVERY_FAILED.value,
            reason=reason,
            attempts=record.attempts,
        )
        await self._queue.close(
            record, self._consumer, status=FAILED, last_error=reason
        )
        # The ERROR line is support's signal until a support group exists.
        logger.error(
            "delivery failed for good case=%s municipality=%s attempts=%s "
            "reason=%s delivery=%s",
            record.case_ref,
            record.municipality_code,
            record.attempts,
            reason,
            record.delivery_id,
        )
        if self._notify_support is not None:
            failed = FailedDelivery(
                delivery_id=record.delivery_id,
                case_ref=record.case_ref,
                municipality_code=record.municipality_code,
                attempts=record.attempts,
                reason=reason,
            )
            try:
                await self._notify_support(failed)
            except Exception:
                logger.exception("support notification failed case=%s", record.case_ref)

    async def _abandon(self, record: DeliveryRecord, reason: str) -> None:
        await self._queue.close(
            record, self._consumer, status=ABANDONED, last_error=reason
        )
        logger.warning("delivery abandoned case=%s reason=%s", record.case_ref, reason)
