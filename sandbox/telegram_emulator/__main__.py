"""Run the emulator until interrupted: ``python -m sandbox.telegram_emulator``."""

import argparse
import asyncio
import logging

from .ratelimit import RateLimits
from .server import start_emulator
from .state import DEFAULT_BOT_USERNAME

logger = logging.getLogger(__name__)

# Port used when none is given, so the chat page has a stable address.
DEFAULT_PORT = 8081


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the local Telegram Bot API emulator on loopback."
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="loopback address to bind (default: 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"TCP port; 0 picks a free one (default: {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--bot-username",
        default=DEFAULT_BOT_USERNAME,
        help="username that getMe returns",
    )
    parser.add_argument(
        "--no-rate-limits",
        action="store_true",
        help="never respond with 429 Too Many Requests",
    )
    return parser.parse_args()


async def _serve(args: argparse.Namespace) -> None:
    limits = RateLimits.disabled() if args.no_rate_limits else RateLimits()
    runner, base_url = await start_emulator(
        args.host, args.port, bot_username=args.bot_username, rate_limits=limits
    )
    print(f"Bot API base_url:      {base_url}/bot")
    print(f"Bot API base_file_url: {base_url}/file/bot")
    print(f"Chat page:             {base_url}/chat")
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    """Start the emulator from the command line and serve until Ctrl+C."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        asyncio.run(_serve(_parse_args()))
    except KeyboardInterrupt:
        logger.info("telegram emulator interrupted")


if __name__ == "__main__":
    main()
