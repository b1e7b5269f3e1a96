"""Reminders: the local-time schedule, the Redis queue and the dispatcher.

Time comes from an injected clock, so fourteen days pass in milliseconds; the
dispatcher sends through the real PTB ``Bot`` to the project's Telegram
emulator on loopback, and the queue lives in the test session's redis-server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from redis.asyncio import Redis
from telegram import Bot

from bot import reminders as bot_reminders
from bot.application import running_bot
from bot.config import BotSettings
from bot.i18n import translate
from bot.reminders import REMINDER_TEXT_KEYS, ReminderDispatcher
from bot.telegram_limits import SharedTelegramLimits
from journey import keys
from journey.municipalities import Municipality, MunicipalityRegistry
from journey.reminders import (
    AMSTERDAM,
    Kind,
    Reminder,
    ReminderScheduler,
    SendWindow,
    WindowError,
    scan_open_cases,
    series_due_time,
    series_due_times,
)
from journey.steps import Event, Step
from journey.store import CaseStore
from sandbox.redis_server import free_port
from sandbox.telegram_emulator import EmulatorClient, start_emulator

BOT_TOKEN = "123456:reminder-test-token"
USER_ID = 7101
WAIT_SECONDS = 10.0


def local(year: int, month: int, day: int, hour: int, minute: int = 0) -> float:
    """Return the Unix time of a wall clock time in Amsterdam."""
    return datetime(year, month, day, hour, minute, tzinfo=AMSTERDAM).timestamp()


def wall(moment: float) -> tuple[int, int, int, int, int]:
    """Return (year, month, day, hour, minute) of a Unix time in Amsterdam."""
    value = datetime.fromtimestamp(moment, AMSTERDAM)
    return (value.year, value.month, value.day, value.hour, value.minute)


class FakeClock:
    """A clock that does not move until a test sets it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# The schedule, without Redis.

WINDOW = SendWindow()


def test_series_days_five_ten_fourteen() -> None:
    invited = local(2030, 6, 3, 10, 15)
    times = series_due_times(invited, WINDOW)
    assert wall(times[Kind.FIRST]) == (2030, 6, 8, 10, 15)
    assert wall(times[Kind.SECOND]) == (2030, 6, 13, 10, 15)
    assert wall(times[Kind.LAST]) == (2030, 6, 17, 10, 15)
    assert wall(times[Kind.EXPIRY]) == (2030, 6, 23, 10, 15)


def test_night_invitation_moves_to_nine() -> None:
    late = local(2030, 6, 3, 23, 30)
    assert wall(series_due_time(Kind.FIRST, late, WINDOW)) == (2030, 6, 9, 9, 0)
    early = local(2030, 6, 3, 6, 45)
    assert wall(series_due_time(Kind.FIRST, early, WINDOW)) == (2030, 6, 8, 9, 0)
    evening = local(2030, 6, 3, 20, 0)
    assert wall(series_due_time(Kind.FIRST, evening, WINDOW)) == (2030, 6, 9, 9, 0)


def test_summer_time_keeps_local_time() -> None:
    # Summer time starts on Sunday 31 March 2030 and ends on Sunday 27 October.
    march = local(2030, 3, 28, 10, 15)
    first = series_due_time(Kind.FIRST, march, WINDOW)
    assert wall(first) == (2030, 4, 2, 10, 15)
    assert first - march == 5 * 24 * 3600 - 3600

    october = local(2030, 10, 24, 10, 15)
    first = series_due_time(Kind.FIRST, october, WINDOW)
    assert wall(first) == (2030, 10, 29, 10, 15)
    assert first - october == 5 * 24 * 3600 + 3600


def test_window_opens_at_nine_after_change() -> None:
    # 01:30 on the night that summer time starts moves to 09:00 CEST, not 10:00.
    night = local(2030, 3, 31, 1, 30)
    assert wall(WINDOW.next_opening(night)) == (2030, 3, 31, 9, 0)
    assert not WINDOW.contains(night)
    assert WINDOW.contains(local(2030, 10, 27, 19, 59))
    assert not WINDOW.contains(local(2030, 10, 27, 20, 0))


def test_window_parse_rejects_bad_text() -> None:
    assert SendWindow.parse("08:30-21:00") == SendWindow(8 * 3600 + 1800, 21 * 3600)
    assert SendWindow.parse("00:00-24:00").end == 24 * 3600
    for text in ("9-20", "20:00-09:00", "09:00-25:00", "09:61-20:00"):
        with pytest.raises(WindowError):
            SendWindow.parse(text)


# The queue in Redis.


async def test_claim_uses_redis_time(redis: Redis) -> None:
    scheduler = ReminderScheduler(redis)
    now = await scheduler.now()
    await redis.zadd(keys.reminders_due(), {"a" * 22 + ":first": now - 1})
    await redis.zadd(keys.reminders_due(), {"b" * 22 + ":first": now + 3600})
    claim = await scheduler.claim(10)
    assert [reminder.case_id for reminder in claim.reminders] == ["a" * 22]
    assert abs(claim.now - now) < 5
    assert await redis.zscore(keys.reminders_claimed(), "a" * 22 + ":first") > now
    assert await redis.ttl(keys.reminders_due()) > 0
    assert await redis.ttl(keys.reminders_claimed()) > 0


async def test_expired_lease_is_claimed_again(redis: Redis) -> None:
    clock = FakeClock(local(2030, 6, 8, 12))
    scheduler = ReminderScheduler(redis, clock=clock, lease_seconds=60)
    await redis.zadd(keys.reminders_due(), {"c" * 22 + ":first": clock.now})
    first = await scheduler.claim(10)
    assert len(first.reminders) == 1
    assert (await scheduler.claim(10)).reminders == []
    clock.now += 61
    again = await scheduler.claim(10)
    assert again.reminders == first.reminders


async def test_mark_sent_only_once(redis: Redis) -> None:
    scheduler = ReminderScheduler(redis)
    reminder = Reminder("d" * 22, Kind.FIRST)
    assert await scheduler.mark_sent(reminder, 1.0)
    assert not await scheduler.mark_sent(reminder, 2.0)
    assert await redis.ttl(keys.reminder_state("d" * 22)) > 0


async def test_rebuild_skips_sent_reminders(redis: Redis) -> None:
    clock = FakeClock(local(2030, 6, 3, 10, 15))
    store = CaseStore(redis, clock=clock)
    scheduler = ReminderScheduler(redis, clock=clock)
    case, _token = await store.create("GM0193")
    await scheduler.schedule_case(case.case_id, case.created_at)
    await scheduler.mark_sent(Reminder(case.case_id, Kind.FIRST), clock.now)
    finished, _token = await store.create("GM0193")
    await store.finish(finished.case_id, Event.CANCEL)

    await redis.delete(keys.reminders_due(), keys.reminders_claimed())
    count = await scheduler.rebuild(scan_open_cases(redis))

    assert count == 1
    queued = await redis.zrange(keys.reminders_due(), 0, -1, withscores=True)
    expected = series_due_time(Kind.SECOND, case.created_at, WINDOW)
    assert queued == [(f"{case.case_id}:second", expected)]


# The dispatcher against the emulator.


@pytest.fixture
async def emulator() -> AsyncIterator[str]:
    runner, base_url = await start_emulator("127.0.0.1", 0)
    yield base_url
    await runner.cleanup()


@pytest.fixture
async def client(emulator: str) -> AsyncIterator[EmulatorClient]:
    async with EmulatorClient(emulator) as emulator_client:
        yield emulator_client


@pytest.fixture
async def telegram_bot(emulator: str) -> AsyncIterator[Bot]:
    bot = Bot(BOT_TOKEN, base_url=f"{emulator}/bot")
    await bot.initialize()
    yield bot
    await bot.shutdown()


class Harness:
    """A dispatcher on a fake clock, and a client in the emulator."""

    def __init__(self, redis: Redis, bot: Bot, client: EmulatorClient) -> None:
        self.clock = FakeClock(local(2030, 3, 28, 10, 15))
        self.redis = redis
        self.store = CaseStore(redis, clock=self.clock)
        self.scheduler = ReminderScheduler(redis, clock=self.clock)
        self.dispatcher = ReminderDispatcher(
            self.scheduler, self.store, bot, SharedTelegramLimits(redis, bot.token)
        )
        self.client = client

    async def linked_case(self, user_id: int = USER_ID) -> str:
        await self.client.send_text(user_id, "hallo")
        case, _token = await self.store.create(
            "GM0193", step=Step.INFO, chat_id=user_id
        )
        await self.scheduler.schedule_case(case.case_id, case.created_at)
        return case.case_id

    async def run_to_next_due(self) -> list[Any]:
        """Move the clock to the earliest queued reminder and dispatch once."""
        queued = await self.redis.zrange(keys.reminders_due(), 0, 0, withscores=True)
        assert queued, "no reminder is queued"
        self.clock.now = max(self.clock.now, queued[0][1])
        return await self.dispatcher.dispatch_once()

    async def bot_texts(self, chat_id: int = USER_ID) -> list[str]:
        messages = await self.client.messages(chat_id)
        return [m.get("text", "") for m in messages if m["from"].get("is_bot")]

    async def reminder_texts(self, chat_id: int = USER_ID) -> list[str]:
        texts = {translate(key) for key in REMINDER_TEXT_KEYS.values()}
        return [text for text in await self.bot_texts(chat_id) if text in texts]


@pytest.fixture
def harness(redis: Redis, telegram_bot: Bot, client: EmulatorClient) -> Harness:
    return Harness(redis, telegram_bot, client)


async def test_three_reminders_then_expiry(harness: Harness) -> None:
    # Invited on Thursday 28 March 2030 at 10:15, before summer time starts.
    case_id = await harness.linked_case()
    sent_at = []
    for _ in range(4):
        outcomes = await harness.run_to_next_due()
        assert [outcome.result for outcome in outcomes] == ["sent"]
        sent_at.append(wall(harness.clock.now))

    assert sent_at == [
        (2030, 4, 2, 10, 15),
        (2030, 4, 7, 10, 15),
        (2030, 4, 11, 10, 15),
        (2030, 4, 17, 10, 15),
    ]
    texts = await harness.bot_texts()
    assert len(texts) == 4
    assert "laatste herinnering" in texts[2]
    case = await harness.store.get(case_id)
    assert case.step is Step.EXPIRED
    assert case.tombstone
    assert await harness.redis.zcard(keys.reminders_due()) == 0
    assert not await harness.redis.exists(keys.reminder_state(case_id))


async def test_finished_case_gets_none(harness: Harness) -> None:
    case_id = await harness.linked_case()
    await harness.store.finish(case_id, Event.CANCEL)
    outcomes = await harness.run_to_next_due()
    assert [outcome.result for outcome in outcomes] == ["dropped"]
    assert await harness.bot_texts() == []
    assert await harness.redis.zcard(keys.reminders_due()) == 0


async def test_due_at_night_waits_for_nine(harness: Harness) -> None:
    case_id = await harness.linked_case()
    await harness.scheduler.pause(case_id)
    await harness.run_to_next_due()
    harness.clock.now = local(2030, 4, 3, 2, 30)
    assert await harness.scheduler.resume(case_id) == [Kind.FIRST]

    outcomes = await harness.dispatcher.dispatch_once()
    assert [outcome.result for outcome in outcomes] == ["deferred"]
    score = await harness.redis.zscore(keys.reminders_due(), f"{case_id}:first")
    assert wall(score) == (2030, 4, 3, 9, 0)
    assert await harness.bot_texts() == []


async def test_paused_case_resumes_later(harness: Harness) -> None:
    case_id = await harness.linked_case()
    await harness.scheduler.pause(case_id)
    outcomes = await harness.run_to_next_due()
    assert [outcome.result for outcome in outcomes] == ["parked"]
    assert await harness.redis.zcard(keys.reminders_due()) == 0

    harness.clock.now += 3600
    await harness.scheduler.resume(case_id)
    outcomes = await harness.dispatcher.dispatch_once()
    assert [outcome.result for outcome in outcomes] == ["sent"]
    assert len(await harness.bot_texts()) == 1


async def test_forbidden_stops_reminders(harness: Harness) -> None:
    case_id = await harness.linked_case()
    await harness.client.block(USER_ID)
    outcomes = await harness.run_to_next_due()
    assert [outcome.result for outcome in outcomes] == ["blocked"]
    state = await harness.scheduler.state(case_id)
    assert state.blocked
    assert Kind.FIRST in state.parked
    assert Kind.FIRST not in state.sent
    assert await harness.redis.zcard(keys.reminders_due()) == 0


async def test_later_button_reminds_next_day(harness: Harness) -> None:
    case_id = await harness.linked_case()
    requested = local(2030, 3, 28, 19, 45)
    due = await harness.scheduler.schedule_later(case_id, requested)
    assert wall(due) == (2030, 3, 29, 19, 45)
    harness.clock.now = due
    outcomes = await harness.dispatcher.dispatch_once()
    assert [outcome.result for outcome in outcomes] == ["sent"]
    assert "herinnering" in (await harness.bot_texts())[0]


# Blocking and unblocking through the running bot.


def registry() -> MunicipalityRegistry:
    return MunicipalityRegistry(
        [Municipality(code="GM0193", name="Zwolle", participates=True)]
    )


async def wait_for_keyspace(
    redis: Redis, key: str, operation: str, action: Any
) -> None:
    """Run ``action`` and wait until Redis reports ``operation`` on ``key``."""
    await redis.config_set("notify-keyspace-events", "Khz")
    pubsub = redis.pubsub()
    await pubsub.subscribe(f"__keyspace@0__:{key}")
    try:
        await action()
        async with asyncio.timeout(WAIT_SECONDS):
            while True:
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=WAIT_SECONDS
                )
                if message is not None and message["data"] == operation:
                    return
    finally:
        await pubsub.aclose()


async def test_blocked_client_resumes_on_message(
    harness: Harness, redis: Redis, redis_server: Any, emulator: str
) -> None:
    settings = BotSettings(
        telegram_token=BOT_TOKEN,
        redis_url=redis_server.url,
        pairing_service_url=f"http://127.0.0.1:{free_port()}",
        service_token="test-service-token-" + "x" * 32,
        api_base_url=f"{emulator}/bot",
        file_base_url=f"{emulator}/file/bot",
        consumer_name="reminder-test-bot",
        poll_timeout=1,
    )
    async with running_bot(settings, redis=redis, registry=registry()) as app:
        # The test's dispatcher on a fake clock sends; the bot's own one,
        # on Redis time, would race it for the same reminders.
        await bot_reminders.stop_in_application(app)
        case_id = await harness.linked_case()
        outcomes = await harness.run_to_next_due()
        assert [outcome.result for outcome in outcomes] == ["sent"]

        state_key = keys.reminder_state(case_id)
        await wait_for_keyspace(
            redis, state_key, "hset", lambda: harness.client.block(USER_ID)
        )
        assert (await harness.scheduler.state(case_id)).blocked
        outcomes = await harness.run_to_next_due()
        assert [outcome.result for outcome in outcomes] == ["parked"]
        assert len(await harness.reminder_texts()) == 1

        async def unblock_and_write() -> None:
            await harness.client.unblock(USER_ID)
            await harness.client.send_text(USER_ID, "ik ben er weer")

        await wait_for_keyspace(redis, keys.reminders_due(), "zadd", unblock_and_write)
        assert not (await harness.scheduler.state(case_id)).blocked
        outcomes = await harness.dispatcher.dispatch_once()
        assert [outcome.result for outcome in outcomes] == ["sent"]
        assert await harness.reminder_texts() == [
            translate("reminder.first"),
            translate("reminder.second"),
        ]
