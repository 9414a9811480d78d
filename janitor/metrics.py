"""Every metric the daemon exports, created on an injected registry.

Names, units and help live here only. Counters follow the daemon's own work;
what Redis reports (INFO) and what the last census counted are snapshots,
exported by a collector that builds fresh families on each scrape, so a
replaced snapshot never shows half of the old one and half of the new.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from janitor import __version__
from janitor.census import Census
from janitor.sweeps.results import SweepReport

# Sweeps take milliseconds on an empty Redis and many minutes on a dirty one.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    """The daemon's metric objects, all on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # Counters and histograms would also export a `_created` gauge per label
        # set; it doubles the series and no dashboard reads it.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry
        self.sweep_duration = Histogram(
            "janitor_sweep_duration_seconds",
            "Wall time of one run of a sweep, finished or not.",
            ["sweep"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.sweep_last_success = Gauge(
            "janitor_sweep_last_success_timestamp_seconds",
            "Unix time the sweep last completed a full pass without error.",
            ["sweep"],
            registry=registry,
        )
        self.sweep_errors = Counter(
            "janitor_sweep_errors_total", "Sweep runs that ended in an error.", ["sweep", "error"], registry=registry
        )
        self.sweep_overruns = Counter(
            "janitor_sweep_overruns_total",
            "Scheduled runs skipped because the previous run of the same sweep was still going.",
            ["sweep"],
            registry=registry,
        )
        self.keys_scanned = Counter(
            "janitor_keys_scanned_total", "Keys returned by SCAN.", ["sweep"], registry=registry
        )
        self.keys_ttl_applied = Counter(
            "janitor_keys_ttl_applied_total", "Keys given a TTL (they had none).", ["kind"], registry=registry
        )
        self.keys_ttl_capped = Counter(
            "janitor_keys_ttl_capped_total", "Keys whose longer TTL was shortened.", ["kind"], registry=registry
        )
        self.keys_deleted = Counter(
            "janitor_keys_deleted_total", "Keys deleted (UNLINK).", ["kind", "reason"], registry=registry
        )
        self.keys_skipped = Counter(
            "janitor_keys_skipped_total",
            "Keys under a Celery name left alone because they could not be understood.",
            ["reason"],
            registry=registry,
        )
        self.keys_raced = Counter(
            "janitor_keys_raced_total",
            "Keys left alone because they changed between inspection and action.",
            registry=registry,
        )
        self.deleted_bytes = Counter(
            "janitor_deleted_value_bytes_total", "Value bytes of the keys deleted.", registry=registry
        )
        self.redis_commands = Counter(
            "janitor_redis_commands_total",
            "Commands sent to Redis (each one is billed on Upstash).",
            ["command"],
            registry=registry,
        )
        self.redis_errors = Counter(
            "janitor_redis_errors_total", "Failed Redis operations, by cause.", ["error"], registry=registry
        )
        self.redis_up = Gauge(
            "janitor_redis_up", "1 when the last Redis operation succeeded, else 0.", registry=registry
        )
        self.is_leader = Gauge(
            "janitor_is_leader", "1 while this instance holds the sweep lease, else 0.", registry=registry
        )
        self.lease_acquired = Counter(
            "janitor_lease_acquisitions_total", "Times this instance acquired the sweep lease.", registry=registry
        )
        self.dry_run = Gauge(
            "janitor_dry_run", "1 when the janitor writes nothing (JANITOR_DRY_RUN).", registry=registry
        )
        self.build_info = Gauge(
            "janitor_build_info", "Always 1; the version as a label.", ["version"], registry=registry
        )
        self.build_info.labels(__version__).set(1)
        self.snapshots = Snapshots()
        registry.register(self.snapshots)

    def add_commands(self, commands: Mapping[str, int]) -> None:
        for command, n in commands.items():
            if n:
                self.redis_commands.labels(command).inc(n)


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
        m = self.metrics
        self._add(m.keys_scanned.labels(self.sweep), ("scanned", ""), report.scanned)
        self._add(m.keys_raced, ("raced", ""), report.raced)
        self._add(m.deleted_bytes, ("bytes", ""), report.bytes_deleted)
        for kind, n in report.ttl_applied.items():
            self._add(m.keys_ttl_applied.labels(kind), ("ttl", kind), n)
        for kind, n in report.ttl_capped.items():
            self._add(m.keys_ttl_capped.labels(kind), ("cap", kind), n)
        for kind, n in report.deleted.items():
            self._add(m.keys_deleted.labels(kind, "retention"), ("deleted", kind), n)
        for reason, n in report.skipped.items():
            self._add(m.keys_skipped.labels(reason), ("skipped", reason), n)
        for command, n in report.tally.commands.items():
            self._add(m.redis_commands.labels(command), ("command", command), n)

    def _add(self, counter: Counter, key: tuple[str, str], total: int) -> None:
        delta = total - self._seen.get(key, 0)
        if delta > 0:
            counter.inc(delta)
            self._seen[key] = total


# Celery's own states; anything else is a custom state. Keeps the label set small.
KNOWN_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED", "STARTED", "RETRY", "PENDING", "RECEIVED", "REJECTED"})


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
class Snapshots:
    """A collector for the latest Redis INFO and result census (None until first read)."""

    info: Mapping[str, Any] | None = None
    census: ResultCensus | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, *, info: Mapping[str, Any] | None = None, census: ResultCensus | None = None) -> None:
        with self._lock:
            self.info = info if info is not None else self.info
            self.census = census if census is not None else self.census

    def forget_census(self) -> None:
        with self._lock:
            self.census = None

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            info, census = self.info, self.census
        if census is not None:
            yield from _census_families(census)
        if info is not None:
            yield from _info_families(info)


def _census_families(census: ResultCensus) -> Iterable[Metric]:
    keys = GaugeMetricFamily(
        "janitor_result_keys",
        "Celery result keys at the last census, by task state and whether they have a TTL.",
        labels=["state", "ttl"],
    )
    for (state, has_ttl), n in sorted(census.keys.items()):
        keys.add_metric([state, str(has_ttl).lower()], n)
    yield keys
    yield GaugeMetricFamily(
        "janitor_result_oldest_age_seconds",
        "Age (now - date_done) of the oldest finished result at the last census; 0 when there is none.",
        value=census.oldest_age_s,
    )


def _info_families(info: Mapping[str, Any]) -> Iterable[Metric]:
    """A few INFO fields, so a platform without redis_exporter still sees memory pressure."""
    yield _gauge("janitor_redis_memory_used_bytes", "Redis used_memory.", info.get("used_memory"))
    yield _gauge("janitor_redis_memory_max_bytes", "Redis maxmemory (0: no limit).", info.get("maxmemory"))
    yield _gauge("janitor_redis_connected_clients", "Redis connected_clients.", info.get("connected_clients"))
    policy = GaugeMetricFamily(
        "janitor_redis_maxmemory_policy_info", "Always 1; Redis maxmemory-policy as a label.", labels=["policy"]
    )
    policy.add_metric([str(info.get("maxmemory_policy", "unknown"))], 1)
    yield policy
    for name, field_name, text in (
        ("janitor_redis_evicted_keys_total", "evicted_keys", "Keys Redis evicted under maxmemory (INFO stats)."),
        ("janitor_redis_expired_keys_total", "expired_keys", "Keys Redis expired (INFO stats)."),
    ):
        counter = CounterMetricFamily(name, text)
        counter.add_metric([], float(info.get(field_name, 0)))
        yield counter
    keys = GaugeMetricFamily("janitor_redis_db_keys", "Keys per database (INFO keyspace).", labels=["db"])
    expiring = GaugeMetricFamily(
        "janitor_redis_db_keys_expiring", "Keys with a TTL per database (INFO keyspace).", labels=["db"]
    )
    for name, value in sorted(info.items()):
        if name.startswith("db") and name[2:].isdigit() and isinstance(value, Mapping):
            keys.add_metric([name[2:]], float(value.get("keys", 0)))
            expiring.add_metric([name[2:]], float(value.get("expires", 0)))
    yield keys
    yield expiring


def _gauge(name: str, text: str, value: Any) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=float(value or 0))
