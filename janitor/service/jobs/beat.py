"""RedBeat: how many schedule entries are overdue (``janitor.operations.beat``); read-only."""

from __future__ import annotations

import structlog

from janitor.config import Settings
from janitor.operations import beat
from janitor.operations.writes import BROKER_WRITES
from janitor.redis_io import scripts
from janitor.reports import findings
from janitor.service.jobs.base import Context, Job, Outcome
from janitor.service.readings import Unchanged

log = structlog.get_logger("janitor.jobs.beat")


class BeatJob(Job):
    name = "redbeat"
    interval_setting = "broker_interval"
    quiet = True  # one cheap read as often as the broker check: a line only when beat has stopped

    def on_results_server(self, settings: Settings) -> bool:
        # RedBeat lives with the broker (redbeat_redis_url defaults to broker_url).
        return not settings.broker_apart

    def __init__(self, settings: Settings) -> None:
        self.unchanged = Unchanged(BROKER_WRITES, refresh=settings.census_interval)

    def run(self, ctx: Context) -> Outcome:
        tally = scripts.Tally()
        try:
            reason = self.unchanged.begin(ctx.broker_readings, ctx.broker, tally)
            if reason:
                return Outcome({"commands": sum(tally.commands.values())}, skipped=reason)
            report = beat.check(ctx.broker, ctx.settings, now=ctx.clock(), tally=tally)
        finally:
            ctx.metrics.add_commands(tally.commands)
        # Without a schedule there is nothing to fall overdue: only a write can start one.
        self.unchanged.ran(reusable=not report.present)
        if ctx.lease.held():
            ctx.metrics.beat_seen(report)
        ctx.book.checked_beat(report)
        for f in findings.beat_not_scheduling(findings.Inputs(census=None, redbeat=report)):
            log.warning("beat.not_scheduling", title=f.title, evidence=f.evidence, fix=f.fix)
        return Outcome({"present": report.present, "entries": report.entries, "overdue": report.overdue})
