"""The results sweep: TTLs for Celery's result keys, stale ones deleted (``janitor.operations.sweep``).

A pass is skipped, at no cost, when it cannot find anything the last one did not
(:func:`why_skip`): watch mode has judged every key written since, or Redis's own
command counters show that no command that could write a result ran since.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

from janitor.config import Settings
from janitor.operations.sweep import SweepReport, sweep, sweep_cluster
from janitor.operations.writes import NOTIFIED_AS_SET, RESULT_WRITES, TTL_WRITES, Mark
from janitor.redis_io import scripts
from janitor.service.jobs.base import Context, Job, Outcome
from janitor.service.metrics import SweepRecorder
from janitor.service.readings import Reading

# Skips whose key can become one the rules act on without anything being written:
# a date_done in the future gets due with time.
TIME_DEPENDENT_SKIPS = frozenset({"future_date_done", "moved"})


@dataclass(frozen=True)
class LastPass:
    """The last full pass this instance completed: when it started, and what Redis had counted before it."""

    started: float  # time.monotonic()
    epoch: int  # the lease's epoch it ran under
    mark: Mark | None  # its baseline: the newest reading when it started, or one read then
    revisit: bool  # it left keys that time alone can make due
    # Only a reading taken after both the pass's start and its baseline says anything of what
    # was written since.
    compare_after: float = float("-inf")

    @classmethod
    def of(cls, report: SweepReport, started: float, epoch: int, baseline: Reading | None) -> LastPass:
        revisit = any(report.skipped[r] for r in TIME_DEPENDENT_SKIPS)
        if baseline is None:
            return cls(started, epoch, None, revisit)
        return cls(started, epoch, baseline.mark, revisit, max(started, baseline.at))


def why_skip(
    last: LastPass | None,
    settings: Settings,
    *,
    now: float,
    epoch: int,
    watching_since: float | None,
    mark: Callable[[], Mark | None],
) -> str:
    """The reason this pass is not needed, or "" to run it.

    Sound because a result key needs work only once it exists without a TTL (or, in cap mode,
    with too long a one): after a complete pass every key it could act on has been acted on,
    and a key can only become one again through a write. The command counters prove no such
    write ran (:mod:`janitor.operations.writes`); watch mode judges every key SET while it is
    unbroken, so with it only the other writes bring a pass back. ``mark`` is asked last, so it
    costs nothing when the answer is already known.
    """
    if last is None or epoch != last.epoch or now - last.started >= settings.safety_sweep_interval:
        return ""
    if settings.dry_run or last.revisit:  # what a dry run reports changes with time alone
        return ""
    watched = watching_since is not None and watching_since <= last.started
    latest = mark() if last.mark is not None and not settings.redis_cluster else None
    if latest is None or last.mark is None:
        return "watching" if watched else ""  # without counters, watch mode's word is all there is
    # Cap mode also shortens TTLs, so every TTL write counts (the lease's own renewal among them).
    writes = RESULT_WRITES | (TTL_WRITES if settings.cap_ttl else frozenset())
    if latest.unchanged_since(last.mark, writes):
        return "no_writes"
    # Watch mode hears SETs; a key written any other way since needs the pass.
    return "watching" if watched and latest.unchanged_since(last.mark, writes - NOTIFIED_AS_SET) else ""


class ResultsJob(Job):
    name = "results"
    interval_setting = "sweep_interval"
    series: ClassVar[Literal["sweep", "job"]] = "sweep"
    readiness = True

    def __init__(self) -> None:
        self.last: LastPass | None = None

    def first_run(self, settings: Settings) -> float:
        return self.interval(settings)  # and at once when the lease is taken

    def run(self, ctx: Context) -> Outcome:
        now, epoch = time.monotonic(), ctx.lease.epoch
        tally = scripts.Tally()
        last = self.last

        def mark() -> Mark | None:
            assert last is not None
            try:
                return ctx.readings.after(last.compare_after, ctx.client, tally).mark
            finally:
                ctx.metrics.add_commands(tally.commands)

        watch = ctx.watch.unbroken_since() if ctx.watch is not None else None
        reason = why_skip(last, ctx.settings, now=now, epoch=epoch, watching_since=watch, mark=mark)
        if reason:
            ctx.book.skipped_sweep(reason)
            return Outcome({"commands": sum(tally.commands.values())}, skipped=reason)
        before = None if ctx.settings.redis_cluster else self._baseline(ctx)
        report = self._pass(ctx)
        self.last = LastPass.of(report, now, epoch, before) if report.completed else None
        return Outcome(report.as_dict(), completed=report.completed)

    @staticmethod
    def _baseline(ctx: Context) -> Reading:
        tally = scripts.Tally()
        try:
            return ctx.readings.baseline(ctx.client, tally)
        finally:
            ctx.metrics.add_commands(tally.commands)

    def _pass(self, ctx: Context) -> SweepReport:
        recorder = SweepRecorder(ctx.metrics, self.name)
        if ctx.settings.redis_cluster:
            report = sweep_cluster(ctx.settings, fence=ctx.lease.fence, should_stop=ctx.should_stop, on_batch=recorder)
        else:
            report = sweep(
                ctx.client, ctx.settings, fence=ctx.lease.fence, should_stop=ctx.should_stop, on_batch=recorder
            )
        recorder(report)
        ctx.book.swept(report)
        return report
