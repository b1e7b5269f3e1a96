"""The bot as a real child process (``python -m bot``), for crash and log tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

from sandbox.redis_server import free_port
from sandbox.stack import EMULATOR_BOT_TOKEN, SandboxStack

READY_LINE = "Application started"
"""What PTB logs at INFO once polling and the update handling run."""

START_TIMEOUT_SECONDS = 30.0
"""Upper bound for the interpreter start, the imports and PTB's initialize."""


def bot_environment(
    stack: SandboxStack, consumer_name: str, *, log_level: str = "INFO"
) -> dict[str, str]:
    """Return the environment that points ``python -m bot`` at the sandbox stack."""
    assert stack.emulator_url is not None
    environment = {
        key: value
        for key, value in os.environ.items()
        if key in ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV")
    }
    environment.update(
        {
            "TELEGRAM_BOT_TOKEN": EMULATOR_BOT_TOKEN,
            "TELEGRAM_API_BASE_URL": f"{stack.emulator_url}/bot",
            "REDIS_URL": stack.redis_url,
            "PAIRING_SERVICE_URL": stack.service_url,
            "SERVICE_TOKEN": stack.service_token,
            "MUNICIPALITY_REGISTRY": str(stack.registry_path),
            "BOT_CONSUMER_NAME": consumer_name,
            "TELEGRAM_POLL_TIMEOUT": "10",
            # Far above Telegram's limits, so a journey at test speed is not
            # slowed to one message a second.
            "TELEGRAM_MESSAGES_PER_SECOND": "10000",
            "TELEGRAM_CHAT_MESSAGES_PER_SECOND": "1000",
            "TELEGRAM_CHAT_BURST": "1000",
            "LOG_LEVEL": log_level,
            # A port of its own, so suites running side by side do not
            # compete for the default health port.
            "BOT_HEALTH_PORT": str(free_port()),
        }
    )
    return environment


class BotProcess:
    """One ``python -m bot`` child; its stderr lines are kept in ``lines``.

    Args:
        environment: the child's whole environment (see ``bot_environment``).
    """

    def __init__(self, environment: dict[str, str]) -> None:
        self._environment = environment
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.lines: list[str] = []
        """Every stderr line of every child this object started, in order."""

    @property
    def pid(self) -> int:
        """Process id of the running child."""
        assert self._process is not None
        return self._process.pid

    async def start(self) -> None:
        """Start a child and return once PTB logged that it runs.

        Raises:
            TimeoutError: the child did not log ``READY_LINE`` in time.
            RuntimeError: the child exited before it was ready.
        """
        self._ready = asyncio.Event()
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            env=self._environment,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read(self._process))
        await asyncio.wait_for(self._ready.wait(), START_TIMEOUT_SECONDS)
        if self._process.returncode is not None:
            tail = "\n".join(self.lines[-20:])
            raise RuntimeError(f"bot exited with {self._process.returncode}:\n{tail}")

    async def kill(self) -> None:
        """Kill the child with SIGKILL, as a crash or an OOM kill would."""
        if self._process is None or self._process.returncode is not None:
            return
        os.kill(self._process.pid, signal.SIGKILL)
        await self._process.wait()
        if self._reader is not None:
            await self._reader

    def pause(self) -> None:
        """Freeze the child with SIGSTOP; it reads no socket until ``resume``."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a frozen child run again with SIGCONT."""
        os.kill(self.pid, signal.SIGCONT)

    async def stop(self) -> None:
        """Stop the child with SIGTERM, or SIGKILL when it does not exit in time."""
        if self._process is None or self._process.returncode is not None:
            return
        self._process.terminate()
        try:
            await asyncio.wait_for(self._process.wait(), START_TIMEOUT_SECONDS)
        except TimeoutError:
            await self.kill()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append(line)
            if READY_LINE in line:
                self._ready.set()
        # An exit before the ready line ends the wait in ``start``, too.
        self._ready.set()
