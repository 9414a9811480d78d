"""The results sweep: TTLs for Celery's result keys, stale ones deleted (``janitor.operations.sweep``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from janitor.config import Settings
from janitor.operations.sweep import sweep, sweep_cluster
from janitor.service.jobs.base import Context, Job, Outcome
from janitor.service.metrics import SweepRecorder


class ResultsJob(Job):
    name = "results"
    interval_setting = "sweep_interval"
    series: ClassVar[Literal["sweep", "job"]] = "sweep"
    readiness = True

    def first_run(self, settings: Settings) -> float:
        return self.interval(settings)  # and at once when the lease is taken

    def run(self, ctx: Context) -> Outcome:
        recorder = SweepRecorder(ctx.metrics, self.name)
        if ctx.settings.redis_cluster:
            report = sweep_cluster(ctx.settings, fence=ctx.lease.fence, should_stop=ctx.should_stop, on_batch=recorder)
        else:
            report = sweep(
                ctx.client, ctx.settings, fence=ctx.lease.fence, should_stop=ctx.should_stop, on_batch=recorder
            )
        recorder(report)
        ctx.book.swept(report)
        return Outcome(report.as_dict(), completed=report.completed)
