"""The dead-letter lists ``janitor.dead.<queue>``: what they hold, replay, drop and trim.

A dead letter is the message as it would go back to its queue (a purged one as published, a
restore's flagged redelivered), so a replay pushes it back unchanged. What put it there and
when is kept beside it, in the hash ``celery-janitor:dead:<queue>`` (delivery tag → ``<reason>
<unix time>``). Replay and drop run one atomic ``MOVE_PAGE`` call per page, oldest first.
"""

from __future__ import annotations

import collections
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from janitor.config import Settings
from janitor.operations.broker import BrokerKeys
from janitor.redis_io import scripts

PREFIX = "janitor.dead."


def record_key(keys: BrokerKeys, queue: str) -> str:
    """The hash saying why and when each of ``janitor.dead.<queue>``'s entries got there."""
    return f"{keys.prefix}celery-janitor:dead:{queue}"


def dead_queues(client: redis.Redis, settings: Settings, tally: scripts.Tally) -> list[str]:
    """Queues that have a dead-letter list (one keyspace SCAN)."""
    keys = BrokerKeys.of(settings)
    head = keys.dead_list("")
    match = re.sub(r"([*?\[\]\\])", r"\\\1", head) + "*"
    found: set[str] = set()
    cursor = 0
    while True:
        tally.commands["SCAN"] += 1
        cursor, page = client.scan(cursor, match=match, count=settings.scan_count, _type="list")
        found.update(_text(k)[len(head) :] for k in page)
        if int(cursor) == 0:
            return sorted(found)


@dataclass(frozen=True, slots=True)
class DeadRow:
    queue: str
    task_name: str
    task_id: str
    reason: str  # '' when nothing recorded it (a restore's dead letter not yet seen at the head)
    age_s: float | None  # since it was recorded dead

    def as_dict(self) -> dict[str, Any]:
        age = None if self.age_s is None else round(self.age_s, 3)
        return {"queue": self.queue, "task": self.task_name, "id": self.task_id, "reason": self.reason, "age_s": age}


def listing(
    client: redis.Redis,
    settings: Settings,
    *,
    queues: Sequence[str],
    now: float,
    task: str = "",
    limit: int = 100,
    tally: scripts.ReadOnlyTally,
) -> tuple[list[DeadRow], dict[str, int]]:
    """Up to ``limit`` entries (oldest first) of each queue's dead-letter list, and each list's length."""
    keys = BrokerKeys.of(settings)
    rows: list[DeadRow] = []
    lengths: dict[str, int] = {}
    for queue in queues:
        tally.commands["LLEN"] += 1
        lengths[queue] = int(client.llen(keys.dead_list(queue)))
        start = shown = 0
        while shown < limit:
            read, entries = scripts.dead_page(
                tally,
                client,
                dead_list=keys.dead_list(queue),
                record=record_key(keys, queue),
                start=start,
                size=settings.unacked_page,
                task=task,
            )
            for e in entries[: limit - shown]:
                reason, _, at = e.record.partition(" ")
                age = now - float(at) if _number(at) else None
                rows.append(DeadRow(queue, e.task_name or "unknown", e.task_id, reason, age))
            shown += len(entries)
            start += read
            if read < settings.unacked_page:
                break
    return rows, lengths


@dataclass
class MoveReport:
    """What replay or drop did (or, dry, would do), by queue and task name."""

    action: str
    dry_run: bool
    moved: dict[str, collections.Counter[str]] = field(default_factory=dict)
    tally: scripts.Tally = field(default_factory=scripts.Tally)

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.moved.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "dry_run": self.dry_run,
            "total": self.total,
            "by_queue": {q: dict(c.most_common()) for q, c in self.moved.items()},
            "commands": dict(self.tally.commands),
        }


def move(
    client: redis.Redis,
    settings: Settings,
    *,
    action: scripts.Move,
    queues: Sequence[str],
    dry_run: bool,
    task: str = "",
    limit: int | None = None,
    tally: scripts.Tally | None = None,
) -> MoveReport:
    """Replay (back to the queue's priority list for each message's priority) or drop dead letters.

    Oldest first, at most ``limit`` per queue. Dry: the same script in counting mode, read-only.
    """
    keys = BrokerKeys.of(settings)
    run_tally = runner(tally, dry_run=dry_run)
    out = MoveReport(action.value, dry_run, tally=run_tally)
    mode = scripts.Move.COUNT if dry_run else action
    tombstone = f"celery-janitor:tombstone:{uuid.uuid4().hex}"
    size = settings.unacked_page
    for queue in queues:
        counts = out.moved.setdefault(queue, collections.Counter())
        targets = [keys.q_for_pri(queue, s) for s in keys.steps] if action is scripts.Move.REPLAY else []
        start = read = length = 0
        while limit is None or sum(counts.values()) < limit:
            left = size if limit is None else min(size, limit - sum(counts.values()))
            page = scripts.move_page(
                run_tally,
                client,
                mode=mode,
                source=keys.dead_list(queue),
                record=record_key(keys, queue),
                targets=targets,
                steps=list(keys.steps) if targets else [],
                start=start,
                size=size,
                task=task,
                most=left,
                tombstone=tombstone,
            )
            length = length or page.length
            read += page.read
            counts.update(page.by_name)
            start += page.read - (0 if dry_run else page.moved)
            if page.read < size or read >= length:
                break
    return out


def trim(
    client: redis.Redis, settings: Settings, *, queues: Sequence[str], now: float, tally: scripts.Tally
) -> dict[str, int]:
    """Drop the oldest dead letters past JANITOR_DEAD_MAX entries or JANITOR_DEAD_MAX_AGE seconds; per queue."""
    if not settings.dead_max and not settings.dead_max_age:
        return {}
    keys = BrokerKeys.of(settings)
    before = now - settings.dead_max_age if settings.dead_max_age else None
    dropped: dict[str, int] = {}
    for queue in queues:
        more = True
        while more:
            n, more = scripts.dead_trim(
                tally,
                client,
                dead_list=keys.dead_list(queue),
                record=record_key(keys, queue),
                keep=settings.dead_max,
                before=before,
                note=f"unrecorded {now:.3f}",
                most=settings.unacked_page,
            )
            if n:
                dropped[queue] = dropped.get(queue, 0) + n
    return dropped


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def runner(tally: scripts.Tally | None, *, dry_run: bool) -> scripts.Tally:
    """``tally`` (counting into it); for a dry run always an EVALSHA_RO one, so Redis refuses any write."""
    if not dry_run:
        return tally or scripts.Tally()
    if isinstance(tally, scripts.ReadOnlyTally):
        return tally
    return scripts.ReadOnlyTally(commands=(tally or scripts.Tally()).commands)
