"""One factory for every Redis client of the project: a single server or a cluster.

``connect`` returns a ``redis.asyncio.Redis`` for ``redis://``, ``rediss://``
and ``unix://`` URLs, and a ``redis.asyncio.RedisCluster`` for
``redis+cluster://`` and ``rediss+cluster://`` URLs or when the environment
variable ``REDIS_CLUSTER`` is ``1``. The code above it works on both because
every Lua script and every MULTI touches keys of one hash slot only (see
``journey.keys``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

CLUSTER_SCHEMES: dict[str, str] = {
    "redis+cluster": "redis",
    "rediss+cluster": "rediss",
}
"""URL schemes that select the cluster client, and the scheme redis-py expects."""

SINGLE_SCHEMES: frozenset[str] = frozenset({"redis", "rediss", "unix"})

SCHEMES: frozenset[str] = SINGLE_SCHEMES | frozenset(CLUSTER_SCHEMES)
"""Every scheme ``connect`` accepts, for configuration checks."""

CLUSTER_VARIABLE = "REDIS_CLUSTER"
"""Environment variable that selects the cluster client for a plain URL."""

RETRY_ATTEMPTS = 3
"""Retries of a command after a connection error. After a Redis restart every
pooled connection is dead and fails once; a retry on a fresh connection hides
that from the caller."""

RETRY_BACKOFF_BASE_SECONDS = 0.05
RETRY_BACKOFF_CAP_SECONDS = 0.5
"""Exponential backoff between retries: 0.05 s, 0.1 s, 0.2 s, so a command
against a Redis that is really down fails after about 0.35 s, not later."""


def _default_retry() -> Retry:
    return Retry(
        ExponentialBackoff(
            cap=RETRY_BACKOFF_CAP_SECONDS, base=RETRY_BACKOFF_BASE_SECONDS
        ),
        RETRY_ATTEMPTS,
    )


def is_cluster_url(url: str, environ: Mapping[str, str] | None = None) -> bool:
    """Return whether ``url`` (or ``REDIS_CLUSTER=1``) selects Redis Cluster."""
    env = os.environ if environ is None else environ
    scheme = urlsplit(url).scheme
    if scheme in CLUSTER_SCHEMES:
        return True
    return scheme in ("redis", "rediss") and env.get(CLUSTER_VARIABLE, "") == "1"


def connect(
    url: str,
    *,
    cluster: bool | None = None,
    environ: Mapping[str, str] | None = None,
    **options: Any,
) -> Redis:
    """Create a client for ``url`` with ``decode_responses=True``.

    Args:
        url: a ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://`` or
            ``rediss+cluster://`` URL. A cluster URL names one node; the client
            discovers the others.
        cluster: force the choice; None decides by the URL and ``REDIS_CLUSTER``.
        environ: where ``REDIS_CLUSTER`` is read (``os.environ`` when None).
        **options: further keyword arguments of the redis-py client, such as
            ``socket_timeout``.

    Raises:
        ValueError: the URL scheme is not supported, or a cluster was
            requested for a ``unix://`` URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(
            f"Redis URL scheme {parts.scheme!r} is not supported; use one of "
            f"{', '.join(sorted(SCHEMES))}"
        )
    use_cluster = is_cluster_url(url, environ) if cluster is None else cluster
    options.setdefault("decode_responses", True)
    options.setdefault("retry", _default_retry())
    options.setdefault("retry_on_error", [RedisConnectionError, RedisTimeoutError])
    if not use_cluster:
        client: Redis = Redis.from_url(url, **options)
        return client

    scheme = CLUSTER_SCHEMES.get(parts.scheme, parts.scheme)
    if scheme not in ("redis", "rediss"):
        raise ValueError(f"Redis Cluster needs a TCP URL, got scheme {parts.scheme!r}")
    # RedisCluster has no database numbers, so a "/0" path is dropped.
    plain = urlunsplit((scheme, parts.netloc, "", parts.query, ""))
    # NOTE: RedisCluster offers the same command methods the project calls on
    # Redis (scripts, pipelines, streams), so callers keep their Redis type hints.
    return cast(Redis, RedisCluster.from_url(plain, **options))
