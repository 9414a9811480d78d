"""What waits in the queues, read on the server; the undoable purge; how long each queue's head has waited.

:func:`browse` tallies each priority list of each queue by task name, one page per
``EVALSHA_RO`` call (``QUEUE_TALLY``): only names, counts, positions and stamps cross the
network. :func:`purge` moves the matching messages of a queue to its dead-letter list
``janitor.dead.<queue>``, one atomic script call per page (``MOVE_PAGE``, which explains why a
consumer popping meanwhile can neither lose a message nor receive one twice), so
``celery-janitor dead replay`` can undo it.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from janitor.config import Settings
from janitor.operations import dead_letters
from janitor.operations.broker import BrokerKeys, BrokerReport, QueueCatalog
from janitor.redis_io import scripts

# Positions from the head beyond which one list is not read (a runaway queue is reported as such).
MAX_BROWSE = 1_000_000


@dataclass(frozen=True, slots=True)
class NameRow:
    """One task name's messages in one priority list."""

    task: str
    count: int
    first_position: int  # nearest the head: 0 is the next message a worker takes
    last_position: int
    oldest_age_s: float | None  # from the publisher's timestamp, when the messages carry one
    newest_age_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return {k: _round(getattr(self, k)) for k in self.__slots__}


@dataclass(frozen=True, slots=True)
class ListView:
    key: str
    priority: int  # kombu's priority step of this list
    waiting: int
    tasks: list[NameRow]
    truncated: bool  # longer than MAX_BROWSE: the tally covers its head only


@dataclass
class Browse:
    now: float
    queues: dict[str, list[ListView]] = field(default_factory=dict)
    tally: scripts.Tally = field(default_factory=scripts.Tally)

    def as_dict(self) -> dict[str, Any]:
        return {
            "queues": [
                {
                    "name": name,
                    "waiting": sum(v.waiting for v in views),
                    "lists": [
                        {
                            "key": v.key,
                            "priority": v.priority,
                            "waiting": v.waiting,
                            "truncated": v.truncated,
                            "tasks": [t.as_dict() for t in v.tasks],
                        }
                        for v in views
                    ],
                }
                for name, views in self.queues.items()
            ],
            "commands": dict(self.tally.commands),
        }


def queue_names(client: redis.Redis, settings: Settings, tally: scripts.Tally, *, now: float) -> list[str]:
    """Every queue bound to an exchange, plus JANITOR_QUEUES (one keyspace SCAN for the bindings)."""
    report = BrokerReport(now=now, visibility_timeout=settings.visibility_timeout, tally=tally)
    return sorted(QueueCatalog(every=0).get(client, settings, BrokerKeys.of(settings), report))


def browse(
    client: redis.Redis,
    settings: Settings,
    *,
    now: float,
    queues: Sequence[str] = (),
    max_per_list: int = MAX_BROWSE,
    tally: scripts.ReadOnlyTally | None = None,
) -> Browse:
    """Per queue and priority list: waiting count and a tally by task name (read-only).

    On a busy queue the pages are read at different moments: the waiting count is exact
    (LLEN at the first page), the tally is a close picture, not a snapshot.
    """
    out = Browse(now=now, tally=tally or scripts.ReadOnlyTally())
    keys = BrokerKeys.of(settings)
    for name in queues or queue_names(client, settings, out.tally, now=now):
        views = []
        for key, step in sorted(keys.sublists(name).items(), key=lambda kv: kv[1]):
            view = _tally_list(client, out.tally, key, step, size=settings.unacked_page, most=max_per_list, now=now)
            if view.waiting:
                views.append(view)
        out.queues[name] = views
    return out


def _tally_list(
    client: redis.Redis, tally: scripts.Tally, key: str, step: int, *, size: int, most: int, now: float
) -> ListView:
    merged: dict[str, list[Any]] = {}
    start, length = 0, None
    while start < most:
        page = scripts.queue_tally(tally, client, list_key=key, start=start, size=size)
        length = page.length if length is None else length
        for t in page.names:
            row = merged.setdefault(t.name, [0, t.first, t.last, t.oldest_stamp, t.newest_stamp])
            row[0] += t.count
            row[1], row[2] = min(row[1], t.first), max(row[2], t.last)
            row[3] = _pick(min, row[3], t.oldest_stamp)
            row[4] = _pick(max, row[4], t.newest_stamp)
        start += page.read
        if page.read < size:
            break
    rows = [
        NameRow(
            name or "unknown",
            n,
            first,
            last,
            None if lo is None else now - lo,
            None if hi is None else now - hi,
        )
        for name, (n, first, last, lo, hi) in merged.items()
    ]
    rows.sort(key=lambda r: (-r.count, r.task))
    return ListView(key, step, length or 0, rows, truncated=(length or 0) > most)


# -- purge ---------------------------------------------------------------------
@dataclass
class PurgeReport:
    """What :func:`purge` moved (or, dry, would move) to ``janitor.dead.<queue>``."""

    queue: str
    dry_run: bool
    moved: collections.Counter[str] = field(default_factory=collections.Counter)  # by task name
    scanned: int = 0
    unstamped: int = 0  # left alone under --older-than: no timestamp to judge their age by
    tally: scripts.Tally = field(default_factory=scripts.Tally)

    @property
    def total(self) -> int:
        return sum(self.moved.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "dry_run": self.dry_run,
            "moved": self.total,
            "by_task": dict(self.moved.most_common()),
            "scanned": self.scanned,
            "unstamped": self.unstamped,
            "dead_list": f"janitor.dead.{self.queue}",
            "commands": dict(self.tally.commands),
        }


def purge(
    client: redis.Redis,
    settings: Settings,
    *,
    queue: str,
    now: float,
    dry_run: bool,
    task: str = "",
    older_than: float | None = None,
    tally: scripts.Tally | None = None,
) -> PurgeReport:
    """Move the messages of ``queue`` (every priority list) that match to its dead-letter list.

    ``older_than``: only messages whose publisher timestamp is that many seconds old (stock
    Celery stamps none: those are counted as unstamped and left). A dry run sends the same
    script as EVALSHA_RO in its counting mode, so Redis itself refuses any write.
    """
    keys = BrokerKeys.of(settings)
    run_tally = dead_letters.runner(tally, dry_run=dry_run)
    out = PurgeReport(queue, dry_run, tally=run_tally)
    mode = scripts.Move.COUNT if dry_run else scripts.Move.PURGE
    cutoff = None if older_than is None else now - older_than
    tombstone = f"celery-janitor:tombstone:{uuid.uuid4().hex}"
    dead, record = keys.dead_list(queue), dead_letters.record_key(keys, queue)
    size = settings.unacked_page
    for key, _ in sorted(keys.sublists(queue).items(), key=lambda kv: kv[1]):
        start = read = length = 0
        while True:
            page = scripts.move_page(
                run_tally,
                client,
                mode=mode,
                source=key,
                record=record,
                targets=[dead],
                start=start,
                size=size,
                task=task,
                stamp_before=cutoff,
                most=size,
                tombstone=tombstone,
                note=f"purged {now:.3f}",
            )
            length = length or page.length
            read += page.read
            out.scanned += page.read
            out.unstamped += page.unstamped
            out.moved.update(page.by_name)
            # What moved is out of the list; what stayed is behind us. Messages published after
            # the first page (more than the list held then) are not read: they stay.
            start += page.read - (0 if dry_run else page.moved)
            if page.read < size or read >= length:
                break
    return out


# -- the head of each queue ----------------------------------------------------
@dataclass
class HeadWatch:
    """Which task id was at the head of each queue, and since when (across broker checks).

    Stock Celery stamps no publish time, so a queue's latency is read as Sidekiq does it: how
    long the message a worker would take next has been the next. A lower bound: it may have
    been there before the first check that saw it.
    """

    seen: dict[str, tuple[str, float]] = field(default_factory=dict)

    def observe(self, report: BrokerReport) -> dict[str, float]:
        waits: dict[str, float] = {}
        seen: dict[str, tuple[str, float]] = {}
        for q in report.queues:
            if not q.head_id:
                waits[q.name] = 0.0
                continue
            head, since = self.seen.get(q.name, ("", report.now))
            since = since if head == q.head_id else report.now
            seen[q.name] = (q.head_id, since)
            waits[q.name] = report.now - since
        self.seen = seen
        return waits


def dead_lengths(client: redis.Redis, settings: Settings, names: Iterable[str], tally: scripts.Tally) -> dict[str, int]:
    """LLEN of ``janitor.dead.<queue>`` for each queue name."""
    keys = BrokerKeys.of(settings)
    ordered = sorted(set(names))
    if not ordered:
        return {}
    pipe = client.pipeline(transaction=False)
    for name in ordered:
        pipe.llen(keys.dead_list(name))
    tally.commands["LLEN"] += len(ordered)
    return {name: int(n) for name, n in zip(ordered, pipe.execute(), strict=True)}


def _pick(fn: Any, a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else float(fn(a, b))


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value
