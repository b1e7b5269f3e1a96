"""A full journey leaves no secret and no personal data in the logs.

The logs are set up as both ``__main__`` modules set them up at
``LOG_LEVEL=DEBUG``, the most an operator can switch on: the ``key=value``
formatter, the bot-token filter and the level caps of
``journey.logging_setup``, and the service's route access log. The scan
reads the formatted lines, as an operator's log collector would get them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import secrets
from collections.abc import Iterator

from redis.asyncio import Redis

from bot.i18n import translate
from journey.logging_setup import configure_logging
from pairing_service.typed_codes import ALPHABET
from sandbox.app_simulator import synthetic_package
from sandbox.redis_server import RedisServer
from sandbox.scripted_client import STEP_WAIT_SECONDS, ScriptedClient, Transcript
from sandbox.stack import (
    EMULATOR_BOT_TOKEN,
    Invitation,
    SandboxStack,
    running_stack,
)
from sandbox.telegram_emulator import EmulatorClient, RateLimits
from tests.test_bot_conversation import FAST_SEND_LIMITS

USER_ID = 5_938_271_604
"""A Telegram user id long enough not to appear in a log by chance."""

TEST_ONLY_LOGGERS = ("sandbox", "municipality_kit", "tests")
"""The emulator, the app simulator and the municipality's receiver run in the
test process but not in production, so their lines are not scanned."""

_TOKEN_LIKE = re.compile(r"[A-Za-z0-9_-]{40,}")
"""Invitation tokens, pairing codes and session tokens are 44 URL-safe
characters, so any run this long is a token the scan was not given by name."""

_TYPED_CODE = re.compile(rf"[{ALPHABET}]{{4}}-[{ALPHABET}]{{4}}")

_LOGGER_FIELD = re.compile(r"\blogger=(\S+)")

_CAPPED_LOGGERS = ("httpx", "httpcore", "telegram")
"""Loggers whose level ``configure_logging`` sets; restored after the test."""


@contextlib.contextmanager
def production_logging() -> Iterator[io.StringIO]:
    """Send every record through the production setup into a buffer.

    ``force`` adds the handler next to pytest's own; on exit the root
    logger's handlers and the capped loggers' levels are put back.
    """
    root = logging.getLogger()
    saved_handlers = list(root.handlers)
    saved_level = root.level
    saved_levels = {name: logging.getLogger(name).level for name in _CAPPED_LOGGERS}
    buffer = io.StringIO()
    configure_logging(logging.DEBUG, stream=buffer, force=True)
    try:
        yield buffer
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


def production_lines(text: str) -> list[str]:
    """Return the log lines of production code, without the test tools' lines.

    A traceback line has no ``logger=`` field and belongs to the record above
    it, so it is kept or dropped with that record.
    """
    kept: list[str] = []
    keep = True
    for line in text.splitlines():
        match = _LOGGER_FIELD.search(line)
        if line.startswith("ts=") and match is not None:
            name = match.group(1)
            keep = not any(
                name == prefix or name.startswith(prefix + ".")
                for prefix in TEST_ONLY_LOGGERS
            )
        if keep:
            kept.append(line)
    return kept


async def say_and_wait(client: EmulatorClient, text: str) -> None:
    """Send ``text`` as the client and wait for the bot's reply to it."""
    await client.send_text(USER_ID, text)
    await client.wait_for(
        USER_ID, lambda event: event["kind"] == "sent", timeout=STEP_WAIT_SECONDS
    )


async def play_with_free_text(
    stack: SandboxStack, *, email: str, marker: str, free_texts: tuple[str, str, str]
) -> tuple[Invitation, Transcript, str]:
    """Play the journey with a partner, with free text before and after it.

    Returns the invitation, the transcript and the text of every message in
    the chat, which contains the typed pairing code.
    """
    before, after, argument = free_texts
    invitation = await stack.invite(email=email)
    assert stack.emulator_url is not None
    async with EmulatorClient(stack.emulator_url) as emulator:
        # Without a case, typed text is read as a municipality name.
        await say_and_wait(emulator, before)
        client = ScriptedClient(stack, emulator, USER_ID)
        transcript = await client.play(
            invitation, partner=True, package=synthetic_package(marker)
        )
        await say_and_wait(emulator, after)
        await say_and_wait(emulator, f"/onbekend {argument}")
        chat_text = "\n".join(
            str(message.get("text") or message.get("caption") or "")
            for message in await emulator.messages(USER_ID)
        )
    return invitation, transcript, chat_text


async def test_journey_logs_no_secrets(redis: Redis, redis_server: RedisServer) -> None:
    marker = f"PACKAGE-{secrets.token_hex(12)}"
    email = f"privacy-{secrets.token_hex(6)}@example.org"
    phrase_before = f"woonplaats-{secrets.token_hex(6)}"
    phrase_after = f"bedankt-{secrets.token_hex(6)}"
    command_argument = f"argument-{secrets.token_hex(6)}"

    with production_logging() as production_log:
        async with running_stack(
            redis_url=redis_server.url,
            rate_limits=RateLimits.disabled(),
            send_limits=FAST_SEND_LIMITS,
            access_log=True,
        ) as stack:
            invitation, transcript, chat_text = await play_with_free_text(
                stack,
                email=email,
                marker=marker,
                free_texts=(phrase_before, phrase_after, command_argument),
            )
            service_token = stack.service_token

    assert transcript.delivered_text == translate(
        "delivered.body", municipality="Zwolle"
    )
    pairing_code = transcript.qr_text.rsplit("#", 1)[-1]
    typed_codes = _TYPED_CODE.findall(chat_text)
    log = "\n".join(production_lines(production_log.getvalue()))

    # The scan only means something if the run logged what production logs.
    assert "case created" in log
    assert "route=/v1/cases" in log
    assert "logger=handlers." in log

    secrets_in_run = {
        "invitation token": invitation.token,
        "invitation secret": invitation.token[22:],
        "case id": invitation.case_id,
        "pairing code": pairing_code,
        "bot token": EMULATOR_BOT_TOKEN,
        "bot token secret": EMULATOR_BOT_TOKEN.split(":", 1)[1],
        "service token": service_token,
        "e-mail address": email,
        "package content": marker,
        "client text before the case": phrase_before,
        "client text after delivery": phrase_after,
        "command argument": command_argument,
    }
    for name, value in secrets_in_run.items():
        assert len(value) >= 8, name
        assert value not in log, f"{name} found in the log"

    assert len(pairing_code) == 44
    assert typed_codes, "the QR message shows no typed code"
    for typed_code in typed_codes:
        assert typed_code not in log
        assert typed_code.replace("-", "") not in log
    assert transcript.confirmation_code not in log
    assert re.search(rf"(?<!\d){USER_ID}(?!\d)", log) is None
    assert "@" + email.split("@", 1)[1] not in log
    assert _TOKEN_LIKE.findall(log) == []


async def send_raw(url: str, request: bytes) -> bytes:
    """Send ``request`` bytes to the HTTP server at ``url`` and return its reply."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    reply = await reader.read()
    writer.close()
    await writer.wait_closed()
    return reply


async def test_rejected_request_logs_no_bytes(redis_server: RedisServer) -> None:
    email = f"privacy-{secrets.token_hex(6)}@example.org"
    code = secrets.token_urlsafe(33)
    broken_chunks = (
        b"POST /app/v1/claim HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
        + f'{{"code": "{code}", "email": "{email}"}}'.encode()
    )
    long_header = (
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"X-Note: {email} {'a' * 9000}\r\n\r\n".encode()
    )

    with production_logging() as production_log:
        async with running_stack(
            redis_url=redis_server.url, start_bot=False, access_log=True
        ) as stack:
            replies = [
                await send_raw(stack.service_url, broken_chunks),
                await send_raw(stack.service_url, long_header),
            ]
    log = "\n".join(production_lines(production_log.getvalue()))

    for reply in replies:
        assert reply.startswith(b"HTTP/1.0 400 Bad Request")
    assert "HTTP request rejected by the parser error=" in log
    assert "route=unmatched status=400" in log
    assert "Traceback" not in log
    assert email not in log
    assert code not in log
