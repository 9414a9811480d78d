"""Prometheus metrics for broker health (:mod:`janitor.sweeps.broker`).

``celery_queue_length{queue_name}`` keeps the name and label that existing
Celery dashboards and exporters use, so alerts carry over unchanged.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from janitor.sweeps.broker import STATES, BrokerReport, RestoreReport, top_task_names

STUCK_TASK_NAMES_CAP = 20  # label cardinality: the rest is reported as task_name="other"


class BrokerMetrics:
    """Gauges set from each :class:`BrokerReport`, counters fed by each :class:`RestoreReport`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.queue_length = Gauge(
            "celery_queue_length",
            "Messages waiting in a Celery queue (all priorities)",
            ["queue_name"],
            registry=registry,
        )
        self.priority_length = Gauge(
            "janitor_queue_priority_length",
            "Messages waiting in one priority list of a queue",
            ["queue_name", "priority"],
            registry=registry,
        )
        self.queue_oldest = Gauge(
            "janitor_queue_oldest_age_seconds",
            "Age of the next message to be consumed, when its publisher stamped one",
            ["queue_name"],
            registry=registry,
        )
        self.unacked = Gauge(
            "janitor_unacked_messages", "Delivered, unacknowledged messages by state", ["state"], registry=registry
        )
        self.unacked_oldest = Gauge(
            "janitor_unacked_oldest_age_seconds", "Age of the oldest delivery in unacked_index", registry=registry
        )
        self.stuck = Gauge(
            "janitor_stuck_messages",
            f"Messages past the visibility timeout by task (top {STUCK_TASK_NAMES_CAP}, rest as 'other')",
            ["task_name"],
            registry=registry,
        )
        self.orphaned = Gauge(
            "janitor_orphaned_started_tasks",
            "STARTED tasks whose worker sends no heartbeat",
            registry=registry,
        )
        self.workers = Gauge(
            "celery_workers_alive", "Workers heard from within 2 x their heartbeat interval", registry=registry
        )
        self.leaked_replies = Gauge(
            "janitor_leaked_reply_lists", "pidbox reply lists left by control callers that are gone", registry=registry
        )
        self.visibility_timeout = Gauge(
            "janitor_visibility_timeout_seconds", "The visibility timeout the janitor judges by", registry=registry
        )
        self.max_eta_delay = Gauge(
            "janitor_max_eta_delay_seconds",
            "Longest ETA - delivery seen; above the visibility timeout, kombu redelivers it repeatedly",
            registry=registry,
        )
        self.restored = Counter(
            "janitor_restored_total", "Stuck messages pushed back to their queue", ["queue"], registry=registry
        )
        self.dead_lettered = Counter(
            "janitor_dead_lettered_total", "Messages moved to janitor.dead.<queue>", ["queue"], registry=registry
        )

    def observe(self, report: BrokerReport) -> None:
        self.reset()  # a queue or task that is gone stops being reported
        for q in report.queues:
            self.queue_length.labels(queue_name=q.name).set(q.total)
            # Counters exist at 0 from the first check, so increase() sees the first restore.
            self.restored.labels(queue=q.name)
            self.dead_lettered.labels(queue=q.name)
            for priority, length in q.by_priority.items():
                self.priority_length.labels(queue_name=q.name, priority=str(priority)).set(length)
            if q.oldest_age_s is not None:
                self.queue_oldest.labels(queue_name=q.name).set(q.oldest_age_s)
        for state in STATES:
            self.unacked.labels(state=state).set(report.by_state[state])
        self.unacked_oldest.set(report.oldest_unacked_age_s or 0.0)
        for name, count in top_task_names(report.stuck, STUCK_TASK_NAMES_CAP).items():
            self.stuck.labels(task_name=name).set(count)
        self.orphaned.set(len(report.orphaned_started))
        if report.workers_alive is not None:
            self.workers.set(report.workers_alive)
        self.leaked_replies.set(report.leaked_reply_lists)
        self.visibility_timeout.set(report.visibility_timeout)
        self.max_eta_delay.set(report.max_eta_delay_s or 0.0)

    def reset(self) -> None:
        """Forget the last report: a replica that lost the lease must not export its stale view for ever."""
        for gauge in (self.queue_length, self.priority_length, self.queue_oldest, self.stuck, self.unacked):
            gauge.clear()
        for plain in (self.unacked_oldest, self.orphaned, self.workers, self.leaked_replies, self.max_eta_delay):
            plain.set(0)

    def observe_restore(self, report: RestoreReport) -> None:
        if report.dry_run:
            return
        for queue, n in report.restored.items():
            self.restored.labels(queue=queue).inc(n)
        for queue, n in report.dead_lettered.items():
            self.dead_lettered.labels(queue=queue).inc(n)
