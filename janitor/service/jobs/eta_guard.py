"""The ETA guard: held ETA messages re-scored so kombu's own restore waits until their ETA plus a grace
(``janitor.operations.guards``); and the shape both guards share."""

from __future__ import annotations

from typing import ClassVar

import structlog

from janitor.config import Settings
from janitor.operations import broker, guards
from janitor.redis_io import scripts
from janitor.service.jobs.base import Context, Job, Outcome

log = structlog.get_logger("janitor.jobs.guard")


class GuardJob(Job):
    """Walk ``unacked_index``, plan the re-scores of one guard, apply them under kombu's mutex."""

    guard: ClassVar[guards.Guard]
    interval_setting = "guard_interval"

    def __init__(self, settings: Settings) -> None:
        interval, vt = self.interval(settings), settings.visibility_timeout
        if not guards.keeps_up(interval, vt):
            log.warning(
                "guard.interval_too_long",
                guard=self.guard,
                interval_s=interval,
                visibility_timeout_s=vt,
                fix=f"set JANITOR_GUARD_INTERVAL to at most {vt / guards.RUNS_PER_TIMEOUT:g} (a third of "
                "JANITOR_VISIBILITY_TIMEOUT): kombu may restore a message before the guard re-scores it",
            )

    def first_run(self, settings: Settings) -> float:
        return min(self.interval(settings), 5.0)

    def on_results_server(self, settings: Settings) -> bool:
        return not settings.broker_apart

    def run(self, ctx: Context) -> Outcome:
        tally = scripts.Tally()
        try:
            report = broker.detect(
                ctx.broker,
                ctx.settings,
                now=ctx.clock(),
                workers=ctx.workers,
                tally=tally,
                results=ctx.client,
                unacked_only=True,
            )
            planned = guards.plan(report, self.guard, grace=ctx.settings.eta_guard_grace)
            if ctx.should_stop():
                return Outcome(completed=False)
            done = guards.rescore(
                ctx.broker, ctx.settings, planned, guard=self.guard, dry_run=ctx.settings.dry_run, tally=tally
            )
        finally:
            ctx.metrics.add_commands(tally.commands)
        if not done.dry_run:
            if done.raised:
                ctx.metrics.counter("janitor_rescored_total").labels(self.guard).inc(done.raised)
            for reason, n in done.skipped.items():
                ctx.metrics.counter("janitor_rescore_skipped_total").labels(self.guard, reason).inc(n)
        state = "held" if self.guard == "eta" else "running"
        return Outcome({state: report.by_state[state], **done.as_dict()})


class EtaGuardJob(GuardJob):
    name = "eta_guard"
    guard = "eta"
