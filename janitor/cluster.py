"""Redis Cluster: a sweep over every primary (``JANITOR_REDIS_CLUSTER=true``), one-shot or the daemon's.

A cluster client is used only to discover the primaries; each primary is then
swept like a standalone server (SCAN is per node), with every script call
holding keys of one hash slot (``sweep(..., cluster=True)``). A slot that moves
during the pass (MOVED/ASK/TRYAGAIN) skips its batch, counted as
``skipped["moved"]``; a primary that fails or goes away mid-pass leaves that
node incomplete and the pass goes on with the others. The next pass, which
discovers the primaries again, picks up both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.cluster
import structlog

from janitor import connection, errors
from janitor.config import Settings
from janitor.sweeps.results import Fence, SweepReport, sweep

# What ends one node's pass but not the others': the node is unreachable, failed
# over (CLUSTERDOWN / MASTERDOWN while the cluster elects) or turned read-only.
NODE_FAILURES = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.ReadOnlyError,
)

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


def sweep_cluster(
    settings: Settings,
    *,
    dry_run: bool | None = None,
    on_batch: Callable[[SweepReport], None] = lambda _r: None,
    should_stop: Callable[[], bool] = lambda: False,
    fence: Callable[[], Fence] = Fence,
) -> SweepReport:
    """One pass over every primary; one report with the summed counters and a summary per node."""
    total = SweepReport(dry_run=settings.dry_run if dry_run is None else dry_run)
    started = time.monotonic()
    nodes = primaries(settings)
    kwargs = node_kwargs(settings)
    total.completed = bool(nodes)
    for host, port in nodes:
        name = f"{host}:{port}"
        client = redis.Redis(**(kwargs | {"host": host, "port": port}))
        error = ""
        seen = [SweepReport(dry_run=total.dry_run)]  # the node's report as of its last finished batch

        def batch_done(report: SweepReport, seen: list[SweepReport] = seen) -> None:
            seen[0] = report
            on_batch(_progress(total, report))

        try:
            report = sweep(
                client,
                settings,
                dry_run=total.dry_run,
                fence=fence,
                on_batch=batch_done,
                should_stop=should_stop,
                cluster=True,
            )
        except NODE_FAILURES as exc:
            # What the finished batches did is kept and counted; the node is incomplete,
            # and the next pass (which asks the cluster for its primaries again) rescans it.
            report = seen[0]
            report.completed = False
            error = errors.classify(exc).message
        finally:
            client.close()
        _merge(total, report)
        total.completed = total.completed and report.completed
        summary = _summary(report) | ({"error": error} if error else {})
        total.nodes[name] = summary
        log.info("sweep.node", node=name, url=connection.mask_url(settings.redis_url), **summary)
        if should_stop():
            total.completed = False
            break
    total.duration_s = time.monotonic() - started
    return total


def _summary(report: SweepReport) -> dict[str, Any]:
    return {
        "completed": report.completed,
        "scanned": report.scanned,
        "celery_keys": report.celery_keys,
        "ttl_applied": sum(report.ttl_applied.values()),
        "deleted": sum(report.deleted.values()),
        "skipped_moved": report.skipped["moved"],
        "duration_s": round(report.duration_s, 3),
    }


def _merge(total: SweepReport, report: SweepReport) -> None:
    total.scanned += report.scanned
    total.celery_keys += report.celery_keys
    total.ttl_applied.update(report.ttl_applied)
    total.ttl_capped.update(report.ttl_capped)
    total.deleted.update(report.deleted)
    total.skipped.update(report.skipped)
    total.raced += report.raced
    total.unfenced += report.unfenced
    total.bytes_deleted += report.bytes_deleted
    total.batches += report.batches
    total.tally.commands.update(report.tally.commands)


def _progress(total: SweepReport, current: SweepReport) -> SweepReport:
    """What ``on_batch`` sees: the nodes done so far plus the running one (scanned only)."""
    view = SweepReport(dry_run=total.dry_run, scanned=total.scanned + current.scanned)
    view.batches = total.batches + current.batches
    return view
