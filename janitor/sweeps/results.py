"""The result sweep: one SCAN over Celery's result, group, chord and reply keys.

Per SCAN page: INSPECT (one script call) → :func:`rules.decide` per key →
ACT (one script call). Memory is one page of keys, whatever the keyspace size.
"""

from __future__ import annotations

import collections
import datetime as dt
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from janitor import scripts
from janitor.config import Settings
from janitor.keyspace import SCAN_MATCH, Kind, Layout
from janitor.sweeps.rules import Action, Skip, decide

FENCE_NONE = b"celery-janitor:no-fence"


@dataclass
class SweepReport:
    """What one pass saw and did; the same shape for dry and real runs."""

    dry_run: bool
    scanned: int = 0
    celery_keys: int = 0
    ttl_applied: collections.Counter[str] = field(default_factory=collections.Counter)
    ttl_capped: collections.Counter[str] = field(default_factory=collections.Counter)
    deleted: collections.Counter[str] = field(default_factory=collections.Counter)
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    raced: int = 0
    bytes_deleted: int = 0
    batches: int = 0
    duration_s: float = 0.0
    completed: bool = False
    tally: scripts.Tally = field(default_factory=scripts.Tally)

    @property
    def commands(self) -> int:
        return sum(self.tally.commands.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "completed": self.completed,
            "scanned": self.scanned,
            "celery_keys": self.celery_keys,
            "ttl_applied": _plain(self.ttl_applied),
            "ttl_capped": _plain(self.ttl_capped),
            "deleted": _plain(self.deleted),
            "skipped": _plain(self.skipped),
            "raced": self.raced,
            "bytes_deleted": self.bytes_deleted,
            "batches": self.batches,
            "duration_s": round(self.duration_s, 3),
            "commands": dict(self.tally.commands),
            "commands_total": self.commands,
        }


@dataclass(frozen=True)
class Fence:
    """The lease key and token ACT checks before writing (see ``janitor.lease``)."""

    key: bytes = FENCE_NONE
    token: str = ""


def sweep(
    client: redis.Redis,
    settings: Settings,
    *,
    dry_run: bool | None = None,
    fence: Callable[[], Fence] = Fence,
    should_stop: Callable[[], bool] = lambda: False,
    on_batch: Callable[[SweepReport], None] = lambda _r: None,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> SweepReport:
    """Run one pass; stops between batches (never inside one) when ``should_stop()``."""
    report = SweepReport(dry_run=settings.dry_run if dry_run is None else dry_run)
    layout = Layout.for_prefixes(settings.key_prefix, settings.broker_key_prefix)
    started = time.monotonic()
    for page in _pages(client, settings, report):
        _process(client, settings, layout, page, report, fence=fence, now=clock())
        report.batches += 1
        on_batch(report)
        if should_stop():
            break
    else:
        report.completed = True
    report.duration_s = time.monotonic() - started
    return report


def _pages(client: redis.Redis, settings: Settings, report: SweepReport) -> Iterator[list[bytes]]:
    """Yield pages of about ``scan_count`` matching keys; SCAN pages are merged when sparse."""
    cursor, page = 0, []
    while True:
        cursor, keys = report.tally.scan(client, cursor, SCAN_MATCH, settings.scan_count)
        page.extend(keys)
        if len(page) >= settings.scan_count or (cursor == 0 and page):
            yield page
            page = []
        if cursor == 0:
            return


def _process(
    client: redis.Redis,
    settings: Settings,
    layout: Layout,
    keys: list[bytes],
    report: SweepReport,
    *,
    fence: Callable[[], Fence],
    now: dt.datetime,
) -> None:
    report.scanned += len(keys)
    classified = [(key, *layout.classify(key)) for key in keys]
    candidates = [(key, kind, ident) for key, kind, ident in classified if kind is not Kind.OTHER]
    report.celery_keys += len(candidates)
    if not candidates:
        return
    actions: list[tuple[bytes, Action]] = []
    while candidates:
        rows = report.tally.run(
            client,
            scripts.INSPECT,
            [key for key, _, _ in candidates],
            [settings.max_value_bytes, settings.batch_bytes, int(settings.cap_ttl)],
        )
        for (key, kind, ident), (rtype, pttl, value) in zip(candidates, rows, strict=False):
            decision = decide(kind, ident, _text(rtype), int(pttl), value, now=now, settings=settings)
            if isinstance(decision, Skip):
                report.skipped[decision.reason] += 1
            elif decision is not None:
                actions.append((key, decision))
        candidates = candidates[len(rows) :]
    if actions:
        _act(client, actions, report, fence=fence)


def _act(
    client: redis.Redis, actions: list[tuple[bytes, Action]], report: SweepReport, *, fence: Callable[[], Fence]
) -> None:
    if report.dry_run:
        applied = [1] * len(actions)
    else:
        current = fence()
        args: list[Any] = [current.token]
        for _key, action in actions:
            args += [action.op, action.ms, action.guard]
        applied = report.tally.run(client, scripts.ACT, [current.key, *(k for k, _ in actions)], args)
    for (_key, action), ok in zip(actions, applied, strict=True):
        if not ok:
            report.raced += 1
        elif action.deletes:
            report.deleted[action.kind] += 1
            report.bytes_deleted += action.size
        elif action.op == "c":
            report.ttl_capped[action.kind] += 1
        else:
            report.ttl_applied[action.kind] += 1


def _plain(counter: collections.Counter[str]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(counter.items()) if v}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
