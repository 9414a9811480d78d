"""The latest INFO reading of a server, shared by the jobs that ask whether it was written to.

The INFO job takes a reading every ``JANITOR_INFO_INTERVAL``; a job that wants to know
whether anything was written since its last run uses that reading when it is newer than
the run, and reads INFO itself (one command) only when it is not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from janitor.operations.writes import Mark
from janitor.redis_io import scripts


@dataclass(frozen=True)
class Reading:
    at: float  # time.monotonic() when INFO was sent
    mark: Mark | None


class Readings:
    """The newest reading of one server; safe to share between job threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._latest: Reading | None = None
        self._lock = threading.Lock()

    def record(self, info: Mapping[str, Any], at: float) -> Reading:
        reading = Reading(at, Mark.of(info))
        with self._lock:
            if self._latest is None or at >= self._latest.at:
                self._latest = reading
        return reading

    def latest(self) -> Reading | None:
        with self._lock:
            return self._latest

    def baseline(self, client: redis.Redis, tally: scripts.Tally) -> Reading:
        """What a run about to start compares later readings with: the newest one, whatever its
        age (an older one only makes the next comparison stricter), read now if there is none."""
        return self.after(float("-inf"), client, tally)

    def after(self, when: float, client: redis.Redis, tally: scripts.Tally) -> Reading:
        """A reading taken after ``when``: the newest one if it is, else a new one."""
        latest = self.latest()
        if latest is not None and latest.at > when:
            return latest
        at = self.clock()
        return self.record(read_info(client, tally), at)


def read_info(client: redis.Redis, tally: scripts.Tally) -> dict[str, Any]:
    """``INFO everything`` (memory, keyspace and the command counters in one reply); plain INFO on a
    server that refuses the section name."""
    tally.commands["INFO"] += 1
    try:
        return dict(client.info("everything"))
    except redis.ResponseError:
        tally.commands["INFO"] += 1
        return dict(client.info())


@dataclass
class Unchanged:
    """For a read-only job whose last findings change only through writes: its runs are skipped while
    Redis counts none of ``commands``, and it runs at least every ``refresh`` seconds (keys that
    expire change what it reads without a command)."""

    commands: frozenset[str]
    refresh: float
    # The last run that can stand in: when it started, its baseline's mark, and the time a reading
    # must be newer than to say anything of what was written since (its start, or its baseline's
    # reading when that was taken later).
    _last: tuple[float, Mark, float] | None = None
    _running: tuple[float, Reading] | None = None  # the run begun: its start and baseline

    def begin(self, readings: Readings, client: redis.Redis, tally: scripts.Tally) -> str:
        """Why this run can be skipped; or "" once its baseline is taken (then :meth:`ran` when it is done)."""
        now = readings.clock()
        if self._last is not None and now - self._last[0] < self.refresh:
            _, mark, after = self._last
            latest = readings.after(after, client, tally).mark
            if latest is not None and latest.unchanged_since(mark, self.commands):
                return "no_writes"
        self._running = (now, readings.baseline(client, tally))
        return ""

    def ran(self, *, reusable: bool) -> None:
        """The run begun is done; ``reusable``: nothing it found changes with time alone."""
        assert self._running is not None
        started, before = self._running
        self._last = (started, before.mark, max(started, before.at)) if reusable and before.mark else None
