"""The bot process killed with SIGKILL at every step of the journey.

A real ``python -m bot`` runs against the emulator and the pairing service of
the sandbox stack. Before each action of the client the test kills it, checks
that the case in Redis is still at the same step, starts a new one and lets
the client go on. All state is in Redis, so nothing of the journey is lost
with the process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from bot.i18n import translate
from handlers.callback_data import Action
from journey.steps import CHECKLIST_STEPS, PARTNER_CHECKLIST_STEPS, Step
from journey.store import CaseStore
from sandbox.redis_server import RedisServer
from sandbox.stack import SandboxStack, running_stack
from sandbox.telegram_emulator import EmulatorClient, RateLimits, emulator_state
from tests.bot_process import BotProcess, bot_environment
from tests.chat_driver import Chat, Message, message_text, walk_journey

USER_ID = 626262


@pytest.fixture
async def stack(redis: Redis, redis_server: RedisServer) -> AsyncIterator[SandboxStack]:
    async with running_stack(
        redis_url=redis_server.url,
        rate_limits=RateLimits.disabled(),
        start_bot=False,
    ) as running:
        yield running


@pytest.fixture
async def bot(stack: SandboxStack) -> AsyncIterator[BotProcess]:
    process = BotProcess(bot_environment(stack, "restart-test"))
    await process.start()
    yield process
    await process.stop()


async def test_journey_survives_sigkill_at_every_step(
    stack: SandboxStack, bot: BotProcess
) -> None:
    store = CaseStore(stack.redis)
    invitation = await stack.invite()
    restarted: list[Step] = []

    async def crash_and_restart(step: Step, _message: Message | None) -> None:
        await bot.kill()
        assert (await store.get(invitation.case_id)).step is step
        await bot.start()
        assert (await store.get(invitation.case_id)).step is step
        restarted.append(step)

    assert stack.emulator_url is not None
    async with EmulatorClient(stack.emulator_url) as emulator:
        await walk_journey(
            stack, Chat(emulator, USER_ID), invitation, before=crash_and_restart
        )

    assert len(stack.receiver(invitation.municipality_code).deliveries) == 1
    assert (await store.get(invitation.case_id)).step is Step.DELIVERED
    # Every open step of the journey with a partner saw a crash and a restart.
    assert restarted == [
        Step.INVITED,
        Step.INFO,
        *CHECKLIST_STEPS,
        Step.PARTNER_QUESTION,
        *PARTNER_CHECKLIST_STEPS,
        Step.APP,
        Step.QR,
        Step.FETCHING,
        Step.CONSENT,
        Step.CONSENT_PARTNER,
    ]


async def test_handled_but_unconfirmed_tap_moves_case_once(
    stack: SandboxStack, bot: BotProcess
) -> None:
    # PTB confirms an update with the offset of its next getUpdates. A bot
    # killed after it handled an update but before that call gets the update
    # again after the restart; the compare-and-set on the step must reject it.
    store = CaseStore(stack.redis)
    invitation = await stack.invite()
    assert stack.emulator_url is not None
    assert stack.emulator_app is not None
    state = emulator_state(stack.emulator_app)

    async with EmulatorClient(stack.emulator_url) as emulator:
        chat = Chat(emulator, USER_ID)
        await emulator.send_text(USER_ID, f"/start {invitation.token}")
        message = await chat.button_message(Step.INFO, Action.START)

        # Frozen, the bot cannot confirm the tap, so the emulator still holds it.
        bot.pause()
        update_id = await chat.tap(message, Step.INFO, Action.START)
        pending = [update for update in state.updates if update.update_id == update_id]
        assert len(pending) == 1
        bot.resume()

        await chat.button_message(Step.CHECK_DIGID, Action.YES)
        moved = await store.get(invitation.case_id)
        assert moved.step is Step.CHECK_DIGID

        # The crash comes before the confirmation: the update is back in the
        # queue, as if the dead process had never called getUpdates again.
        await bot.kill()
        state.updates.insert(0, pending[0])
        await bot.start()

        old_button = translate("fallback.old_button")
        await chat.next_message(lambda m: old_button in message_text(m))

    after = await store.get(invitation.case_id)
    assert after.step is Step.CHECK_DIGID
    assert after.version == moved.version
    assert all(update.update_id != update_id for update in state.updates)
