"""Benchmark: whole journeys at once, and bot updates per second against echo.

Run: ``.venv/bin/python bench/bench_journeys.py [--clients 500]
[--updates 300] [--rounds 3] [--telegram-limits]``

Part 1 starts the sandbox (``sandbox.stack.running_stack``) and lets
``--clients`` scripted clients (``sandbox.scripted_client.ScriptedClient``),
one emulator user each, walk the whole journey at the same time, from the
invitation link to the delivery confirmation. It prints the completed
journeys per second of wall time and the errors by type.

Part 2 measures updates per second on the same emulator. In each round
``--updates`` users each send one text, and the clock stops when every user
has the bot's reply. The project's bot replies with its "unexpected text"
notice and the current step. The baseline is a bare python-telegram-bot
application with one handler that echoes the text, built with PTB's
``AIORateLimiter`` at its defaults (30 messages a second overall), so both
obey Telegram's send limits: the project's bot through its Redis-shared
limiter, the echo bot in its own process. It prints the medians over the
rounds and the ratio bot/echo.

The emulator's own flood control is off unless ``--telegram-limits`` is set.
The bot limits itself to Telegram's rates either way.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from telegram import Update
from telegram.ext import AIORateLimiter, Application, ContextTypes, MessageHandler
from telegram.ext import filters as ext_filters

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.application import running_bot  # noqa: E402
from bot.config import BotSettings  # noqa: E402
from sandbox.app_simulator import synthetic_package  # noqa: E402
from sandbox.scripted_client import ScriptedClient  # noqa: E402
from sandbox.stack import EMULATOR_BOT_TOKEN, SandboxStack, running_stack  # noqa: E402
from sandbox.telegram_emulator import EmulatorClient, RateLimits  # noqa: E402

REPLY_WAIT_SECONDS = 120.0
"""Upper bound for all replies of one updates round; at 30 messages a second
300 replies need 10 s."""

_user_ids = itertools.count(1_000_000)

JOURNEY_STEP_TIMEOUT_SECONDS = 900.0
"""Wait per reply under load: at Telegram's 30 messages a second for the
whole bot, 500 journeys of about 20 messages take about 5.5 minutes, and a
client's next reply may queue behind everyone else's."""


def unlimited_session() -> aiohttp.ClientSession:
    """Build a session without aiohttp's default pool limit of 100 connections.

    Every simulated user keeps a long poll open at the emulator. In a limited
    pool the other users' sends wait for a free connection, and aiohttp 3.14
    hands an idle connection to the next request of the coroutine that just
    released it, ahead of the queued sends. The sends then time out under
    load, and the clock measures the pool instead of the bot.
    """
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


def phone_address(index: int) -> str:
    """Return a distinct loopback address (127.0.x.y) for phone ``index``."""
    return f"127.0.{1 + index // 250}.{1 + index % 250}"


async def run_journeys(stack: SandboxStack, clients: int) -> dict[str, object]:
    """Let ``clients`` scripted clients walk the journey at once; count results."""
    assert stack.emulator_url is not None
    invitations = [await stack.invite() for _ in range(clients)]

    unlimited = unlimited_session()
    async with unlimited, EmulatorClient(stack.emulator_url, unlimited) as emulator:

        async def one(index: int) -> None:
            # Each phone claims from its own loopback address, as real phones
            # have their own addresses; the per-address claim limit stays on.
            connector = aiohttp.TCPConnector(local_addr=(phone_address(index), 0))
            async with aiohttp.ClientSession(connector=connector) as phone:
                client = ScriptedClient(
                    stack,
                    emulator,
                    next(_user_ids),
                    step_timeout=JOURNEY_STEP_TIMEOUT_SECONDS,
                    app_session=phone,
                )
                await client.play(
                    invitations[index], package=synthetic_package(f"bench-{index}")
                )

        started = time.perf_counter()
        results = await asyncio.gather(
            *(one(index) for index in range(clients)), return_exceptions=True
        )
        seconds = time.perf_counter() - started
        stats = await emulator.stats()

    errors = collections.Counter(
        type(result).__name__ for result in results if isinstance(result, BaseException)
    )
    completed = clients - sum(errors.values())
    first_messages: dict[str, str] = {}
    for result in results:
        if isinstance(result, BaseException):
            first_messages.setdefault(type(result).__name__, str(result)[:200])
    return {
        "clients": clients,
        "completed": completed,
        "errors": dict(errors),
        "seconds": seconds,
        "journeys_per_second": completed / seconds,
        "emulator_429": stats.get("rate_limited", 0),
        "updates_pending": stats.get("updates_pending", 0),
        "first_error_messages": first_messages,
    }


async def updates_per_second(emulator_url: str, updates: int) -> float:
    """Send one text from each of ``updates`` new users; return replies a second."""
    unlimited = unlimited_session()
    async with unlimited, EmulatorClient(emulator_url, unlimited) as emulator:
        users = [next(_user_ids) for _ in range(updates)]

        async def one(user_id: int) -> None:
            await emulator.send_text(user_id, "hallo, wat nu?")
            await emulator.wait_for(
                user_id,
                lambda event: event["kind"] == "sent",
                timeout=REPLY_WAIT_SECONDS,
            )

        started = time.perf_counter()
        await asyncio.gather(*(one(user_id) for user_id in users))
        return updates / (time.perf_counter() - started)


async def _echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.effective_message is not None
    await update.effective_message.reply_text(update.effective_message.text or "")


@contextlib.asynccontextmanager
async def running_echo_bot(emulator_url: str) -> AsyncIterator[Application]:  # type: ignore[type-arg]
    """Run a bare PTB echo bot against the emulator, polling like ours."""
    application = (
        Application.builder()
        .token(EMULATOR_BOT_TOKEN)
        .base_url(f"{emulator_url}/bot")
        .base_file_url(f"{emulator_url}/file/bot")
        .rate_limiter(AIORateLimiter())
        .concurrent_updates(True)
        .build()
    )
    application.add_handler(
        MessageHandler(ext_filters.TEXT & ~ext_filters.COMMAND, _echo)
    )
    await application.initialize()
    assert application.updater is not None
    await application.updater.start_polling(poll_interval=0, timeout=10)
    await application.start()
    try:
        yield application
    finally:
        await application.updater.stop()
        await application.stop()
        await application.shutdown()


def bot_settings(stack: SandboxStack) -> BotSettings:
    """Build the settings ``running_stack`` gives its own bot."""
    assert stack.emulator_url is not None
    return BotSettings(
        telegram_token=EMULATOR_BOT_TOKEN,
        redis_url=stack.redis_url,
        pairing_service_url=stack.service_url,
        service_token=stack.service_token,
        municipality_registry=stack.registry_path,
        consumer_name="bench",
        poll_timeout=10,
        api_base_url=f"{stack.emulator_url}/bot",
        file_base_url=f"{stack.emulator_url}/file/bot",
    )


async def main(arguments: argparse.Namespace) -> None:
    """Run both parts and print their figures."""
    limits = RateLimits() if arguments.telegram_limits else RateLimits.disabled()
    # The pairing service runs in its own process, as in production, so it
    # has a core of its own while this process plays 500 clients and the bot.
    async with running_stack(
        rate_limits=limits, start_bot=False, service_process=True
    ) as stack:
        assert stack.emulator_url is not None
        async with running_bot(
            bot_settings(stack), redis=stack.redis, registry=stack.registry
        ) as bot:
            stack.bot = bot
            journeys = await run_journeys(stack, arguments.clients)
            print(
                f"journeys: {journeys['completed']}/{journeys['clients']} completed "
                f"in {journeys['seconds']:.1f} s = "
                f"{journeys['journeys_per_second']:.2f} journeys/s, "
                f"errors {journeys['errors']}, emulator 429s "
                f"{journeys['emulator_429']}, updates still pending at the emulator "
                f"{journeys['updates_pending']}"
            )
            for name, message in journeys["first_error_messages"].items():  # type: ignore[attr-defined]
                print(f"first {name}: {message}")
            ours = [
                await updates_per_second(stack.emulator_url, arguments.updates)
                for _ in range(arguments.rounds)
            ]
        async with running_echo_bot(stack.emulator_url):
            echo = [
                await updates_per_second(stack.emulator_url, arguments.updates)
                for _ in range(arguments.rounds)
            ]

    print("| round | echo (updates/s) | bot (updates/s) | ratio |")
    print("| --- | --- | --- | --- |")
    for index, (baseline, measured) in enumerate(zip(echo, ours, strict=True), 1):
        print(
            f"| {index} | {baseline:.1f} | {measured:.1f} | {measured / baseline:.2f} |"
        )
    median_echo = statistics.median(echo)
    median_ours = statistics.median(ours)
    print(
        f"| median | {median_echo:.1f} | {median_ours:.1f} | "
        f"{median_ours / median_echo:.2f} |"
    )


def parse_arguments() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=500, help="journeys at once")
    parser.add_argument(
        "--updates", type=int, default=300, help="users sending one text per round"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of part 2")
    parser.add_argument(
        "--telegram-limits",
        action="store_true",
        help="switch on the emulator's flood control (Telegram's rates)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_arguments()))
