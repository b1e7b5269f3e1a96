"""Run the whole journey locally: ``python -m sandbox [--headless]``.

Interactive mode starts every part, creates an invitation and prints the
chat page's address and the message to send there; it runs until Ctrl-C.
Headless mode plays a scripted client from the invitation to the delivery,
prints the transcript and exits 0 only when the municipality received and
decrypted the uploaded package.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from journey.logging_setup import configure_logging
from sandbox.app_simulator import synthetic_package
from sandbox.scripted_client import JourneyFailed, ScriptedClient
from sandbox.stack import SandboxStack, running_stack
from sandbox.telegram_emulator import EmulatorClient

logger = logging.getLogger("sandbox")

DEFAULT_EMULATOR_PORT = 8081
DEFAULT_SERVICE_PORT = 8080
PUBLIC_HOST_VARIABLE = "SANDBOX_PUBLIC_HOST"
"""Default of ``--public-host``, so the compose file can set it."""
HEADLESS_USER_ID = 424242
"""Telegram user id of the scripted client."""


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the sandbox and return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument(
        "--headless",
        action="store_true",
        help="play a scripted client to the delivery, print the transcript, exit",
    )
    parser.add_argument(
        "--partner", action="store_true", help="headless: the client has a partner"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1); 0.0.0.0 only in a "
        "container whose ports are published on the host's loopback interface",
    )
    parser.add_argument(
        "--public-host",
        type=_public_host,
        default=os.environ.get(PUBLIC_HOST_VARIABLE) or None,
        help="host name in the printed addresses and the app links, such as the "
        f"host a container's ports are published on (default ${PUBLIC_HOST_VARIABLE}"
        ", else the listen address)",
    )
    parser.add_argument(
        "--emulator-port",
        type=int,
        default=None,
        help=f"port of the Telegram emulator (default {DEFAULT_EMULATOR_PORT}, "
        "a free port in headless mode)",
    )
    parser.add_argument(
        "--service-port",
        type=int,
        default=None,
        help=f"port of the pairing service (default {DEFAULT_SERVICE_PORT}, "
        "a free port in headless mode)",
    )
    parser.add_argument("--verbose", action="store_true", help="log at DEBUG level")
    arguments = parser.parse_args(argv)

    # The product's own logging setup: key=value lines, no tokens, and the
    # libraries that log secrets at DEBUG (PTB, httpx) held at INFO or above.
    configure_logging(logging.DEBUG if arguments.verbose else logging.WARNING)

    try:
        if arguments.headless:
            return asyncio.run(_headless(arguments))
        return asyncio.run(_interactive(arguments))
    except KeyboardInterrupt:
        return 130


async def _headless(arguments: argparse.Namespace) -> int:
    telegram_token = os.environ.get("TELEGRAM_BOT_TOKEN")
    if telegram_token:
        print(
            "--headless plays the client through the emulator; unset TELEGRAM_BOT_TOKEN"
        )
        return 2
    async with running_stack(
        redis_url=os.environ.get("REDIS_URL") or None,
        host=arguments.host,
        emulator_port=arguments.emulator_port or 0,
        service_port=arguments.service_port or 0,
    ) as stack:
        assert stack.emulator_url is not None
        invitation = await stack.invite()
        package = synthetic_package("headless-run")
        async with EmulatorClient(stack.emulator_url) as emulator:
            client = ScriptedClient(stack, emulator, HEADLESS_USER_ID)
            try:
                transcript = await client.play(
                    invitation, partner=arguments.partner, package=package
                )
            except JourneyFailed as error:
                print(client.transcript.render())
                print(f"\nFAILED: {error}")
                return 1
        print(transcript.render())
        receiver = stack.receiver(invitation.municipality_code)
        received = receiver.deliveries[0] if receiver.deliveries else None
        if received is None or received.plaintext != package:
            print("\nFAILED: the municipality did not receive the uploaded package")
            return 1
        print(
            f"\nDelivered: {len(package)} bytes to {invitation.municipality_code}, "
            f"signature verified, decrypted equal to the upload, "
            f"{transcript.taps} taps by the client."
        )
        return 0


async def _interactive(arguments: argparse.Namespace) -> int:
    telegram_token = os.environ.get("TELEGRAM_BOT_TOKEN") or None
    async with running_stack(
        redis_url=os.environ.get("REDIS_URL") or None,
        host=arguments.host,
        emulator_port=_port(arguments.emulator_port, DEFAULT_EMULATOR_PORT),
        service_port=_port(arguments.service_port, DEFAULT_SERVICE_PORT),
        telegram_token=telegram_token,
        public_host=arguments.public_host,
    ) as stack:
        invitation = await stack.invite()
        _print_welcome(stack, invitation.token, invitation.deep_link)
        await _wait_for_stop()
    return 0


def _print_welcome(stack: SandboxStack, token: str, deep_link: str) -> None:
    print("The sandbox is running.")
    if stack.chat_page_url is not None:
        print(f"  Chat page:        {stack.chat_page_url}")
        print(f"  Send this there:  /start {token}")
    else:
        print(f"  Invitation link:  {deep_link}")
    print(f"  Pairing service:  {stack.public_service_url}")
    print(f"  Redis:            {stack.redis_url}")
    # The sandbox's tokens are made for this run and reach only loopback.
    print(
        f"  Metrics:          curl -H 'Authorization: Bearer "
        f"{stack.metrics_token}' {stack.public_service_url}/metrics"
    )
    for endpoint in stack.municipalities.values():
        print(f"  Municipality:     {endpoint.name} receives at {endpoint.url}")
    print("  Play the Ockto app with the link behind 'Open de Ockto app':")
    print(f"    {sys.executable} -m sandbox.phone {stack.public_service_url} '<link>'")
    print("Stop with Ctrl-C.")
    sys.stdout.flush()


def _public_host(text: str) -> str:
    # The app link is a button of the QR message, and Telegram rejects a
    # button whose http(s) host has no dot, such as http://localhost.
    if "." not in text and ":" not in text:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no dot, and Telegram rejects such a host in a button; "
            "use an IP address such as 127.0.0.1 or a domain name"
        )
    return text


def _port(requested: int | None, default: int) -> int:
    return default if requested is None else requested


async def _wait_for_stop() -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal_number, stopped.set)
    await stopped.wait()


if __name__ == "__main__":
    sys.exit(main())
