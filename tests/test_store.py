"""The case store against a real redis-server."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from journey import keys
from journey.steps import Event, Step, TransitionRejected
from journey.store import CaseStore, InvitationInvalid
from journey.tokens import parse_token


async def test_create_sets_ttl_and_hashes_token(redis: Redis) -> None:
    store = CaseStore(redis)
    case, token = await store.create("GM0193", email="client@example.org")
    ttl = await redis.ttl(keys.case(case.case_id))
    raw = await redis.hgetall(keys.case(case.case_id))
    assert 0 < ttl <= keys.INVITATION_TTL_SECONDS
    assert token.secret not in str(raw)
    assert raw["invite_hash"] == token.secret_hash


async def test_invitation_resolves_to_case(redis: Redis) -> None:
    store = CaseStore(redis)
    case, token = await store.create("GM0193")
    found = await store.resolve_invitation(str(token))
    assert found.case_id == case.case_id


@pytest.mark.parametrize(
    ("text", "reason"),
    [("kort", "malformed"), ("x" * 45, "malformed"), ("!" * 44, "malformed")],
)
async def test_malformed_invitation_rejected(
    redis: Redis, text: str, reason: str
) -> None:
    store = CaseStore(redis)
    with pytest.raises(InvitationInvalid) as raised:
        await store.resolve_invitation(text)
    assert raised.value.reason == reason


async def test_wrong_secret_is_unknown(redis: Redis) -> None:
    store = CaseStore(redis)
    _case, token = await store.create("GM0193")
    forged = token.case_id + ("A" * 22 if token.secret != "A" * 22 else "B" * 22)
    with pytest.raises(InvitationInvalid) as raised:
        await store.resolve_invitation(forged)
    assert raised.value.reason == "unknown"


async def test_finished_invitation_says_finished(redis: Redis) -> None:
    store = CaseStore(redis)
    case, token = await store.create("GM0193")
    await store.finish(case.case_id, Event.CANCEL)
    with pytest.raises(InvitationInvalid) as raised:
        await store.resolve_invitation(str(token))
    assert raised.value.reason == "finished"
    assert parse_token(str(token)).case_id == case.case_id


async def test_double_tap_advances_once(redis: Redis) -> None:
    store = CaseStore(redis)
    case, _token = await store.create("GM0193")
    await store.link_chat(case, 42)
    await store.apply(case.case_id, Event.START, expected_step=Step.INFO)

    async def tap() -> bool:
        try:
            await store.apply(
                case.case_id, Event.CONFIRM, expected_step=Step.CHECK_DIGID
            )
        except TransitionRejected:
            return False
        return True

    results = await asyncio.gather(*(tap() for _ in range(20)))
    final = await store.get(case.case_id)
    assert results.count(True) == 1
    assert final.step == Step.CHECK_SMS


async def test_tombstone_drops_personal_fields(redis: Redis) -> None:
    store = CaseStore(redis)
    case, _token = await store.create("GM0193", email="client@example.org")
    await store.link_chat(case, 4242)
    await store.finish(case.case_id, Event.CANCEL)
    raw = await redis.hgetall(keys.case(case.case_id))
    ttl = await redis.ttl(keys.case(case.case_id))
    assert "email" not in raw
    assert "chat_id" not in raw
    assert raw["step"] == Step.CANCELLED
    assert 0 < ttl <= keys.TOMBSTONE_TTL_SECONDS
    assert await redis.exists(keys.chat(4242)) == 0
