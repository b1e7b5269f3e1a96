"""Benchmark: latency from an app event to the bot's message, many journeys at once.

Run: ``.venv/bin/python bench/bench_event_latency.py [--journeys 200]
[--rounds 3] [--paced-events 3] [--rate 25]``

The whole product runs in this process (``sandbox.stack.running_stack``): the
pairing service, the Telegram emulator and the bot, on one private
redis-server. In each round ``--journeys`` cases are brought to the fetching
step with a claimed app session. Each case is created through
``POST /v1/cases``, and the client's ``/start`` links its chat through the
bot. The conversation steps are then applied with ``journey.store.CaseStore``,
the transitions that the bot's handlers make. Last, the QR code is issued
through ``POST /v1/cases/{id}/pairings`` and claimed through
``POST /app/v1/claim``.

Latency is the time from just before the app's ``POST /app/v1/events`` to the
moment the emulator records the bot's ``sendMessage`` or ``editMessageText``
with the progress text that this event produces. Both ends read
``time.monotonic``: the emulator stamps each chat event with its clock.

Two phases per round:

- burst: every app posts its first event (``digid_login``) at the same
  moment. This is the first event per chat, so it becomes a ``sendMessage``.
- paced: each app then posts ``--paced-events`` ``source_fetched`` events.
  They are spread evenly at ``--rate`` events a second over all chats, so
  one chat's events are ``journeys / rate`` seconds apart (8 s by default),
  well above Telegram's one message a second per chat. They become
  ``editMessageText`` calls on the progress message.

The product runs twice: with the emulator's flood control at Telegram's
values (``RateLimits()``) and with it off. The baseline runs in the same
command with the flood control off: a bare aiohttp handler that appends the
event to a Redis Stream, and a bare loop that reads the stream and sends the
text with a plain PTB ``Bot`` (no rate limiter, no case lookup, one send at a
time), to the same chats on the same schedule. Each app gets its own
loopback source address (127.0.x.y), as phones have their own addresses, so
the service's per-address claim limit applies as it does in production.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from redis.asyncio import Redis
from telegram import Bot
from telegram.request import HTTPXRequest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.i18n import translate  # noqa: E402
from handlers.render import render_progress  # noqa: E402
from journey.model import Case  # noqa: E402
from journey.sources import SOURCES  # noqa: E402
from journey.steps import CHECKLIST_STEPS, Event, Step  # noqa: E402
from journey.store import CaseStore  # noqa: E402
from sandbox.app_simulator import OcktoAppSimulator  # noqa: E402
from sandbox.stack import EMULATOR_BOT_TOKEN, SandboxStack, running_stack  # noqa: E402
from sandbox.telegram_emulator import EmulatorClient, RateLimits, emulator_state  # noqa: E402
from sandbox.telegram_emulator.state import ChatEvent, EmulatorState  # noqa: E402

logger = logging.getLogger(__name__)

MESSAGE_WAIT_SECONDS = 60.0
"""Upper bound for one expected message; 200 sends at Telegram's 30 a second
need about 7 s, so a message missing after a minute counts as lost."""

SETUP_CONCURRENCY = 50
"""Journeys set up at once; more only queue behind the bot's send limit."""

PER_CHAT_MIN_SPACING_SECONDS = 1.0
"""Telegram's Bots FAQ advises at most about one message a second in one chat."""

BASELINE_STREAM = "bench:{baseline}:events"
BASELINE_STREAM_TTL_SECONDS = 3600
"""The baseline's stream lives in the run's private redis-server; the TTL
only keeps the rule that every key expires."""

BASELINE_READ_BLOCK_MS = 1000
REQUEST_TIMEOUT_SECONDS = 30.0

_user_ids = itertools.count(3_000_000)


@dataclass
class _Expectation:
    chat_id: int
    after_seq: int
    accept: Callable[[ChatEvent], bool]
    future: asyncio.Future[ChatEvent]


class ChatEventWatcher:
    """Resolves futures when the emulator records a matching chat event.

    It reads the emulator's state directly, in this process, and wakes on the
    state's change notifier, so waiting costs no polling.
    """

    def __init__(self, state: EmulatorState) -> None:
        self._state = state
        self._cursors: dict[int, int] = {}
        """Per chat, how many of its events the watcher has looked at."""
        self._waiting: dict[int, list[_Expectation]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching in a background task."""
        self._task = asyncio.create_task(self._run(), name="bench-chat-watcher")

    async def stop(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def rejected(self) -> int:
        """Bot API calls the emulator has rejected with 429 so far."""
        return self._state.rate_limiter.rejected

    def expect(
        self, chat_id: int, accept: Callable[[ChatEvent], bool]
    ) -> asyncio.Future[ChatEvent]:
        """Return a future for the next event of ``chat_id`` that ``accept`` takes.

        Only events recorded after this call count.
        """
        events = self._state.events_by_chat.get(chat_id, [])
        after_seq = events[-1].seq if events else 0
        future: asyncio.Future[ChatEvent] = asyncio.get_running_loop().create_future()
        expectation = _Expectation(chat_id, after_seq, accept, future)
        self._waiting.setdefault(chat_id, []).append(expectation)
        return future

    async def _run(self) -> None:
        while True:
            self._scan()
            # No await lies between the scan and the wait, so no event
            # recorded in between can be missed.
            await self._state.events_changed.wait(3600.0)

    def _scan(self) -> None:
        # The emulator keeps events per chat, so only the chats with an
        # expectation are read, each from where the last scan stopped.
        for chat_id, waiting in self._waiting.items():
            events = self._state.events_by_chat.get(chat_id, [])
            cursor = self._cursors.get(chat_id, 0)
            self._cursors[chat_id] = len(events)
            for event in events[cursor:]:
                for expectation in list(waiting):
                    if expectation.future.done():
                        waiting.remove(expectation)
                    elif event.seq > expectation.after_seq and expectation.accept(
                        event
                    ):
                        expectation.future.set_result(event)
                        waiting.remove(expectation)


def _text_is(text: str, kinds: tuple[str, ...]) -> Callable[[ChatEvent], bool]:
    def accept(event: ChatEvent) -> bool:
        message = event.data.get("message") or {}
        return event.kind in kinds and message.get("text") == text

    return accept


def _is_sent(event: ChatEvent) -> bool:
    return event.kind == "sent"


@dataclass
class Journey:
    """One case in the fetching step, its chat and its app."""

    index: int
    chat_id: int
    case: Case
    app: OcktoAppSimulator
    session: aiohttp.ClientSession
    progress: dict[str, Any] = field(default_factory=dict)

    def expected_text(self, change: dict[str, Any]) -> str:
        """Apply ``change`` to the client's progress; return the bot's text for it."""
        client = self.progress.setdefault("client", {})
        for name, value in change.items():
            if isinstance(value, dict):
                client.setdefault(name, {}).update(value)
            else:
                client[name] = value
        case = dataclasses.replace(
            self.case, progress=json.loads(json.dumps(self.progress))
        )
        return render_progress(case)


def _phone_address(index: int) -> str:
    return f"127.0.{1 + index // 250}.{1 + index % 250}"


def _phone_session(index: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(local_addr=(_phone_address(index), 0))
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
    )


async def open_journey(
    stack: SandboxStack,
    emulator: EmulatorClient,
    watcher: ChatEventWatcher,
    index: int,
) -> Journey:
    """Bring one new case to the fetching step with a claimed app session."""
    invitation = await stack.invite()
    chat_id = next(_user_ids)
    store = CaseStore(stack.redis)

    info_shown = watcher.expect(chat_id, _is_sent)
    await emulator.send_text(chat_id, f"/start {invitation.token}")
    await asyncio.wait_for(info_shown, MESSAGE_WAIT_SECONDS)

    await store.apply(invitation.case_id, Event.START, expected_step=Step.INFO)
    for step in CHECKLIST_STEPS:
        await store.apply(invitation.case_id, Event.CONFIRM, expected_step=step)
    await store.apply(
        invitation.case_id, Event.PARTNER_NO, expected_step=Step.PARTNER_QUESTION
    )

    headers = {"Authorization": f"Bearer {stack.service_token}"}
    session = _phone_session(index)
    async with session.post(
        f"{stack.service_url}/v1/cases/{invitation.case_id}/pairings",
        json={},
        headers=headers,
    ) as response:
        pairing = await response.json()
        if response.status != 201:
            raise RuntimeError(f"pairing failed: {response.status} {pairing}")

    app = OcktoAppSimulator(stack.service_url, session=session)
    paired = watcher.expect(chat_id, _text_is(translate("paired.body"), ("sent",)))
    await app.claim(pairing["app_link"])
    await asyncio.wait_for(paired, MESSAGE_WAIT_SECONDS)

    case = await store.get(invitation.case_id)
    return Journey(index, chat_id, case, app, session)


async def open_journeys(
    stack: SandboxStack, watcher: ChatEventWatcher, count: int
) -> list[Journey]:
    """Set up ``count`` journeys, ``SETUP_CONCURRENCY`` at a time."""
    assert stack.emulator_url is not None
    limit = asyncio.Semaphore(SETUP_CONCURRENCY)
    async with EmulatorClient(stack.emulator_url) as emulator:

        async def one(index: int) -> Journey:
            async with limit:
                return await open_journey(stack, emulator, watcher, index)

        return list(await asyncio.gather(*(one(index) for index in range(count))))


@dataclass
class PhaseResult:
    """Latencies of one phase of one round, in milliseconds."""

    latencies_ms: list[float]
    missing: int
    """Events whose message did not arrive within ``MESSAGE_WAIT_SECONDS``."""
    rejected: int
    """Bot API calls that the emulator rejected with 429 during the phase."""

    def percentile(self, rank: int) -> float:
        """Return the ``rank``-th percentile of the latencies (inclusive method)."""
        if len(self.latencies_ms) < 2:
            return self.latencies_ms[0] if self.latencies_ms else float("nan")
        cuts = statistics.quantiles(self.latencies_ms, n=100, method="inclusive")
        return cuts[rank - 1]


async def _measure_one(
    journey: Journey,
    number: int,
    post: Callable[[Journey, int], Any],
    expected: str,
    watcher: ChatEventWatcher,
) -> float | None:
    arrived = watcher.expect(journey.chat_id, _text_is(expected, ("sent", "edited")))
    started = time.monotonic()
    await post(journey, number)
    try:
        event = await asyncio.wait_for(arrived, MESSAGE_WAIT_SECONDS)
    except TimeoutError:
        return None
    return (event.clock - started) * 1000.0


async def run_burst(
    journeys: list[Journey],
    watcher: ChatEventWatcher,
    post: Callable[[Journey, int], Any],
    texts: dict[tuple[int, int], str],
) -> PhaseResult:
    """Let every journey post its event 0 at once; return the latencies."""
    rejected_before = watcher.rejected
    # gather starts every post in the same turn of the event loop.
    results = await asyncio.gather(
        *(
            _measure_one(journey, 0, post, texts[(journey.index, 0)], watcher)
            for journey in journeys
        )
    )
    return _phase_result(results, watcher.rejected - rejected_before)


async def run_paced(
    journeys: list[Journey],
    watcher: ChatEventWatcher,
    post: Callable[[Journey, int], Any],
    texts: dict[tuple[int, int], str],
    events_per_journey: int,
    rate: float,
) -> PhaseResult:
    """Post events 1..n of every journey, evenly spread at ``rate`` a second."""
    rejected_before = watcher.rejected
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.5
    count = len(journeys)

    async def one(journey: Journey, number: int) -> float | None:
        slot = (number - 1) * count + journey.index
        # Pacing the load is the point of this phase, so this sleep is part
        # of the schedule, not a wait for a result.
        await asyncio.sleep(max(0.0, start + slot / rate - loop.time()))
        return await _measure_one(
            journey, number, post, texts[(journey.index, number)], watcher
        )

    results = await asyncio.gather(
        *(
            one(journey, number)
            for journey in journeys
            for number in range(1, events_per_journey + 1)
        )
    )
    return _phase_result(results, watcher.rejected - rejected_before)


def _phase_result(results: list[float | None], rejected: int) -> PhaseResult:
    latencies = [result for result in results if result is not None]
    return PhaseResult(latencies, len(results) - len(latencies), rejected)


def product_texts(
    journeys: list[Journey], events_per_journey: int
) -> dict[tuple[int, int], str]:
    """Return the progress text the bot must show after each app event."""
    texts: dict[tuple[int, int], str] = {}
    for journey in journeys:
        texts[(journey.index, 0)] = journey.expected_text({"digid": True})
        for number in range(1, events_per_journey + 1):
            source = SOURCES[number - 1]
            texts[(journey.index, number)] = journey.expected_text(
                {"sources": {source: "done"}}
            )
    return texts


async def post_product_event(journey: Journey, number: int) -> None:
    """Post app event ``number``: 0 is the DigiD login, then one source each."""
    if number == 0:
        await journey.app.digid_login("client")
    else:
        await journey.app.fetch_source(SOURCES[number - 1], "client")


@contextlib.asynccontextmanager
async def running_baseline(redis: Redis, emulator_url: str) -> AsyncIterator[str]:
    """Run the bare pipeline: HTTP handler, Redis Stream, one send at a time."""
    await redis.delete(BASELINE_STREAM)

    async def accept_event(request: web.Request) -> web.Response:
        document = await request.json()
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xadd(
                BASELINE_STREAM,
                {"chat_id": str(document["chat_id"]), "text": document["text"]},
            )
            pipe.expire(BASELINE_STREAM, BASELINE_STREAM_TTL_SECONDS)
            await pipe.execute()
        return web.json_response({"step": "fetching"}, status=202)

    app = web.Application()
    app.router.add_post("/events", accept_event)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/events"

    bot = Bot(
        EMULATOR_BOT_TOKEN,
        base_url=f"{emulator_url}/bot",
        request=HTTPXRequest(connection_pool_size=8),
    )
    await bot.initialize()

    async def consume() -> None:
        # The stream was deleted above, so reading from the start loses no
        # event posted before the first read.
        last_id = "0-0"
        while True:
            response = await redis.xread(
                {BASELINE_STREAM: last_id}, count=100, block=BASELINE_READ_BLOCK_MS
            )
            for _stream, entries in response or []:
                for entry_id, entry in entries:
                    last_id = entry_id
                    await bot.send_message(int(entry["chat_id"]), entry["text"])
                    await redis.xdel(BASELINE_STREAM, entry_id)

    consumer = asyncio.create_task(consume(), name="bench-baseline-consumer")
    try:
        yield url
    finally:
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        await bot.shutdown()
        await runner.cleanup()
        await redis.delete(BASELINE_STREAM)


def baseline_texts(
    journeys: list[Journey], events_per_journey: int, round_number: int
) -> dict[tuple[int, int], str]:
    """Return a unique text for each baseline event."""
    return {
        (journey.index, number): f"baseline {round_number} {journey.index} {number}"
        for journey in journeys
        for number in range(events_per_journey + 1)
    }


def baseline_poster(
    url: str, texts: dict[tuple[int, int], str]
) -> Callable[[Journey, int], Any]:
    """Return a poster that sends each event to the bare pipeline at ``url``."""

    async def post(journey: Journey, number: int) -> None:
        body = {"chat_id": journey.chat_id, "text": texts[(journey.index, number)]}
        async with journey.session.post(url, json=body) as response:
            if response.status != 202:
                raise RuntimeError(f"baseline post failed: {response.status}")

    return post


@dataclass
class RoundResult:
    """Both phases of one round."""

    burst: PhaseResult
    paced: PhaseResult


async def run_mode(
    arguments: argparse.Namespace, limits: RateLimits, with_baseline: bool
) -> tuple[list[RoundResult], list[RoundResult]]:
    """Run the rounds on one stack; return the product's and the baseline's."""
    product: list[RoundResult] = []
    baseline: list[RoundResult] = []
    async with running_stack(rate_limits=limits) as stack:
        assert stack.emulator_app is not None and stack.emulator_url is not None
        state = emulator_state(stack.emulator_app)
        watcher = ChatEventWatcher(state)
        watcher.start()
        try:
            for round_number in range(1, arguments.rounds + 1):
                journeys = await open_journeys(stack, watcher, arguments.journeys)
                try:
                    texts = product_texts(journeys, arguments.paced_events)
                    burst = await run_burst(
                        journeys, watcher, post_product_event, texts
                    )
                    paced = await run_paced(
                        journeys,
                        watcher,
                        post_product_event,
                        texts,
                        arguments.paced_events,
                        arguments.rate,
                    )
                    product.append(RoundResult(burst, paced))
                    _print_round("product", limits, round_number, product[-1])

                    if with_baseline:
                        baseline.append(
                            await _baseline_round(
                                stack, watcher, journeys, arguments, round_number
                            )
                        )
                        _print_round("baseline", limits, round_number, baseline[-1])
                finally:
                    for journey in journeys:
                        await journey.session.close()
        finally:
            await watcher.stop()
    return product, baseline


async def _baseline_round(
    stack: SandboxStack,
    watcher: ChatEventWatcher,
    journeys: list[Journey],
    arguments: argparse.Namespace,
    round_number: int,
) -> RoundResult:
    assert stack.emulator_url is not None
    texts = baseline_texts(journeys, arguments.paced_events, round_number)
    async with running_baseline(stack.redis, stack.emulator_url) as url:
        post = baseline_poster(url, texts)
        burst = await run_burst(journeys, watcher, post, texts)
        paced = await run_paced(
            journeys, watcher, post, texts, arguments.paced_events, arguments.rate
        )
    return RoundResult(burst, paced)


def _mode_name(limits: RateLimits) -> str:
    return "Telegram limits" if limits.enabled else "limits off"


def _print_round(
    name: str, limits: RateLimits, round_number: int, result: RoundResult
) -> None:
    for phase_name, phase in (("burst", result.burst), ("paced", result.paced)):
        print(
            f"{name}, {_mode_name(limits)}, round {round_number}, {phase_name}: "
            f"n={len(phase.latencies_ms)} missing={phase.missing} "
            f"p50={phase.percentile(50):.1f} ms p95={phase.percentile(95):.1f} ms "
            f"p99={phase.percentile(99):.1f} ms 429s={phase.rejected}",
            flush=True,
        )


def _median_row(label: str, rounds: list[RoundResult], phase_name: str) -> list[str]:
    phases = [getattr(result, phase_name) for result in rounds]
    return [
        label,
        phase_name,
        str(round(statistics.median(len(phase.latencies_ms) for phase in phases))),
        str(round(statistics.median(phase.missing for phase in phases))),
        f"{statistics.median(phase.percentile(50) for phase in phases):.1f}",
        f"{statistics.median(phase.percentile(95) for phase in phases):.1f}",
        f"{statistics.median(phase.percentile(99) for phase in phases):.1f}",
        str(round(statistics.median(phase.rejected for phase in phases))),
    ]


def print_summary(
    telegram: list[RoundResult], off: list[RoundResult], baseline: list[RoundResult]
) -> None:
    """Print the medians over the rounds as a Markdown table, with the ratios."""
    rows = []
    for label, rounds in (
        ("product, Telegram limits", telegram),
        ("product, limits off", off),
        ("baseline, limits off", baseline),
    ):
        for phase_name in ("burst", "paced"):
            rows.append(_median_row(label, rounds, phase_name))
    print()
    print("| run | phase | events | missing | p50 ms | p95 ms | p99 ms | 429s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    for phase_name in ("burst", "paced"):
        for label, rounds in (("Telegram limits", telegram), ("limits off", off)):
            for rank in (50, 99):
                measured = statistics.median(
                    getattr(result, phase_name).percentile(rank) for result in rounds
                )
                floor = statistics.median(
                    getattr(result, phase_name).percentile(rank) for result in baseline
                )
                print(
                    f"ratio {phase_name} p{rank} product ({label}) / baseline: "
                    f"{measured / floor:.2f}"
                )


def parse_arguments() -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--journeys", type=int, default=200, help="journeys in fetching at once"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run")
    parser.add_argument(
        "--paced-events",
        type=int,
        default=3,
        choices=range(1, len(SOURCES) + 1),
        help="source_fetched events per journey in the paced phase",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=25.0,
        help="events a second over all journeys in the paced phase; "
        "Telegram allows about 30 messages a second per bot",
    )
    arguments = parser.parse_args()
    if arguments.journeys / arguments.rate < PER_CHAT_MIN_SPACING_SECONDS:
        parser.error(
            f"--rate {arguments.rate} puts one chat's events less than "
            f"{PER_CHAT_MIN_SPACING_SECONDS} s apart; use at most "
            f"{arguments.journeys / PER_CHAT_MIN_SPACING_SECONDS:g}"
        )
    return arguments


async def main(arguments: argparse.Namespace) -> None:
    """Run the product with both flood controls and the baseline; print figures."""
    telegram, _ = await run_mode(arguments, RateLimits(), with_baseline=False)
    off, baseline = await run_mode(arguments, RateLimits.disabled(), with_baseline=True)
    print_summary(telegram, off, baseline)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(parse_arguments()))
