"""The injectable clock that time-dependent code takes."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]
"""A function that returns the current time in seconds since the Unix epoch."""

system_clock: Clock = time.time
