"""Random updates in every step: no crash, no rejected send, no skipped step.

Hypothesis draws a step, a language, a partner flag and a short sequence of
updates: free text up to Telegram's 4096 characters, commands, taps with
forged callback data, media, edits and group messages. Each example plays a
new user whose case is written straight into the drawn step. Every update
is followed by a wait for the bot's first reply, so the step read from Redis
afterwards is the step that update left.

One bot, one emulator and one pairing service serve the whole module, as in
``tests/test_conversation_branches.py``. The module does not use the
``redis`` fixture, because that empties the database under the running bot's
event consumer group.
"""

from __future__ import annotations

import itertools
import logging
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from bot.application import BotApplication
from handlers.callback_data import (
    SCOPE_HELP,
    SCOPE_LANGUAGE,
    SCOPE_STOP,
    Action,
    case_tag,
)
from journey.steps import (
    PARTNER_CHECKLIST_STEPS,
    TERMINAL_STEPS,
    Step,
    is_allowed,
    next_step,
)
from journey.steps import Event as JourneyEvent
from journey.store import CaseStore
from sandbox.telegram_emulator import EmulatorClient
from sandbox.telegram_emulator.limits import (
    MAX_CALLBACK_DATA_BYTES,
    MAX_CAPTION_LENGTH,
    MAX_MESSAGE_TEXT_LENGTH,
)
from tests.test_bot_conversation import WAIT_SECONDS

_user_ids = itertools.count(60_000)

MAX_EXAMPLES = 60
"""Examples per run. Hypothesis measured 0 to 165 ms for a typical example
on a 2-core machine, so the run stays within a few seconds."""

MAX_UPDATES_PER_EXAMPLE = 3
"""Updates after the opening /status. More would run into the bot's
per-chat send limit and slow every example down to seconds."""

OPEN_STEPS = [
    step for step in Step if step not in TERMINAL_STEPS and step is not Step.INVITED
]
"""Steps a chat can be in; ``invited`` has no chat yet."""

PARTNER_STEPS = frozenset({*PARTNER_CHECKLIST_STEPS, Step.CONSENT_PARTNER})

COMMANDS = [
    "/start",
    "/status",
    "/hulp",
    "/help",
    "/stop",
    "/taal",
    "/language",
    "/onbekend",
    "/start@gezondverzekerd_bot",
]
"""Commands the bot handles, one it does not, and one addressed by username."""

MEDIA_KINDS = ["sticker", "photo", "voice", "document", "contact", "location"]

GROUP_KINDS = ["text", "command", "sticker", "photo"]
"""Message kinds sent in a group. Edits in groups are left out, because the
bot ignores them by design, so no reply marks the end of their handling."""

SCOPES = [
    *(step.value for step in Step),
    SCOPE_STOP,
    SCOPE_HELP,
    SCOPE_LANGUAGE,
    "municipality",
]

_PART_ALPHABET = string.ascii_letters + string.digits + "_"


class ErrorRecords(logging.Handler):
    """A handler that keeps every record at ERROR or above, from any logger."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def error_records() -> Iterator[ErrorRecords]:
    handler = ErrorRecords()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


# Strategies.


@dataclass(frozen=True)
class RandomUpdate:
    """One update to send: its kind and what it carries."""

    kind: str
    """text, command, tap, media, edit or group."""
    text: str = ""
    media: str = ""
    data: str = ""
    """Callback data of a tap; ``{tag}`` is replaced by the case's own tag."""
    caption: str = ""


texts = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=200),
    st.text(
        st.characters(exclude_categories=("Cs",)),
        min_size=MAX_MESSAGE_TEXT_LENGTH - 100,
        max_size=MAX_MESSAGE_TEXT_LENGTH,
    ),
    st.just("x" * MAX_MESSAGE_TEXT_LENGTH),
)
"""Short text of any characters, and text at or just below Telegram's limit."""

commands = st.one_of(
    st.sampled_from(COMMANDS),
    st.builds(
        lambda command, argument: f"{command} {argument}",
        st.sampled_from(COMMANDS),
        st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=80),
    ),
)

parts = st.text(_PART_ALPHABET, min_size=1, max_size=16)
"""One part of callback data in the format the bot builds."""


def _fits_callback_limit(data: str) -> bool:
    return 0 < len(data.encode("utf-8")) <= MAX_CALLBACK_DATA_BYTES


forged_data = st.one_of(
    # The bot's own format, for the case's own tag or another one.
    st.builds(
        lambda scope, tag, action: f"{scope}:{tag}:{action}",
        st.sampled_from(SCOPES),
        st.one_of(st.just("{tag}"), parts),
        st.one_of(st.sampled_from([action.value for action in Action]), parts),
    ),
    # Anything Telegram may deliver: up to 64 bytes of any text.
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=64),
).filter(lambda data: _fits_callback_limit(data.replace("{tag}", "ffff")))

updates = st.one_of(
    st.builds(RandomUpdate, kind=st.just("text"), text=texts),
    st.builds(RandomUpdate, kind=st.just("command"), text=commands),
    st.builds(RandomUpdate, kind=st.just("tap"), data=forged_data),
    st.builds(
        RandomUpdate,
        kind=st.just("media"),
        media=st.sampled_from(MEDIA_KINDS),
        caption=st.text(max_size=MAX_CAPTION_LENGTH),
    ),
    st.builds(RandomUpdate, kind=st.just("edit"), text=texts),
    st.builds(
        RandomUpdate,
        kind=st.just("group"),
        media=st.sampled_from(GROUP_KINDS),
        text=st.one_of(texts, commands),
    ),
)


# Driving the chat.


def _is_reply(event: dict[str, Any]) -> bool:
    return event["kind"] in ("sent", "edited")


async def _reply(client: EmulatorClient, chat_id: int) -> dict[str, Any]:
    """Wait for the bot's next message in ``chat_id`` and return it."""
    event = await client.wait_for(chat_id, _is_reply, timeout=WAIT_SECONDS)
    return dict(event["message"])


async def _send_media(
    client: EmulatorClient, user_id: int, update: RandomUpdate
) -> None:
    fields: dict[str, Any] = {}
    if update.media == "contact":
        fields["phone_number"] = "+31612345678"
    elif update.media == "location":
        fields.update(latitude=52.5, longitude=6.09)
    elif update.caption and update.media in ("photo", "voice", "document"):
        fields["caption"] = update.caption
    await client.send(user_id, update.media, **fields)


async def _send_in_group(
    client: EmulatorClient, user_id: int, update: RandomUpdate, groups: set[int]
) -> None:
    group_id = -1_000_000 - user_id
    extra = {"chat_type": "group", "chat_id": group_id}
    if group_id not in groups:
        # Privacy mode lets only commands reach a bot that is a plain member.
        # A first command creates the group, and admin rights then let
        # every later message through, as Telegram does for administrators.
        await client.send_text(user_id, "/status", **extra)
        await _reply(client, group_id)
        await client.set_bot_member(group_id, "administrator")
        groups.add(group_id)
    if update.media in ("text", "command"):
        text = update.text
        if update.media == "command" and not text.startswith("/"):
            text = ("/" + text)[:MAX_MESSAGE_TEXT_LENGTH]
        await client.send_text(user_id, text, **extra)
    else:
        await client.send(user_id, update.media, **extra)
    await _reply(client, group_id)


async def send_update(
    client: EmulatorClient,
    user_id: int,
    update: RandomUpdate,
    *,
    bot_message_id: int,
    tag: str,
    groups: set[int],
) -> None:
    """Send ``update`` as ``user_id`` and wait until the bot has replied to it."""
    if update.kind in ("text", "command"):
        await client.send_text(user_id, update.text)
    elif update.kind == "tap":
        data = update.data.replace("{tag}", tag)
        await client.tap(user_id, bot_message_id, data, force=True)
    elif update.kind == "media":
        await _send_media(client, user_id, update)
    elif update.kind == "edit":
        sent = await client.send_text(user_id, "hallo")
        await _reply(client, user_id)
        await client.edit(user_id, sent["message_id"], update.text)
    elif update.kind == "group":
        await _send_in_group(client, user_id, update, groups)
        return
    else:
        raise ValueError(f"unknown update kind {update.kind!r}")
    await _reply(client, user_id)


def moved_at_most_once(before: Step, after: Step, *, has_partner: bool) -> bool:
    """Tell whether ``after`` is ``before`` or one allowed transition further."""
    if after is before:
        return True
    for event in JourneyEvent:
        if not is_allowed(before, event, has_partner=has_partner):
            continue
        if next_step(before, event, has_partner=has_partner) is after:
            return True
    return False


def _failed_sends(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Telegram rejects a second removal of a message's buttons (a double tap,
    # where both callback queries carry the buttons) with "message is not
    # modified". The bot expects that error and goes on.
    return [
        call
        for call in calls
        if not call["ok"]
        and 400 <= (call["error_code"] or 0) < 500
        and "message is not modified" not in (call.get("description") or "")
    ]


# The property.


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    # Shrinking replays a failing example hundreds of times, and a hung reply
    # costs a full wait each time, so a failure reports the example unshrunk.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    step=st.sampled_from(OPEN_STEPS),
    language=st.sampled_from(["nl", "en"]),
    has_partner=st.booleans(),
    sequence=st.lists(updates, min_size=1, max_size=MAX_UPDATES_PER_EXAMPLE),
)
async def test_random_updates_break_nothing(
    application: BotApplication,
    emulator_client: EmulatorClient,
    module_redis: Redis,
    error_records: ErrorRecords,
    step: Step,
    language: str,
    has_partner: bool,
    sequence: list[RandomUpdate],
) -> None:
    # pytest-asyncio hides the drawn arguments in the failure report, so
    # note() prints them instead.
    note(f"step={step} language={language} has_partner={has_partner}")
    note(f"sequence={sequence!r}")
    store = CaseStore(module_redis)
    user_id = next(_user_ids)
    calls_before = len(await emulator_client.calls())
    errors_before = len(error_records.records)

    case, _token = await store.create(
        "GM0193", language=language, step=step, chat_id=user_id
    )
    partner = has_partner or step in PARTNER_STEPS
    if partner:
        case = await store.update(case.case_id, {"has_partner": True})

    # The opening /status gives the chat a bot message to tap buttons on.
    await emulator_client.send_text(user_id, "/status")
    status = await _reply(emulator_client, user_id)
    tag = case_tag(case)

    steps_seen = [case.step]
    groups: set[int] = set()
    for update in sequence:
        await send_update(
            emulator_client,
            user_id,
            update,
            bot_message_id=status["message_id"],
            tag=tag,
            groups=groups,
        )
        current = await store.find(case.case_id)
        after = current.step if current is not None else steps_seen[-1]
        assert moved_at_most_once(steps_seen[-1], after, has_partner=partner), (
            f"{update.kind} moved the case from {steps_seen[-1]} to {after}"
        )
        steps_seen.append(after)

    new_errors = error_records.records[errors_before:]
    assert [record.getMessage() for record in new_errors] == []
    new_calls = (await emulator_client.calls())[calls_before:]
    assert _failed_sends(new_calls) == []
