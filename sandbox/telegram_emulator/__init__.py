"""A local emulator of the Telegram Bot API for tests and manual trials.

python-telegram-bot talks to it over HTTP as it would to api.telegram.org, and
tests play the users through the testing API (see :mod:`.client`).
"""

from .client import EmulatorClient, EmulatorError, button_data, buttons
from .ratelimit import RateLimits
from .server import create_app, emulator_state, running_emulator, start_emulator

__all__ = [
    "EmulatorClient",
    "EmulatorError",
    "RateLimits",
    "button_data",
    "buttons",
    "create_app",
    "emulator_state",
    "running_emulator",
    "start_emulator",
]
