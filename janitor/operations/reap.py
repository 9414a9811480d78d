"""Abandoned STARTED results: a task whose worker died (SIGKILL, OOM) stays STARTED forever, and a
client in ``AsyncResult.get()`` waits forever. This turns such a result into the FAILURE Celery
itself writes for a lost worker (``WorkerLostError``) and publishes it as Celery's Redis backend
does, so the waiting client wakes up with the error.

A STARTED result is abandoned when its worker (the ``hostname`` in its meta) has been silent for
``JANITOR_REAP_AFTER`` seconds while we listened, and its message is not in kombu's ``unacked``
(an ``acks_late`` message there is still kombu's to redeliver: the task will run again). Results
are found by SCAN pages whose STARTED values are picked on the server; each rewrite is one
compare-and-set on the exact value read (``REAP``), fenced by the lease.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from janitor.celery_model import payload
from janitor.celery_model.keyspace import glob_escape
from janitor.config import Settings
from janitor.operations import broker
from janitor.redis_io import scripts
from janitor.redis_io.lease import Fence

# What Celery writes when a worker process is lost (celery.worker.request.Request.on_failure).
EXC_TYPE = "WorkerLostError"
EXC_MODULE = "billiard.exceptions"
# A STARTED meta is a few hundred bytes; with result_extended it carries the task's args too.
STARTED_MAX_BYTES = 64 * 1024
# Serializers whose meta this module re-encodes exactly as Celery would; others are counted and skipped.
WRITABLE = frozenset({"json"})


@dataclass(frozen=True, slots=True)
class Reaped:
    """One abandoned task: its id, the worker that had it, and how long that worker had been silent."""

    task_id: str
    hostname: str
    silent_s: float

    def as_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "hostname": self.hostname, "silent_s": round(self.silent_s, 1)}


@dataclass
class ReapReport:
    """What one pass saw and did (or, dry, would do)."""

    dry_run: bool
    scanned: int = 0
    started: int = 0  # STARTED results seen
    reaped: list[Reaped] = field(default_factory=list)
    # alive, recent (silent under REAP_AFTER), in_unacked, serializer, no_hostname, too_large,
    # changed (rewritten between read and write), unacked_unknown (unacked too large to read whole)
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    completed: bool = True
    tally: scripts.Tally = field(default_factory=scripts.Tally)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "scanned": self.scanned,
            "started": self.started,
            "reaped": len(self.reaped),
            "skipped": dict(self.skipped),
            "completed": self.completed,
        }


@dataclass(frozen=True, slots=True)
class Candidate:
    """A STARTED result read from Redis: its key, the exact bytes read and the decoded meta."""

    key: bytes
    task_id: str
    raw: bytes
    meta: dict[str, Any]
    hostname: str


def silence(last_seen: float | None, listened_s: float, now: float) -> float:
    """Seconds a worker has been silent as far as we can tell: since its last heartbeat, but never
    longer than we have listened without a break (a worker never heard is silent since then)."""
    if last_seen is None:
        return listened_s
    return max(0.0, min(now - last_seen, listened_s))


def failure_meta(meta: dict[str, Any], hostname: str, silent_s: float, now: dt.datetime) -> dict[str, Any]:
    """The FAILURE meta Celery writes for a lost worker, keeping the STARTED meta's other fields
    (task_id, group_id, parent_id, result_extended's) in their order."""
    message = f"Worker {hostname} sent no heartbeat for {round(silent_s)} s; the task was abandoned (celery-janitor)"
    out = dict(meta)
    out["status"] = "FAILURE"
    out["result"] = {"exc_type": EXC_TYPE, "exc_message": [message], "exc_module": EXC_MODULE}
    out["traceback"] = f"billiard.exceptions.WorkerLostError: {message}\n"
    out["date_done"] = now.isoformat()  # Celery's app.now().isoformat(): aware, +00:00 for UTC
    return out


def candidates(
    client: redis.Redis,
    settings: Settings,
    report: ReapReport,
    should_stop: Callable[[], bool],
) -> Iterator[Candidate]:
    """Every STARTED result with a hostname, one bounded SCAN page at a time."""
    match = glob_escape(settings.layout.task_prefix) + "*"
    reader = scripts.ReadOnlyTally(commands=report.tally.commands)
    prefix = settings.layout.task_prefix
    cursor = b"0"
    while True:
        if should_stop():
            report.completed = False
            return
        page = scripts.started(
            reader, client, cursor=cursor, match=match, count=settings.scan_count, max_bytes=STARTED_MAX_BYTES
        )
        report.scanned += page.scanned
        if page.too_large:
            report.skipped["too_large"] += page.too_large
        for key, raw in page.values:
            found = _candidate(key, raw, prefix, report)
            if found is not None:
                yield found
        cursor = page.cursor
        if page.last:
            return


def _candidate(key: bytes, raw: bytes, prefix: bytes, report: ReapReport) -> Candidate | None:
    try:
        meta, serializer = payload.decode(raw, max_bytes=STARTED_MAX_BYTES)
    except payload.PayloadError:
        return None
    if not isinstance(meta, dict) or meta.get("status") != "STARTED":
        return None
    report.started += 1
    if serializer not in WRITABLE:
        report.skipped["serializer"] += 1
        return None
    result = meta.get("result")
    host = result.get("hostname") if isinstance(result, dict) else None
    if not isinstance(host, str) or not host:
        report.skipped["no_hostname"] += 1
        return None
    task_id = meta.get("task_id") if isinstance(meta.get("task_id"), str) else ""
    task_id = task_id or key[len(prefix) :].decode("utf-8", "replace")
    return Candidate(key, task_id, raw, meta, host)


def reap(
    results: redis.Redis,
    broker_client: redis.Redis,
    settings: Settings,
    *,
    now: float,
    alive: set[str],
    last_seen: dict[str, float],
    listened_s: float,
    fence: Fence,
    dry_run: bool,
    should_stop: Callable[[], bool] = lambda: False,
    tally: scripts.Tally | None = None,
) -> ReapReport:
    """One pass: find abandoned STARTED results and rewrite each to FAILURE (dry: list them only).

    ``alive``: workers whose heartbeat is live; ``last_seen``: each worker's last heartbeat;
    ``listened_s``: how long the heartbeat listener has been subscribed without a break.
    """
    report = ReapReport(dry_run=dry_run, tally=tally or scripts.Tally())
    silent: list[tuple[Candidate, float]] = []
    for c in candidates(results, settings, report, should_stop):
        quiet = silence(last_seen.get(c.hostname), listened_s, now)
        if c.hostname in alive:
            report.skipped["alive"] += 1
        elif quiet < settings.reap_after:
            report.skipped["recent"] += 1
        else:
            silent.append((c, quiet))
    if not silent:
        return report
    in_unacked, complete = broker.unacked_task_ids(broker_client, settings, tally=report.tally)
    if not complete:
        report.skipped["unacked_unknown"] += len(silent)
        return report
    when = dt.datetime.fromtimestamp(now, dt.UTC)
    for c, quiet in silent:
        if c.task_id in in_unacked:
            report.skipped["in_unacked"] += 1
            continue
        if should_stop():
            report.completed = False
            return report
        value = json.dumps(failure_meta(c.meta, c.hostname, quiet, when)).encode()
        done = dry_run or scripts.reap(
            report.tally,
            results,
            fence=fence.key,
            token=fence.token,
            key=c.key,
            read=c.raw,
            value=value,
            ttl_ms=settings.failure_ttl * 1000,
        )
        if done:
            report.reaped.append(Reaped(c.task_id, c.hostname, quiet))
        else:
            report.skipped["changed"] += 1
    return report
