"""Two reminder worker processes, killed with SIGKILL while they send.

Each worker is a real ``python -m bot.reminders`` process. The emulator runs
in the test process, so the test sees every sendMessage it accepted. The
emulator's global limit is raised to 2,000 a second and the workers' shared
limit to 400 a second, so 2,000 reminders take seconds, not the 67 s that
Telegram's 30 a second would take; the per-chat limit stays as Telegram's.
Claim leases are 2 s, so claims of a killed worker come back quickly.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from redis.asyncio import Redis

from journey import keys
from journey.reminders import Kind, Reminder, ReminderScheduler
from journey.steps import Step
from journey.store import CaseStore
from sandbox.telegram_emulator import EmulatorClient, RateLimits, start_emulator
from sandbox.telegram_emulator.server import emulator_state
from sandbox.telegram_emulator.state import EmulatorState

BOT_TOKEN = "123456:worker-test-token"
CASES = 2_000
KILLS = 6
FIRST_USER_ID = 100_000
WORKER_RATE = 400
"""Messages a second for both workers together (Telegram's is 30)."""
LEASE_SECONDS = 2
DEADLINE_SECONDS = 50.0
"""Upper bound for the whole run; a passing run takes about 15 s."""


@pytest.fixture
async def emulator() -> AsyncIterator[tuple[str, EmulatorState]]:
    limits = RateLimits(global_per_second=2000, global_burst=2000)
    runner, base_url = await start_emulator("127.0.0.1", 0, rate_limits=limits)
    app: web.Application = runner.app
    yield base_url, emulator_state(app)
    await runner.cleanup()


class Workers:
    """Reminder worker processes that the test starts, kills and restarts."""

    def __init__(self, environment: dict[str, str]) -> None:
        self._environment = environment
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot.reminders"],
            env=self._environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def workers(
    redis_server: Any, emulator: tuple[str, EmulatorState]
) -> Iterator[Workers]:
    base_url, _state = emulator
    environment = {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "TELEGRAM_BOT_TOKEN": BOT_TOKEN,
        "TELEGRAM_API_BASE_URL": f"{base_url}/bot",
        "TELEGRAM_MESSAGES_PER_SECOND": str(WORKER_RATE),
        "REMINDER_SEND_WINDOW": "00:00-24:00",
        "REMINDER_CLAIM_LEASE_SECONDS": str(LEASE_SECONDS),
        "LOG_LEVEL": "WARNING",
    }
    environment.pop("SMTP_HOST", None)
    pool = Workers(environment)
    yield pool
    pool.stop_all()


async def open_chats(client: EmulatorClient) -> list[int]:
    users = [FIRST_USER_ID + index for index in range(CASES)]
    for start in range(0, CASES, 200):
        await asyncio.gather(
            *(client.send_text(user, "hallo") for user in users[start : start + 200])
        )
    return users


async def queue_due_reminders(redis: Redis, users: list[int]) -> list[str]:
    store = CaseStore(redis)
    scheduler = ReminderScheduler(redis)
    now = await scheduler.now()
    case_ids = []
    for user in users:
        case, _token = await store.create("GM0193", step=Step.INFO, chat_id=user)
        await scheduler.schedule_case(case.case_id, case.created_at)
        case_ids.append(case.case_id)
    # Make every first reminder due now; the second stays ten days away.
    due_now = {Reminder(case_id, Kind.FIRST).member: now - 1 for case_id in case_ids}
    await redis.zadd(keys.reminders_due(), due_now)
    return case_ids


async def first_reminders_left(redis: Redis) -> int:
    now = await ReminderScheduler(redis).now()
    due = await redis.zcount(keys.reminders_due(), "-inf", now + 3600)
    claimed = await redis.zcard(keys.reminders_claimed())
    return int(due) + int(claimed)


async def wait_for_messages(state: EmulatorState, count: int, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    while state.counters["messages_from_bot"] < count:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError(f"the bot sent fewer than {count} messages in time")
        await state.events_changed.wait(remaining)


async def wait_for_queue_drained(redis: Redis, deadline: float) -> None:
    """Wait, on keyspace events of the queue, until no first reminder is left."""
    await redis.config_set("notify-keyspace-events", "Kz")
    pubsub = redis.pubsub()
    await pubsub.subscribe(
        f"__keyspace@0__:{keys.reminders_due()}",
        f"__keyspace@0__:{keys.reminders_claimed()}",
    )
    loop = asyncio.get_running_loop()
    try:
        while await first_reminders_left(redis) > 0:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("reminders were still queued at the deadline")
            await pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
    finally:
        await pubsub.aclose()


async def test_killed_workers_send_once(
    redis: Redis, emulator: tuple[str, EmulatorState], workers: Workers
) -> None:
    base_url, state = emulator
    async with EmulatorClient(base_url) as client:
        users = await open_chats(client)
    case_ids = await queue_due_reminders(redis, users)
    state.calls.clear()
    messages_before = state.counters["messages_from_bot"]

    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_SECONDS
    running = [workers.start(), workers.start()]
    chooser = random.Random()
    thresholds = sorted(chooser.sample(range(100, CASES - 100), KILLS))
    for threshold in thresholds:
        await wait_for_messages(state, messages_before + threshold, deadline)
        victim = chooser.randrange(len(running))
        os.kill(running[victim].pid, signal.SIGKILL)
        running[victim].wait()
        running[victim] = workers.start()
    await wait_for_queue_drained(redis, deadline)

    sends = collections.Counter(
        call.chat_id for call in state.calls if call.method == "sendMessage" and call.ok
    )
    duplicates = sum(count - 1 for count in sends.values() if count > 1)
    missing = len(set(users) - set(sends))
    rejected = [call for call in state.calls if not call.ok]
    print(
        f"reminder workers: cases={CASES} kills={KILLS} sent={sum(sends.values())} "
        f"duplicates={duplicates} missing={missing} rejected={len(rejected)}"
    )
    assert duplicates == 0
    assert missing <= KILLS
    assert rejected == []
    marked = 0
    for case_id in case_ids:
        if await redis.hexists(keys.reminder_state(case_id), "sent:first"):
            marked += 1
    assert marked == CASES
