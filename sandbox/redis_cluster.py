"""A private three-node Redis Cluster on loopback, for the tests and the sandbox.

Three ``redis-server --cluster-enabled yes`` processes on free ports, each in
its own temporary folder, joined with ``redis-cli --cluster create`` and no
replicas. The cluster stops with its owner and never touches a shared Redis.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

from sandbox.redis_server import (
    RedisServer,
    RedisServerError,
    free_port,
    start_redis_server,
)

logger = logging.getLogger(__name__)

CLUSTER_NODES = 3
"""The minimum number of primaries that ``redis-cli --cluster create`` accepts."""

CREATE_TIMEOUT_SECONDS = 30.0
"""Upper bound for ``redis-cli --cluster create``; it needs about a second."""

STATE_OK_TIMEOUT_SECONDS = 15.0
"""Upper bound for every node to report ``cluster_state:ok`` after the create."""

STATE_CHECK_INTERVAL_SECONDS = 0.05
"""Pause between two ``CLUSTER INFO`` checks while the nodes gossip."""


@dataclass
class RedisCluster:
    """The node processes of a running cluster."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL of the first node; clients find the rest."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def stop(self) -> None:
        """Stop every node and delete their folders."""
        for node in self.nodes:
            node.stop()
            shutil.rmtree(node.directory, ignore_errors=True)


def start_redis_cluster(node_count: int = CLUSTER_NODES) -> RedisCluster:
    """Start ``node_count`` cluster nodes, join them and return once all are ok.

    Raises:
        RedisServerError: redis-server or redis-cli is missing, a node did not
            start, or the cluster did not reach ``cluster_state:ok`` in time.
    """
    if shutil.which("redis-cli") is None:
        raise RedisServerError(
            "redis-cli is not installed; install it with 'apt-get install redis-tools'"
        )
    nodes: list[RedisServer] = []
    try:
        for _ in range(node_count):
            # The bus port is set explicitly because the default (data port
            # plus 10000) fails for data ports above 55535.
            nodes.append(
                start_redis_server(
                    extra_args=[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        str(free_port()),
                    ],
                )
            )
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        created = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=CREATE_TIMEOUT_SECONDS,
        )
        if created.returncode != 0:
            raise RedisServerError(
                f"redis-cli --cluster create failed:\n{created.stdout[-2000:]}"
                f"{created.stderr[-2000:]}"
            )
        for node in nodes:
            _wait_for_state_ok(node.port)
    except BaseException:
        RedisCluster(nodes).stop()
        raise
    logger.info("redis cluster started ports=%s", [node.port for node in nodes])
    return RedisCluster(nodes)


@contextlib.contextmanager
def redis_cluster(node_count: int = CLUSTER_NODES) -> Iterator[RedisCluster]:
    """Run a private Redis Cluster for the duration of a ``with`` block."""
    cluster = start_redis_cluster(node_count)
    try:
        yield cluster
    finally:
        cluster.stop()


def _wait_for_state_ok(port: int) -> None:
    # The create returns once the slots are assigned; each node then learns the
    # others by gossip, so its state turns ok a moment later. redis-server
    # announces that on no channel a client can block on, hence the checks.
    deadline = time.monotonic() + STATE_OK_TIMEOUT_SECONDS
    info = ""
    while time.monotonic() < deadline:
        info = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "cluster", "info"],
            capture_output=True,
            text=True,
            timeout=STATE_OK_TIMEOUT_SECONDS,
        ).stdout
        if "cluster_state:ok" in info:
            return
        time.sleep(STATE_CHECK_INTERVAL_SECONDS)
    raise RedisServerError(
        f"cluster node on port {port} did not reach cluster_state:ok:\n{info}"
    )
