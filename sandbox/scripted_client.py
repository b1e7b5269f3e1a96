"""A scripted client who walks the whole journey through the emulator.

It plays the person in the chat (taps and commands through the emulator's
testing API) and the Ockto app on the phone (through the app simulator). The
sandbox's headless mode prints its transcript; the end-to-end tests assert
on it. Buttons are found by their callback data (step and action), not by
their label, so a reworded catalog does not break the script.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bot.i18n import translate
from handlers.callback_data import Action, decode
from handlers.render import render_progress
from journey.sources import SOURCES
from journey.steps import CHECKLIST_STEPS, PARTNER_CHECKLIST_STEPS, Step
from journey.store import CaseStore
from sandbox.app_simulator import OcktoAppSimulator, synthetic_package
from sandbox.stack import Invitation, SandboxStack
from sandbox.telegram_emulator import EmulatorClient

logger = logging.getLogger(__name__)

STEP_WAIT_SECONDS = 15.0
"""Upper bound for one reply of the bot; a healthy run needs milliseconds."""

Message = dict[str, Any]


class JourneyFailed(RuntimeError):
    """Raised when the bot does not send what the next step needs."""


@dataclass
class Transcript:
    """The chat's events in order, with the measurements of the script."""

    lines: list[str] = field(default_factory=list)
    taps: int = 0
    """Buttons tapped and commands sent by the client."""
    qr_png: bytes = b""
    qr_text: str = ""
    """The text decoded from the QR code."""
    app_link: str = ""
    """The URL behind the "open the app" button of the QR message."""
    progress_message_id: int | None = None
    progress_edits: int = 0
    progress_messages_sent: int = 0
    confirmation_code: str = ""
    package: bytes = b""
    delivered_text: str = ""

    def bot(self, text: str) -> None:
        """Record a message of the bot."""
        self.lines.append(f"bot:    {text}")

    def client(self, text: str) -> None:
        """Record an action of the client."""
        self.lines.append(f"client: {text}")

    def app(self, text: str) -> None:
        """Record an action of the app on the phone."""
        self.lines.append(f"app:    {text}")

    def render(self) -> str:
        """Return the transcript as text, one line per action."""
        return "\n".join(self.lines)


def decode_qr(png: bytes) -> str:
    """Return the text of the QR code in a PNG image.

    Raises:
        JourneyFailed: no QR code was found in the image.
    """
    import zxingcpp
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    results = zxingcpp.read_barcodes(image)
    if not results:
        raise JourneyFailed("no readable QR code found in the QR photo")
    return str(results[0].text)


class ScriptedClient:
    """One person in the chat plus their phone with the Ockto app."""

    def __init__(
        self,
        stack: SandboxStack,
        client: EmulatorClient,
        user_id: int,
        *,
        step_timeout: float = STEP_WAIT_SECONDS,
        app_session: aiohttp.ClientSession | None = None,
    ) -> None:
        """Prepare a client; nothing is sent yet.

        Args:
            stack: the running sandbox.
            client: the emulator's testing API, shared by many clients.
            user_id: the Telegram user id this client plays.
            step_timeout: seconds to wait for each reply of the bot; a load
                test with Telegram's 30 messages a second needs far more.
            app_session: the HTTP session of the phone, for example bound to
                its own loopback address so that the per-address claim limit
                counts one phone per client.
        """
        self._stack = stack
        self._client = client
        self.user_id = user_id
        self._step_timeout = step_timeout
        self._app_session = app_session
        self.transcript = Transcript()
        self._progress_title = translate("progress.title")

    async def play(
        self,
        invitation: Invitation,
        *,
        partner: bool = False,
        package: bytes | None = None,
        consent: bool = True,
    ) -> Transcript:
        """Walk from the invitation link to the delivery (or the refusal)."""
        transcript = self.transcript
        transcript.package = package or synthetic_package("sandbox-run")

        await self.say(f"/start {invitation.token}")
        await self.tap_action(Step.INFO, Action.START)
        for step in CHECKLIST_STEPS:
            await self.tap_action(step, Action.YES)
        await self.tap_action(
            Step.PARTNER_QUESTION, Action.YES if partner else Action.NO
        )
        if partner:
            for step in PARTNER_CHECKLIST_STEPS:
                await self.tap_action(step, Action.YES)
        await self.tap_action(Step.APP, Action.HAVE_APP)

        photo = await self.wait_for(_is_photo, "the QR photo")
        await self._read_qr(photo)

        async with OcktoAppSimulator(
            self._stack.service_url, session=self._app_session
        ) as app:
            claim = await app.claim(transcript.qr_text)
            transcript.confirmation_code = claim.confirmation_code
            transcript.app("scanned the QR code and claimed it")
            await self.wait_for(_is_text, "the paired confirmation")

            await self._fetch(app, invitation, "client")
            if partner:
                await self._fetch(app, invitation, "partner")
                await app.partner_done()
                transcript.app("partner finished")
            await app.review_ready()
            transcript.app("client reviewed the data")
            upload = await app.upload_package(transcript.package)
            transcript.app(f"uploaded the package ({upload.size} bytes)")

        await self.tap_action(Step.CONSENT, Action.YES if consent else Action.NO)
        if not consent:
            await self.tap_action(Step.CONSENT, Action.REFUSE)
            expected_refusal = translate("refused.body")
            final = await self.wait_for(
                lambda message: _text(message) == expected_refusal,
                "the refusal confirmation",
            )
            transcript.delivered_text = _text(final)
            return transcript
        if partner:
            await self.tap_action(Step.CONSENT_PARTNER, Action.YES)

        receiver = self._stack.receiver(invitation.municipality_code)
        await receiver.wait_for(1, wait_seconds=self._step_timeout)
        name = self._stack.registry.get(invitation.municipality_code)
        expected = translate(
            "delivered.body", municipality=name.name if name is not None else ""
        )
        final = await self.wait_for(
            lambda message: _text(message) == expected, "the delivery confirmation"
        )
        transcript.delivered_text = _text(final)
        return transcript

    async def say(self, text: str) -> None:
        """Send a text or command as the client."""
        await self._client.send_text(self.user_id, text)
        self.transcript.client(text)
        self.transcript.taps += 1

    async def tap_action(self, step: Step, action: Action) -> Message:
        """Wait for the message with this step's button and tap it."""
        message = await self.wait_for(
            lambda candidate: _button(candidate, step, action) is not None,
            f"a {action.value} button of step {step.value}",
        )
        button = _button(message, step, action)
        assert button is not None
        await self._client.tap(
            self.user_id, message["message_id"], button["callback_data"]
        )
        self.transcript.client(f"[{button['text']}]")
        self.transcript.taps += 1
        return message

    async def wait_for(
        self, predicate: Any, what: str, *, edits_count: bool = False
    ) -> Message:
        """Wait for the next sent message that ``predicate`` accepts.

        With ``edits_count`` an edited message is offered to ``predicate`` too.
        """

        def accept(event: dict[str, Any]) -> bool:
            message = event.get("message")
            if event["kind"] == "edited" and message is not None:
                self._note_edit(message)
                return edits_count and bool(predicate(message))
            if event["kind"] != "sent" or message is None:
                return False
            self.transcript.bot(_text(message) or "[photo]")
            self._note_sent(message)
            return bool(predicate(message))

        try:
            event = await self._client.wait_for(
                self.user_id, accept, timeout=self._step_timeout
            )
        except TimeoutError as error:
            raise JourneyFailed(f"the bot did not send {what}") from error
        return dict(event["message"])

    async def _read_qr(self, photo: Message) -> None:
        transcript = self.transcript
        largest = max(photo["photo"], key=lambda size: size.get("width", 0))
        transcript.qr_png = await self._client.file_bytes(largest["file_id"])
        transcript.qr_text = decode_qr(transcript.qr_png)
        for row in photo.get("reply_markup", {}).get("inline_keyboard", []):
            for button in row:
                # The first URL button opens the app; the next one opens the
                # QR web page for a computer.
                if "url" in button and not transcript.app_link:
                    transcript.app_link = button["url"]

    async def _fetch(
        self, app: OcktoAppSimulator, invitation: Invitation, person: str
    ) -> None:
        await app.digid_login(person)
        self.transcript.app(f"{person} logged in with DigiD")
        for source in SOURCES:
            await app.fetch_source(source, person)
            self.transcript.app(f"{person} fetched {source}")

        # The service stores the progress before it responds, so the case now
        # holds the final state; the script goes on once the chat shows it.
        case = await CaseStore(self._stack.redis).get(invitation.case_id)
        expected = render_progress(case)
        message = await self.wait_for(
            lambda candidate: _text(candidate) == expected,
            f"the progress of the {person} with every source",
            edits_count=True,
        )
        self.transcript.progress_message_id = message["message_id"]

    def _note_sent(self, message: Message) -> None:
        if _text(message).startswith(self._progress_title):
            self.transcript.progress_messages_sent += 1
            if self.transcript.progress_message_id is None:
                self.transcript.progress_message_id = message["message_id"]

    def _note_edit(self, message: Message) -> None:
        if message.get("message_id") == self.transcript.progress_message_id:
            self.transcript.progress_edits += 1
            self.transcript.lines.append(f"bot:    (updated) {_text(message)}")


def _button(message: Message, step: Step, action: Action) -> dict[str, Any] | None:
    for row in message.get("reply_markup", {}).get("inline_keyboard", []):
        for button in row:
            data = decode(button.get("callback_data"))
            if data is not None and data.scope == step.value and data.action is action:
                return dict(button)
    return None


def _is_photo(message: Message) -> bool:
    return bool(message.get("photo"))


def _is_text(message: Message) -> bool:
    return "text" in message


def _text(message: Message) -> str:
    return str(message.get("text") or message.get("caption") or "")
