"""Benchmark of the reminder scheduler: memory per case, send rate, CPU per reminder.

Run: ``.venv/bin/python bench/bench_reminders.py`` (options: ``--help``).

It starts a private redis-server and the project's Telegram emulator (a
separate process, with Telegram's limits enforced: 30 messages a second,
burst 30, one a second per chat with a burst of 5), then:

1. creates ``--cases`` open cases and queues their first reminders, and
   reports Redis memory per open case (``INFO memory`` before and after);
2. sends ``--round-size`` due reminders per round through the dispatcher at
   the configured 30 a second, for ``--rounds`` rounds, and reports the
   median rate against the configured rate, the emulator's 429 count and
   duplicates;
3. reports the dispatcher's CPU per reminder against a baseline: the CPU of
   sending the same number of plain ``sendMessage`` calls through PTB and
   the same shared limiter, with no scheduler, measured in the same run.

Only a window of the 100,000 cases is sent (rounds x round size), because
sending all of them at 30 a second takes 55 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import subprocess
import sys
import time
from typing import Any

import aiohttp
from redis.asyncio import Redis
from telegram import Bot

from bot.reminders import ReminderDispatcher
from bot.telegram_limits import SendLimits, SharedTelegramLimits
from journey import keys
from journey.model import encode_fields
from journey.reminders import Kind, Reminder, ReminderScheduler, SendWindow
from journey.steps import Step
from journey.store import CaseStore
from journey.tokens import new_case_id, new_token
from sandbox.redis_server import free_port, start_redis_server
from sandbox.telegram_emulator import EmulatorClient

BOT_TOKEN = "123456:bench-token"
FIRST_USER_ID = 1_000_000
CONFIGURED_RATE = 30.0


async def create_cases(redis: Redis, count: int, linked: int) -> list[str]:
    """Write ``count`` invited cases as ``CaseStore.create`` does, in pipelines.

    The first ``linked`` cases are linked to a chat.
    """
    now = time.time()
    case_ids = []
    batch = 1000
    for start in range(0, count, batch):
        async with redis.pipeline(transaction=False) as pipe:
            for index in range(start, min(start + batch, count)):
                case_id = new_case_id()
                token = new_token(case_id)
                chat_id = FIRST_USER_ID + index if index < linked else None
                values = {
                    "step": Step.INFO if chat_id else Step.INVITED,
                    "version": 1,
                    "municipality_code": "GM0193",
                    "created_at": now,
                    "expires_at": now + keys.INVITATION_TTL_SECONDS,
                    "invite_hash": token.secret_hash,
                    "language": "nl",
                    "email": None if chat_id else f"klant{index}@example.test",
                    "chat_id": chat_id,
                }
                pipe.hset(keys.case(case_id), mapping=encode_fields(values))
                pipe.expire(keys.case(case_id), keys.INVITATION_TTL_SECONDS)
                if chat_id is not None:
                    pipe.set(keys.chat(chat_id), case_id, ex=3600)
                case_ids.append(case_id)
            await pipe.execute()
    return case_ids


async def schedule_cases(scheduler: ReminderScheduler, case_ids: list[str]) -> None:
    now = time.time()
    for start in range(0, len(case_ids), 500):
        await asyncio.gather(
            *(
                scheduler.schedule_case(case_id, now)
                for case_id in case_ids[start : start + 500]
            )
        )


async def used_memory(redis: Redis) -> int:
    info = await redis.info("memory")
    return int(info["used_memory"])


async def open_chats(client: EmulatorClient, users: list[int]) -> None:
    for start in range(0, len(users), 200):
        await asyncio.gather(
            *(client.send_text(user, "hallo") for user in users[start : start + 200])
        )


async def emulator_stats(base_url: str, reminder_chats: set[int]) -> dict[str, Any]:
    """Return the emulator's counts and the duplicates among reminder chats.

    The baseline's chats get one message per round on purpose, so they are
    left out of the duplicate count.
    """
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/_emulator/stats") as response:
            stats: dict[str, Any] = await response.json()
        async with session.get(
            f"{base_url}/_emulator/calls", params={"method": "sendMessage"}
        ) as response:
            calls = (await response.json())["calls"]
    ok = collections.Counter(
        call["chat_id"]
        for call in calls
        if call["ok"] and call["chat_id"] in reminder_chats
    )
    stats["duplicates"] = sum(count - 1 for count in ok.values() if count > 1)
    return stats


async def reminder_round(
    redis: Redis, bot: Bot, case_ids: list[str]
) -> tuple[float, float, int]:
    """Make ``case_ids``' first reminders due and send them; return s, CPU s, sent."""
    scheduler = ReminderScheduler(redis, window=SendWindow(0, 24 * 3600))
    limits = SharedTelegramLimits(
        redis, bot.token, SendLimits(global_per_second=CONFIGURED_RATE)
    )
    dispatcher = ReminderDispatcher(scheduler, CaseStore(redis), bot, limits)
    now = await scheduler.now()
    await redis.zadd(
        keys.reminders_due(),
        {Reminder(case_id, Kind.FIRST).member: now - 1 for case_id in case_ids},
    )
    sent = 0
    wall_start = time.perf_counter()
    cpu_start = time.process_time()
    while sent < len(case_ids):
        outcomes = await dispatcher.dispatch_once()
        sent += sum(1 for outcome in outcomes if outcome.result == "sent")
        if not outcomes:
            break
    return time.perf_counter() - wall_start, time.process_time() - cpu_start, sent


async def baseline_round(redis: Redis, bot: Bot, users: list[int]) -> float:
    """Send plain messages through the shared limiter only; return the CPU s."""
    limits = SharedTelegramLimits(
        redis, bot.token, SendLimits(global_per_second=CONFIGURED_RATE)
    )
    cpu_start = time.process_time()
    semaphore = asyncio.Semaphore(16)

    async def send(user: int) -> None:
        async with semaphore:
            await limits.acquire(user)
            await bot.send_message(user, "baseline")

    await asyncio.gather(*(send(user) for user in users))
    return time.process_time() - cpu_start


def start_emulator_process(port: int) -> subprocess.Popen[str]:
    """Start the emulator with Telegram's limits and wait until it listens."""
    emulator = subprocess.Popen(
        [sys.executable, "-m", "sandbox.telegram_emulator", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert emulator.stdout is not None
    emulator.stdout.readline()  # the emulator prints its base_url once it listens
    return emulator


async def run(arguments: argparse.Namespace) -> None:
    server = start_redis_server()
    port = free_port()
    emulator = start_emulator_process(port)
    base_url = f"http://127.0.0.1:{port}"
    redis = Redis.from_url(server.url, decode_responses=True)
    rounds, size = arguments.rounds, arguments.round_size
    linked = rounds * size
    try:
        before = await used_memory(redis)
        case_ids = await create_cases(redis, arguments.cases, linked)
        cases_only = await used_memory(redis)
        await schedule_cases(ReminderScheduler(redis), case_ids)
        after = await used_memory(redis)
        per_case = (after - before) / arguments.cases
        per_case_reminders = (after - cases_only) / arguments.cases

        users = [FIRST_USER_ID + index for index in range(linked)]
        baseline_users = [FIRST_USER_ID + linked + index for index in range(size)]
        async with EmulatorClient(base_url) as client:
            await open_chats(client, users + baseline_users)

        bot = Bot(BOT_TOKEN, base_url=f"{base_url}/bot")
        await bot.initialize()
        rates, cpu_per_reminder, baseline_cpu = [], [], []
        for index in range(rounds):
            chunk = case_ids[index * size : (index + 1) * size]
            elapsed, cpu, sent = await reminder_round(redis, bot, chunk)
            rates.append(sent / elapsed)
            cpu_per_reminder.append(cpu / max(sent, 1))
            baseline = await baseline_round(redis, bot, baseline_users)
            baseline_cpu.append(baseline / size)
        await bot.shutdown()
        stats = await emulator_stats(base_url, set(users))
    finally:
        await redis.aclose()
        emulator.terminate()
        emulator.wait()
        server.remove()

    rate = statistics.median(rates)
    cpu = statistics.median(cpu_per_reminder)
    base_cpu = statistics.median(baseline_cpu)
    print(f"cases: {arguments.cases}, rounds: {rounds} x {size} reminders")
    print(
        f"redis memory per open case: {per_case:.0f} B "
        f"(of which reminder keys {per_case_reminders:.0f} B); goal <= 1536 B"
    )
    print(
        f"send rate (median): {rate:.2f}/s against configured {CONFIGURED_RATE:.0f}/s, "
        f"ratio {rate / CONFIGURED_RATE:.3f}"
    )
    print(f"emulator 429 responses: {stats['rate_limited']}")
    print(f"duplicate reminders: {stats['duplicates']}")
    print(
        f"CPU per reminder (median): {cpu * 1000:.2f} ms against a limited "
        f"plain sendMessage {base_cpu * 1000:.2f} ms, ratio {cpu / base_cpu:.2f}"
    )


def main() -> None:
    """Parse the options and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=100_000, help="open cases")
    parser.add_argument("--rounds", type=int, default=3, help="send rounds")
    parser.add_argument(
        "--round-size", type=int, default=150, help="reminders sent per round"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
