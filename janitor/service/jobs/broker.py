"""The broker check: unacked, stuck and running messages, queues, heartbeats; the opt-in restore."""

from __future__ import annotations

from typing import Any

import structlog

from janitor.config import Settings
from janitor.operations import broker, dead_letters, queues
from janitor.operations.writes import BROKER_WRITES
from janitor.redis_io import scripts
from janitor.reports import findings
from janitor.service.jobs.base import Context, Job, Outcome
from janitor.service.readings import Unchanged

log = structlog.get_logger("janitor.jobs.broker")


class BrokerJob(Job):
    name = "broker"
    interval_setting = "broker_interval"

    def __init__(self, settings: Settings) -> None:
        # New queues are rare; finding them costs a full SCAN, so as often as the census.
        self.catalog = broker.QueueCatalog(every=settings.census_interval)
        self.sightings = broker.Sightings(min_gap=settings.broker_interval / 2)
        self.warned: set[str] = set()  # tasks already logged as running past the visibility timeout
        self.heads = queues.HeadWatch()
        # A check that found nothing waiting is read again at least as often as the census even when
        # Redis counted no write: broker keys with a TTL (reply queues) can go without one.
        self.unchanged = Unchanged(BROKER_WRITES, refresh=settings.census_interval)

    def first_run(self, settings: Settings) -> float:
        return min(self.interval(settings), 5.0)

    def on_results_server(self, settings: Settings) -> bool:
        # Reaching a broker that lives elsewhere says nothing of the results' Redis.
        return not settings.broker_apart

    def run(self, ctx: Context) -> Outcome:
        tally = scripts.Tally()
        now = ctx.clock()
        try:
            reason = self.unchanged.begin(ctx.broker_readings, ctx.broker, tally)
            if reason:
                return Outcome({"commands": sum(tally.commands.values())}, skipped=reason)
            report = broker.detect(
                ctx.broker,
                ctx.settings,
                now=now,
                workers=ctx.workers,
                tally=tally,
                catalog=self.catalog,
                results=ctx.client,
            )
            confirmed = self.sightings.confirm(report)
            restored = broker.auto_restore(ctx.broker, ctx.settings, report, confirmed=confirmed, tally=tally)
            trimmed = self._dead_letters(ctx, report, tally, now)
        finally:
            ctx.metrics.add_commands(tally.commands)
        if ctx.lease.held():
            ctx.metrics.seen.update(broker=report)
            ctx.metrics.queues_seen(report)
        self._warn_overdue(report)
        workers = findings.Workers(ctx.workers.alive(now), ctx.workers.listened_for(now))
        ctx.book.checked_broker(report, workers)
        fields: dict[str, Any] = {
            "unacked": report.unacked_total,
            "states": report.by_state,
            "stuck": len(report.stuck),
            "workers_alive": len(workers.alive),
        }
        for queue, n in trimmed.items():
            ctx.metrics.counter("janitor_dead_letters_trimmed_total").labels(queue=queue).inc(n)
        if trimmed:
            fields["dead_letters_trimmed"] = trimmed
        if restored is not None:
            ctx.metrics.restored(restored)
            fields["restore"] = restored.as_dict()
        self.unchanged.ran(reusable=_quiet(report))
        return Outcome(fields)

    def _dead_letters(
        self, ctx: Context, report: broker.BrokerReport, tally: scripts.Tally, now: float
    ) -> dict[str, int]:
        """Trim the dead-letter lists (leader only, never in a dry run); their lengths and each queue's
        head wait go into the report."""
        names = [q.name for q in report.queues]
        trimmed = {}
        if ctx.lease.held() and not ctx.settings.dry_run:
            trimmed = dead_letters.trim(ctx.broker, ctx.settings, queues=names, now=now, tally=tally)
        report.dead_letters = queues.dead_lengths(ctx.broker, ctx.settings, names, tally)
        report.head_wait_s = self.heads.observe(report)
        return trimmed

    def _warn_overdue(self, report: broker.BrokerReport) -> None:
        """One log line per task found running past the visibility timeout (kombu will redeliver it)."""
        overdue = {m.task_id: m for m in report.overdue_running}
        for task_id in overdue.keys() - self.warned:
            m = overdue[task_id]
            log.warning(
                "broker.running_overdue",
                task=m.task_name,
                task_id=task_id,
                worker=m.worker,
                running_s=round(report.now - m.delivered_at),
                visibility_timeout_s=report.visibility_timeout,
                fix="raise visibility_timeout above your longest task: kombu will redeliver it",
            )
        self.warned = set(overdue)


def _quiet(report: broker.BrokerReport) -> bool:
    """Nothing in the check changes with time alone: no message delivered or waiting, no dead letter
    (their ages are what the findings and the trim judge), nothing left unread."""
    return not (
        report.unacked_total
        or any(q.total for q in report.queues)
        or any(report.dead_letters.values())
        or report.truncated
    )
