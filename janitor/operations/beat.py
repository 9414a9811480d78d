"""RedBeat: is beat still scheduling? Read-only, bounded.

RedBeat keeps every periodic task in ``<prefix>:schedule`` (``redbeat_key_prefix``, ``redbeat:`` by
default, so ``redbeat::schedule``), a zset of entry keys scored by their next run time; its beat
process picks the due ones each tick and scores them again. An entry still due long after its
time means no beat is ticking. An interval entry is overdue once late by more than its own
interval (its definition says ``{"__type__": "interval", "every": s}``); crontab, rrule and solar
entries, whose interval the definition does not state, once late by ``JANITOR_BEAT_OVERDUE_AFTER``.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from janitor.config import Settings
from janitor.redis_io import scripts

# Due entries looked at per check, oldest first: enough to say "beat is down" on any real schedule.
MAX_DUE = 1000
MAX_DEFINITION_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class BeatReport:
    """One look at RedBeat's schedule (``present`` False: no schedule key, RedBeat not used here)."""

    present: bool
    entries: int = 0
    overdue: int = 0
    most_late_s: float = 0.0
    truncated: bool = False  # more due entries than MAX_DUE: ``overdue`` is a lower bound


def schedule_key(prefix: str) -> str:
    """RedBeat's ``key_prefix + ':schedule'`` (it appends the colon whatever the prefix ends with)."""
    return prefix + ":schedule"


def overdue(entry: scripts.DueEntry, now: float, threshold: float) -> bool:
    """Late by more than its interval, or by ``threshold`` when the interval is unknown; disabled never."""
    if not entry.enabled:
        return False
    return now - entry.due_at > (entry.every if entry.every is not None else threshold)


def check(client: redis.Redis, settings: Settings, *, now: float, tally: scripts.Tally) -> BeatReport:
    key = schedule_key(settings.redbeat_prefix)
    reader = tally if isinstance(tally, scripts.ReadOnlyTally) else scripts.ReadOnlyTally(commands=tally.commands)
    found = scripts.redbeat_due(reader, client, schedule=key, now=now, limit=MAX_DUE, max_bytes=MAX_DEFINITION_BYTES)
    if found.entries == 0:
        return BeatReport(present=False)
    late = [now - e.due_at for e in found.due if overdue(e, now, settings.beat_overdue_after)]
    return BeatReport(True, found.entries, len(late), max(late, default=0.0), len(found.due) >= MAX_DUE)
