"""A private redis-server on a free loopback port, for the sandbox and the tests.

It never touches a shared Redis: it binds 127.0.0.1 on a port the kernel
reports free, keeps its files in a temporary folder and stops with the owner.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

READY_LINE = "Ready to accept connections"
"""What redis-server prints once it accepts clients (Redis 6 and 7)."""

START_TIMEOUT_SECONDS = 20.0


class RedisServerError(RuntimeError):
    """Raised when redis-server is missing or does not start."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RedisServer:
    """A running redis-server child process."""

    port: int
    directory: Path
    process: subprocess.Popen[str]
    append_only: bool = False
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The redis:// URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """Stop the server and wait for it to exit."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def remove(self) -> None:
        """Stop the server and delete its folder, after which it cannot restart."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def kill(self) -> None:
        """Kill the server at once, as a crash would."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        """Start the server again on the same port and folder (after stop or kill)."""
        self.process = _spawn(
            self.port, self.directory, self.append_only, self.extra_args
        )


def start_redis_server(
    *,
    port: int | None = None,
    directory: Path | None = None,
    append_only: bool = False,
    extra_args: list[str] | None = None,
) -> RedisServer:
    """Start redis-server and return once it accepts connections.

    Raises:
        RedisServerError: redis-server is not installed or did not start.
    """
    if shutil.which("redis-server") is None:
        raise RedisServerError(
            "redis-server is not installed; "
            "install it with 'apt-get install redis-server'"
        )
    chosen_port = port or free_port()
    folder = directory or Path(tempfile.mkdtemp(prefix="gv-redis-"))
    arguments = list(extra_args or [])
    process = _spawn(chosen_port, folder, append_only, arguments)
    logger.info("redis-server started port=%s", chosen_port)
    return RedisServer(chosen_port, folder, process, append_only, arguments)


@contextlib.contextmanager
def redis_server(**options: object) -> Iterator[RedisServer]:
    """Run a private redis-server for the duration of a ``with`` block."""
    server = start_redis_server(**options)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.remove()


def _spawn(
    port: int, directory: Path, append_only: bool, extra_args: list[str]
) -> subprocess.Popen[str]:
    command = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "yes" if append_only else "no",
        "--protected-mode",
        "yes",
        *extra_args,
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_until_ready(process, port)
    return process


def _wait_until_ready(process: subprocess.Popen[str], port: int) -> None:
    # redis-server announces readiness on stdout; reading its lines waits on
    # that event instead of polling the port.
    assert process.stdout is not None
    seen: list[str] = []
    timer = _Deadline(START_TIMEOUT_SECONDS, process)
    with timer:
        for line in process.stdout:
            seen.append(line.rstrip())
            if READY_LINE in line:
                _drain_in_background(process)
                return
    tail = "\n".join(seen[-10:])
    raise RedisServerError(f"redis-server on port {port} did not start:\n{tail}")


class _Deadline:
    """Kills the process if it is not ready in time, which ends the read loop."""

    def __init__(self, seconds: float, process: subprocess.Popen[str]) -> None:
        import threading

        self._timer = threading.Timer(seconds, process.kill)

    def __enter__(self) -> None:
        self._timer.start()

    def __exit__(self, *_exc: object) -> None:
        self._timer.cancel()


def _drain_in_background(process: subprocess.Popen[str]) -> None:
    # Keep reading the server's output so a full pipe never blocks it.
    import threading

    def drain() -> None:
        assert process.stdout is not None
        for _line in process.stdout:
            pass

    threading.Thread(target=drain, daemon=True).start()
