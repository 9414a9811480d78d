"""Redis Cluster (``JANITOR_REDIS_CLUSTER=true``): its primaries, and a client that connects lazily.

A cluster client is used only to discover the primaries; each one is then swept
like a standalone server (``janitor.operations.sweep.sweep_cluster``).
"""

from __future__ import annotations

import threading
from typing import Any

import redis
import redis.cluster
import structlog

from janitor.config import Settings
from janitor.redis_io import connection

log = structlog.get_logger("janitor.cluster")


def node_kwargs(settings: Settings) -> dict[str, Any]:
    """``redis.Redis`` arguments from the URL (password, TLS, timeouts); host and port are the seed node's."""
    kwargs = connection.client_kwargs(settings.redis_url, socket_timeout=settings.socket_timeout)
    if "unix_socket_path" in kwargs:
        raise connection.URLError("a Redis Cluster is reached over TCP: use redis:// or rediss://host:port")
    if kwargs.pop("db") != 0:
        raise connection.URLError(f"Redis Cluster has only database 0: drop the /db from {settings.masked_url}")
    return kwargs


class LazyCluster:
    """The daemon's cluster client, made on first use and again after a failed attempt:
    the daemon starts, and stays up, while the cluster is away (a state, not a crash).
    Stands in for ``redis.Redis`` where the daemon uses one: single-key commands and
    scripts are routed by key slot, SCRIPT LOAD goes to every primary."""

    def __init__(self, settings: Settings, timeout: float) -> None:
        self._kwargs = node_kwargs(settings) | {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        self._client: redis.cluster.RedisCluster | None = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    self._client = redis.cluster.RedisCluster(**self._kwargs)
                except redis.exceptions.RedisClusterException as exc:  # not a RedisError
                    raise redis.ConnectionError(f"no usable Redis Cluster: {exc}") from exc
        return getattr(self._client, name)

    def info_where(self, key: bytes) -> dict[str, Any]:
        """INFO of the primary that holds ``key``'s slot (the lease's: the results', when hash-tagged)."""
        node = self.get_node_from_key(key)
        info: dict[str, Any] = self.info(target_nodes=node)
        return info


def primaries(settings: Settings) -> list[tuple[str, int]]:
    """(host, port) of every primary, as the cluster announces them, asked through the URL's node."""
    kwargs = node_kwargs(settings)
    try:
        seed = redis.cluster.RedisCluster(**kwargs)
    except redis.exceptions.RedisClusterException as exc:  # not a RedisError: "cannot be connected", no slots...
        if "cluster mode is not enabled" in str(exc).lower():
            raise connection.URLError(
                f"{settings.masked_url} is not a Redis Cluster node (cluster mode is off there): "
                "unset JANITOR_REDIS_CLUSTER for a single server"
            ) from None
        raise redis.ConnectionError(f"no usable Redis Cluster at this URL: {exc}") from exc
    try:
        return sorted((node.host, int(node.port)) for node in seed.get_primaries())  # type: ignore[no-untyped-call]
    finally:
        seed.close()
