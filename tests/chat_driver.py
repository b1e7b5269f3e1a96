"""A journey driver that lets a test act before every client action.

``walk_journey`` taps through the chat and plays the Ockto app like
``sandbox.scripted_client.ScriptedClient``, but calls ``before(step, message)``
ahead of each action, so a test can kill the bot or Redis at exactly that step.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bot.i18n import translate
from handlers.callback_data import Action, decode
from handlers.render import render_progress
from journey.sources import SOURCES
from journey.steps import CHECKLIST_STEPS, PARTNER_CHECKLIST_STEPS, Step
from journey.store import CaseStore
from sandbox.app_simulator import OcktoAppSimulator, synthetic_package
from sandbox.scripted_client import decode_qr
from sandbox.stack import Invitation, SandboxStack
from sandbox.telegram_emulator import EmulatorClient

REPLY_TIMEOUT_SECONDS = 20.0
"""Upper bound for one reply; it covers a bot process that has just started."""

Message = dict[str, Any]
BeforeAction = Callable[[Step, Message | None], Awaitable[None]]


class Chat:
    """One client's side of the chat, read through the emulator's testing API."""

    def __init__(self, emulator: EmulatorClient, user_id: int) -> None:
        self.emulator = emulator
        self.user_id = user_id

    async def next_message(self, predicate: Any, *, edits: bool = False) -> Message:
        """Wait for the next sent (or, with ``edits``, edited) matching message."""

        def accept(event: dict[str, Any]) -> bool:
            message = event.get("message")
            if message is None:
                return False
            if event["kind"] == "sent" or (edits and event["kind"] == "edited"):
                return bool(predicate(message))
            return False

        event = await self.emulator.wait_for(
            self.user_id, accept, timeout=REPLY_TIMEOUT_SECONDS
        )
        return dict(event["message"])

    async def text_message(self, text: str) -> Message:
        """Wait for a message that contains ``text``."""
        return await self.next_message(lambda message: text in message_text(message))

    async def button_message(self, step: Step, action: Action) -> Message:
        """Wait for the message that carries the button of ``step`` and ``action``."""
        return await self.next_message(
            lambda message: find_button(message, step, action) is not None
        )

    async def tap(self, message: Message, step: Step, action: Action) -> int:
        """Tap the button of ``step`` and ``action``; return the update id."""
        button = find_button(message, step, action)
        assert button is not None
        tapped = await self.emulator.tap(
            self.user_id, message["message_id"], button["callback_data"]
        )
        return int(tapped["update_id"])


def find_button(message: Message, step: Step, action: Action) -> dict[str, Any] | None:
    """Return the inline button of ``step`` and ``action`` in ``message``, if any."""
    for row in message.get("reply_markup", {}).get("inline_keyboard", []):
        for button in row:
            data = decode(button.get("callback_data"))
            if data is not None and data.scope == step.value and data.action is action:
                return dict(button)
    return None


def message_text(message: Message) -> str:
    """Return the text or caption of a message."""
    return str(message.get("text") or message.get("caption") or "")


async def _nothing(_step: Step, _message: Message | None) -> None:
    return None


async def walk_journey(
    stack: SandboxStack,
    chat: Chat,
    invitation: Invitation,
    *,
    partner: bool = True,
    before: BeforeAction = _nothing,
    package: bytes | None = None,
) -> None:
    """Walk from the invitation link to the delivery confirmation.

    ``before`` runs ahead of each client action with the step the case is in
    and the message whose button is tapped next (None for a command or an app
    action).
    """
    store = CaseStore(stack.redis)
    case_id = invitation.case_id

    await before(Step.INVITED, None)
    await chat.emulator.send_text(chat.user_id, f"/start {invitation.token}")

    taps = [
        (Step.INFO, Action.START),
        *[(step, Action.YES) for step in CHECKLIST_STEPS],
        (Step.PARTNER_QUESTION, Action.YES if partner else Action.NO),
        *([(step, Action.YES) for step in PARTNER_CHECKLIST_STEPS] if partner else []),
        (Step.APP, Action.HAVE_APP),
    ]
    for step, action in taps:
        message = await chat.button_message(step, action)
        await before(step, message)
        await chat.tap(message, step, action)

    photo = await chat.next_message(lambda message: bool(message.get("photo")))
    largest = max(photo["photo"], key=lambda size: size.get("width", 0))
    qr_text = decode_qr(await chat.emulator.file_bytes(largest["file_id"]))
    await before(Step.QR, photo)

    async with OcktoAppSimulator(stack.service_url) as app:
        await app.claim(qr_text)
        await chat.text_message(translate("paired.body"))

        await before(Step.FETCHING, None)
        for person in ("client", "partner") if partner else ("client",):
            await app.digid_login(person)
            for source in SOURCES:
                await app.fetch_source(source, person)
            progress = render_progress(await store.get(case_id))
            await chat.next_message(
                lambda message, expected=progress: message_text(message) == expected,
                edits=True,
            )
        if partner:
            await app.partner_done()
        await app.review_ready()
        await app.upload_package(package or synthetic_package("chat-driver"))

    for step in (Step.CONSENT, Step.CONSENT_PARTNER) if partner else (Step.CONSENT,):
        message = await chat.button_message(step, Action.YES)
        await before(step, message)
        await chat.tap(message, step, Action.YES)

    await stack.receiver(invitation.municipality_code).wait_for(
        1, wait_seconds=REPLY_TIMEOUT_SECONDS
    )
    name = stack.registry.get(invitation.municipality_code)
    await chat.text_message(
        translate("delivered.body", municipality=name.name if name else "")
    )
