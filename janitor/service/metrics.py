"""Every metric the janitor exports: defined once in :data:`METRICS`, created on an injected registry.

Two ways a figure gets out, both from the same definitions:

- events (a key deleted, a job run, a command sent) move counters and histograms as they happen;
- what was last seen (Redis INFO, the last census, the last broker check) is kept as a whole report
  and turned into fresh families by one collector on each scrape, so a scrape never sees half of one
  report and half of the next, and a gauge for something that is gone is simply not there.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from janitor import __version__
from janitor.operations.beat import BeatReport
from janitor.operations.broker import STATES, BrokerReport, RestoreReport, top_task_names
from janitor.operations.census import Census
from janitor.operations.reap import ReapReport
from janitor.operations.sweep import SweepReport

# Sweeps take milliseconds on an empty Redis and many minutes on a dirty one.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# Watch mode's write-to-TTL lag is meant to stay well under a second.
WATCH_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STUCK_TASK_NAMES_CAP = 20  # label cardinality: the rest is reported as task_name="other"
# Celery's own states; anything else is a custom state. Keeps the label set small.
KNOWN_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED", "STARTED", "RETRY", "PENDING", "RECEIVED", "REJECTED"})


@dataclass(frozen=True)
class Def:
    """One metric: its type, help text and labels. ``seen``: exported from the last report, not counted."""

    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...] = ()
    seen: bool = False
    buckets: tuple[float, ...] = DURATION_BUCKETS  # histograms only


def _job(label: str, what: str) -> dict[str, Def]:
    """The four series every scheduled job exports, under ``janitor_<label>_*{<label>=...}``."""
    prefix = f"janitor_{label}"
    name = (label if label == "sweep" else "job_name",)
    return {
        f"{prefix}_duration_seconds": Def("histogram", f"Wall time of one run of a {what}, finished or not.", name),
        f"{prefix}_last_success_timestamp_seconds": Def(
            "gauge", f"Unix time the {what} last completed without error.", name
        ),
        f"{prefix}_errors_total": Def("counter", f"Runs of a {what} that ended in an error.", (*name, "error")),
        f"{prefix}_overruns_total": Def(
            "counter", f"Scheduled runs of a {what} skipped because its previous run was still going.", name
        ),
        f"{prefix}_skipped_total": Def(
            "counter",
            f"Scheduled runs of a {what} not needed: Redis counted no write that could give it work, or watch mode"
            " covers it (reason).",
            (*name, "reason"),
        ),
    }


METRICS: dict[str, Def] = {
    # Jobs. A job that writes keys is a sweep; census, broker and INFO reads are jobs.
    **_job("sweep", "sweep"),
    **_job("job", "job"),
    # What the sweeps did.
    "janitor_keys_scanned_total": Def("counter", "Keys returned by SCAN.", ("sweep",)),
    "janitor_keys_ttl_applied_total": Def("counter", "Keys given a TTL (they had none).", ("kind",)),
    "janitor_keys_ttl_capped_total": Def("counter", "Keys whose longer TTL was shortened.", ("kind",)),
    "janitor_keys_deleted_total": Def("counter", "Keys deleted (UNLINK).", ("kind", "reason")),
    "janitor_keys_skipped_total": Def(
        "counter", "Keys under a Celery name left alone because they could not be understood.", ("reason",)
    ),
    "janitor_keys_raced_total": Def("counter", "Keys left alone because they changed between inspection and action."),
    "janitor_deleted_value_bytes_total": Def("counter", "Value bytes of the keys deleted."),
    "janitor_skipped_value_bytes_total": Def(
        "counter", "Value bytes of the keys skipped, by reason (what stays in Redis until someone acts).", ("reason",)
    ),
    # Talking to Redis, and this instance.
    "janitor_redis_commands_total": Def(
        "counter", "Commands sent to Redis (each one is billed on Upstash).", ("command",)
    ),
    "janitor_redis_errors_total": Def("counter", "Failed Redis operations, by cause.", ("error",)),
    "janitor_redis_up": Def("gauge", "1 when the last Redis operation succeeded, else 0."),
    "janitor_is_leader": Def("gauge", "1 while this instance holds the sweep lease, else 0."),
    "janitor_lease_acquisitions_total": Def("counter", "Times this instance acquired the sweep lease."),
    "janitor_dry_run": Def("gauge", "1 when the janitor writes nothing (JANITOR_DRY_RUN)."),
    "janitor_command_budget_daily": Def("gauge", "JANITOR_DAILY_COMMAND_BUDGET: commands a day the janitor may send."),
    "janitor_commands_planned_daily": Def(
        "gauge", "Commands a day the planned intervals add up to, at each job's measured cost per run."
    ),
    "janitor_job_planned_interval_seconds": Def(
        "gauge",
        "Seconds between runs of each job as the command budget plans them (the freshness it buys).",
        ("job_name",),
    ),
    "janitor_build_info": Def("gauge", "Always 1; the version as a label.", ("version",)),
    # The guards raise unacked_index scores so kombu's own restore waits (eta: held ETA messages; running).
    "janitor_rescored_total": Def("counter", "unacked_index scores raised by a guard", ("guard",)),
    "janitor_rescore_skipped_total": Def(
        "counter", "Re-scores a guard left undone: gone, changed, lower, mutex_held, fenced", ("guard", "reason")
    ),
    # Restores move messages: counted as they happen, by queue.
    "janitor_restored_total": Def("counter", "Stuck messages pushed back to their queue", ("queue",)),
    "janitor_dead_lettered_total": Def("counter", "Messages moved to janitor.dead.<queue>", ("queue",)),
    # Watch mode (JANITOR_WATCH): new result and group keys judged from keyspace notifications.
    "janitor_watch_active": Def(
        "gauge", "1 while the leader is subscribed to keyspace notifications (watch mode), else 0 (full passes only)."
    ),
    "janitor_watch_keys_total": Def("counter", "Result and group keys judged from keyspace notifications."),
    "janitor_watch_gaps_total": Def(
        "counter", "Times watch mode may have missed writes, by cause; each asks for a full pass.", ("reason",)
    ),
    "janitor_watch_lag_seconds": Def(
        "histogram", "From a key's notification to the end of the batch that judged it.", buckets=WATCH_LAG_BUCKETS
    ),
    # The last census (leader only).
    "janitor_result_keys": Def(
        "gauge",
        "Celery result keys at the last census, by task state and whether they have a TTL.",
        ("state", "ttl"),
        seen=True,
    ),
    "janitor_result_oldest_age_seconds": Def(
        "gauge",
        "Age (now - date_done) of the oldest finished result at the last census; 0 when there is none.",
        seen=True,
    ),
    # The last broker check (leader only). celery_queue_length keeps the name and label existing
    # Celery dashboards and exporters use, so their alerts carry over.
    "celery_queue_length": Def("gauge", "Messages waiting in a Celery queue (all priorities)", ("queue_name",), True),
    "janitor_queue_priority_length": Def(
        "gauge", "Messages waiting in one priority list of a queue", ("queue_name", "priority"), True
    ),
    "janitor_queue_oldest_age_seconds": Def(
        "gauge", "Age of the next message to be consumed, when its publisher stamped one", ("queue_name",), True
    ),
    "janitor_unacked_messages": Def("gauge", "Delivered, unacknowledged messages by state", ("state",), True),
    "janitor_unacked_messages_by_queue": Def(
        "gauge", "Delivered, unacknowledged messages by queue (routing key) and state", ("queue_name", "state"), True
    ),
    "janitor_queue_backlog": Def(
        "gauge", "Messages waiting plus delivered-unacked in a queue (what an autoscaler needs)", ("queue_name",), True
    ),
    "janitor_queue_head_wait_seconds": Def(
        "gauge",
        "How long the next message of a queue has been its next, across broker checks (a lower bound)",
        ("queue_name",),
        True,
    ),
    "janitor_dead_letters": Def("gauge", "Messages held in janitor.dead.<queue>", ("queue",), True),
    "janitor_dead_letters_trimmed_total": Def(
        "counter", "Dead letters dropped past JANITOR_DEAD_MAX or JANITOR_DEAD_MAX_AGE", ("queue",)
    ),
    "janitor_unacked_oldest_age_seconds": Def("gauge", "Age of the oldest delivery in unacked_index", seen=True),
    "janitor_stuck_messages": Def(
        "gauge",
        f"Messages past the visibility timeout by task (top {STUCK_TASK_NAMES_CAP}, rest as 'other')",
        ("task_name",),
        True,
    ),
    "janitor_orphaned_started_tasks": Def("gauge", "STARTED tasks whose worker sends no heartbeat", seen=True),
    "celery_workers_alive": Def("gauge", "Workers heard from within 2 x their heartbeat interval", seen=True),
    "janitor_leaked_reply_lists": Def("gauge", "pidbox reply lists left by control callers that are gone", seen=True),
    "janitor_visibility_timeout_seconds": Def("gauge", "The visibility timeout the janitor judges by", seen=True),
    "janitor_max_eta_delay_seconds": Def(
        "gauge", "Longest ETA - delivery seen; above the visibility timeout, kombu redelivers it repeatedly", seen=True
    ),
    # The last INFO read, so a platform without redis_exporter still sees memory pressure.
    "janitor_redis_memory_used_bytes": Def("gauge", "Redis used_memory.", seen=True),
    "janitor_redis_memory_max_bytes": Def("gauge", "Redis maxmemory (0: no limit).", seen=True),
    "janitor_redis_connected_clients": Def("gauge", "Redis connected_clients.", seen=True),
    "janitor_redis_maxmemory_policy_info": Def(
        "gauge", "Always 1; Redis maxmemory-policy as a label.", ("policy",), True
    ),
    "janitor_redis_evicted_keys_total": Def("counter", "Keys Redis evicted under maxmemory (INFO stats).", seen=True),
    "janitor_redis_expired_keys_total": Def("counter", "Keys Redis expired (INFO stats).", seen=True),
    "janitor_redis_db_keys": Def("gauge", "Keys per database (INFO keyspace).", ("db",), True),
    "janitor_redis_db_keys_expiring": Def("gauge", "Keys with a TTL per database (INFO keyspace).", ("db",), True),
    # The reaper (JANITOR_REAP_ABANDONED): abandoned STARTED results rewritten to FAILURE.
    "janitor_reaped_tasks_total": Def("counter", "Abandoned STARTED results rewritten to FAILURE (WorkerLostError)."),
    "janitor_reap_skipped_total": Def(
        "counter", "STARTED results the reaper left alone, by reason (alive, recent, in_unacked, ...).", ("reason",)
    ),
    # RedBeat's schedule (JANITOR_REDBEAT_PREFIX + ":schedule"), as the leader last saw it; 0 without RedBeat.
    "janitor_beat_schedule_entries": Def("gauge", "Entries in RedBeat's schedule at the last check."),
    "janitor_beat_overdue_entries": Def(
        "gauge", "RedBeat entries late by more than their interval (or JANITOR_BEAT_OVERDUE_AFTER): beat has stopped."
    ),
}


class Metrics:
    """The counting metrics of :data:`METRICS` on ``registry``, and the collector of the seen ones."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # Counters and histograms would also export a `_created` gauge per label
        # set; it doubles the series and no dashboard reads it.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry
        self._live: dict[str, Counter | Gauge | Histogram] = {}
        for name, d in METRICS.items():
            if d.seen:
                continue
            if d.kind == "histogram":
                self._live[name] = Histogram(name, d.help, d.labels, buckets=d.buckets, registry=registry)
            elif d.kind == "counter":
                self._live[name] = Counter(name, d.help, d.labels, registry=registry)
            else:
                self._live[name] = Gauge(name, d.help, d.labels, registry=registry)
        self.gauge("janitor_build_info").labels(__version__).set(1)
        self.seen = Seen()
        registry.register(self.seen)
        self._sent = threading.local()

    def counter(self, name: str) -> Counter:
        metric = self._live[name]
        assert isinstance(metric, Counter), name
        return metric

    def gauge(self, name: str) -> Gauge:
        metric = self._live[name]
        assert isinstance(metric, Gauge), name
        return metric

    def histogram(self, name: str) -> Histogram:
        metric = self._live[name]
        assert isinstance(metric, Histogram), name
        return metric

    def add_commands(self, commands: Mapping[str, int]) -> None:
        for command, n in commands.items():
            if n > 0:
                self.counter("janitor_redis_commands_total").labels(command).inc(n)
        self._sent.n = self.sent_on_this_thread() + sum(commands.values())

    def sent_on_this_thread(self) -> int:
        """Commands counted so far by the calling thread: a job's own, since each run has one thread."""
        return int(getattr(self._sent, "n", 0))

    def restored(self, report: RestoreReport) -> None:
        if report.dry_run:
            return
        for queue, n in report.restored.items():
            self.counter("janitor_restored_total").labels(queue=queue).inc(n)
        for queue, n in report.dead_lettered.items():
            self.counter("janitor_dead_lettered_total").labels(queue=queue).inc(n)

    def reaped(self, report: ReapReport) -> None:
        if report.dry_run:
            return
        self.counter("janitor_reaped_tasks_total").inc(len(report.reaped))
        for reason, n in report.skipped.items():
            if n:
                self.counter("janitor_reap_skipped_total").labels(reason=reason).inc(n)

    def beat_seen(self, report: BeatReport) -> None:
        self.gauge("janitor_beat_schedule_entries").set(report.entries)
        self.gauge("janitor_beat_overdue_entries").set(report.overdue)

    def queues_seen(self, report: BrokerReport) -> None:
        """Restore counters exist at 0 for every queue from its first check, so increase() sees the first one."""
        for q in report.queues:
            self.counter("janitor_restored_total").labels(queue=q.name)
            self.counter("janitor_dead_lettered_total").labels(queue=q.name)


@dataclass
class SweepRecorder:
    """Turns a growing :class:`SweepReport` into counter increments.

    Called after every batch and once at the end, so the counters move while a
    long sweep runs, and each number is counted once.
    """

    metrics: Metrics
    sweep: str
    _seen: dict[tuple[str, str], int] = field(default_factory=dict)

    def __call__(self, report: SweepReport) -> None:
        c = self.metrics.counter
        self._add(c("janitor_keys_scanned_total").labels(self.sweep), ("scanned", ""), report.scanned)
        self._add(c("janitor_keys_raced_total"), ("raced", ""), report.raced)
        self._add(c("janitor_deleted_value_bytes_total"), ("bytes", ""), report.bytes_deleted)
        for kind, n in report.ttl_applied.items():
            self._add(c("janitor_keys_ttl_applied_total").labels(kind), ("ttl", kind), n)
        for kind, n in report.ttl_capped.items():
            self._add(c("janitor_keys_ttl_capped_total").labels(kind), ("cap", kind), n)
        for kind, n in report.deleted.items():
            self._add(c("janitor_keys_deleted_total").labels(kind, "retention"), ("deleted", kind), n)
        for reason, n in report.skipped.items():
            self._add(c("janitor_keys_skipped_total").labels(reason), ("skipped", reason), n)
        for reason, n in report.skipped_bytes.items():
            self._add(c("janitor_skipped_value_bytes_total").labels(reason), ("skipped_bytes", reason), n)
        sent = {}
        for command, n in report.tally.commands.items():
            sent[command] = n - self._seen.get(("command", command), 0)
            self._seen["command", command] = n
        self.metrics.add_commands(sent)  # counted with the other jobs' (and the running job's own)

    def _add(self, counter: Counter, key: tuple[str, str], total: int) -> None:
        delta = total - self._seen.get(key, 0)
        if delta > 0:
            counter.inc(delta)
            self._seen[key] = total


@dataclass(frozen=True)
class ResultCensus:
    """Result keys by task state and TTL, from one read-only walk."""

    keys: Mapping[tuple[str, bool], int]  # (state, has TTL) -> count
    oldest_age_s: float

    @classmethod
    def of(cls, taken: Census) -> ResultCensus:
        """The census's ``task:<status>`` categories with the state label bounded."""
        counts: dict[tuple[str, bool], int] = {}
        for has_ttl, counter in ((True, taken.with_ttl), (False, taken.without_ttl)):
            for category, n in counter.items():
                if category.startswith("task:"):
                    state = category.removeprefix("task:")
                    state = state if state in KNOWN_STATES or state == "unreadable" else "custom"
                    counts[state, has_ttl] = counts.get((state, has_ttl), 0) + n
        return cls(counts, taken.oldest_result_age_s or 0.0)


@dataclass(eq=False)  # a registry keys its collectors by identity
class Seen:
    """A collector for the latest INFO, result census and broker check (each absent until first seen)."""

    info: Mapping[str, Any] | None = None
    census: ResultCensus | None = None
    broker: BrokerReport | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def update(
        self,
        *,
        info: Mapping[str, Any] | None = None,
        census: ResultCensus | None = None,
        broker: BrokerReport | None = None,
    ) -> None:
        with self._lock:
            self.info = info if info is not None else self.info
            self.census = census if census is not None else self.census
            self.broker = broker if broker is not None else self.broker

    def forget_leader_views(self) -> None:
        """After losing the lease: the new leader exports the census and the broker now."""
        with self._lock:
            self.census = self.broker = None

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            info, census, broker = self.info, self.census, self.broker
        if census is not None:
            yield from _census_families(census)
        if broker is not None:
            yield from _broker_families(broker)
        if info is not None:
            yield from _info_families(info)


def family(name: str, value: float | None = None) -> GaugeMetricFamily | CounterMetricFamily:
    """An empty family for one of :data:`METRICS` (or one sample, for an unlabelled one)."""
    d = METRICS[name]
    labels = list(d.labels) if d.labels else None
    if d.kind == "counter":
        return CounterMetricFamily(name, d.help, value=value, labels=labels)
    return GaugeMetricFamily(name, d.help, value=value, labels=labels)


def _census_families(census: ResultCensus) -> Iterable[Metric]:
    keys = family("janitor_result_keys")
    for (state, has_ttl), n in sorted(census.keys.items()):
        keys.add_metric([state, str(has_ttl).lower()], n)
    yield keys
    yield family("janitor_result_oldest_age_seconds", census.oldest_age_s)


def _broker_families(report: BrokerReport) -> Iterable[Metric]:
    length, by_priority, oldest = (
        family(n) for n in ("celery_queue_length", "janitor_queue_priority_length", "janitor_queue_oldest_age_seconds")
    )
    for q in report.queues:
        length.add_metric([q.name], q.total)
        for priority, n in q.by_priority.items():
            by_priority.add_metric([q.name, str(priority)], n)
        if q.oldest_age_s is not None:
            oldest.add_metric([q.name], q.oldest_age_s)
    yield from (length, by_priority, oldest)
    unacked = family("janitor_unacked_messages")
    for state in STATES:
        unacked.add_metric([state], report.by_state[state])
    yield unacked
    by_queue = family("janitor_unacked_messages_by_queue")
    for (queue, state), n in sorted(report.unacked_by_queue.items()):
        by_queue.add_metric([queue, state], n)
    yield by_queue
    backlog, head_wait, dead = (
        family(n) for n in ("janitor_queue_backlog", "janitor_queue_head_wait_seconds", "janitor_dead_letters")
    )
    for q in report.queues:
        backlog.add_metric([q.name], report.backlog(q))
        if q.name in report.head_wait_s:
            head_wait.add_metric([q.name], report.head_wait_s[q.name])
    for queue, n in sorted(report.dead_letters.items()):
        dead.add_metric([queue], n)
    yield from (backlog, head_wait, dead)
    yield family("janitor_unacked_oldest_age_seconds", report.oldest_unacked_age_s or 0.0)
    stuck = family("janitor_stuck_messages")
    for name, n in top_task_names(report.stuck, STUCK_TASK_NAMES_CAP).items():
        stuck.add_metric([name], n)
    yield stuck
    yield family("janitor_orphaned_started_tasks", len(report.orphaned_started))
    if report.workers_alive is not None:
        yield family("celery_workers_alive", report.workers_alive)
    yield family("janitor_leaked_reply_lists", report.leaked_reply_lists)
    yield family("janitor_visibility_timeout_seconds", report.visibility_timeout)
    yield family("janitor_max_eta_delay_seconds", report.max_eta_delay_s or 0.0)


def _info_families(info: Mapping[str, Any]) -> Iterable[Metric]:
    for name, key in (
        ("janitor_redis_memory_used_bytes", "used_memory"),
        ("janitor_redis_memory_max_bytes", "maxmemory"),
        ("janitor_redis_connected_clients", "connected_clients"),
        ("janitor_redis_evicted_keys_total", "evicted_keys"),
        ("janitor_redis_expired_keys_total", "expired_keys"),
    ):
        yield family(name, float(info.get(key) or 0))
    policy = family("janitor_redis_maxmemory_policy_info")
    policy.add_metric([str(info.get("maxmemory_policy", "unknown"))], 1)
    yield policy
    keys, expiring = family("janitor_redis_db_keys"), family("janitor_redis_db_keys_expiring")
    for name, value in sorted(info.items()):
        if name.startswith("db") and name[2:].isdigit() and isinstance(value, Mapping):
            keys.add_metric([name[2:]], float(value.get("keys", 0)))
            expiring.add_metric([name[2:]], float(value.get("expires", 0)))
    yield keys
    yield expiring
