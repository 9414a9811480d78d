"""The reaper: abandoned STARTED results rewritten to FAILURE (``janitor.operations.reap``), opt-in."""

from __future__ import annotations

import structlog

from janitor.config import Settings
from janitor.operations import reap
from janitor.redis_io import scripts
from janitor.service.jobs.base import Context, Job, Outcome

log = structlog.get_logger("janitor.jobs.reaper")


class ReaperJob(Job):
    name = "reaper"
    interval_setting = "reap_interval"

    def first_run(self, settings: Settings) -> float:
        return min(self.interval(settings), 5.0)

    def run(self, ctx: Context) -> Outcome:
        tally = scripts.Tally()
        now = ctx.clock()
        seen = ctx.workers.workers()
        try:
            report = reap.reap(
                ctx.client,
                ctx.broker,
                ctx.settings,
                now=now,
                alive={h for h, s in seen.items() if s.alive(now)},
                last_seen={h: s.last_seen for h, s in seen.items()},
                listened_s=ctx.workers.listened_for(now),
                fence=ctx.lease.fence(),
                dry_run=ctx.settings.dry_run,
                should_stop=ctx.should_stop,
                tally=tally,
            )
        finally:
            ctx.metrics.add_commands(tally.commands)
        ctx.metrics.reaped(report)
        for r in report.reaped:
            log.warning(
                "reaper.would_reap" if report.dry_run else "reaper.reaped",
                task_id=r.task_id,
                worker=r.hostname,
                silent_s=round(r.silent_s),
                status="FAILURE",
                exc_type=reap.EXC_TYPE,
            )
        return Outcome(report.as_dict(), completed=report.completed)
