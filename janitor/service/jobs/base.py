"""The shape of a daemon job, and what a job may use while it runs."""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import redis

from janitor.config import Settings
from janitor.redis_io.heartbeats import WorkerTracker
from janitor.redis_io.lease import Lease
from janitor.service.metrics import Metrics
from janitor.service.readings import Readings
from janitor.service.status_book import StatusBook
from janitor.service.watcher import Watcher


@dataclass
class Context:
    """What every job is handed: the settings, both Redis clients and the service's shared parts."""

    settings: Settings
    client: redis.Redis  # the results' Redis: sweeps, census, INFO, the lease
    broker: redis.Redis  # the broker's: the same client unless JANITOR_BROKER_URL names another
    lease: Lease
    metrics: Metrics
    book: StatusBook
    workers: WorkerTracker
    stop: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], float] = time.time
    # The newest INFO reading of each server: what tells a job whether anything was written since its last run.
    readings: Readings = field(default_factory=Readings)
    broker_readings: Readings = field(init=False)  # the broker's, when it is apart; else ``readings``
    watch: Watcher | None = None  # watch mode's listener, while this instance leads (JANITOR_WATCH)

    def __post_init__(self) -> None:
        self.broker_readings = self.readings if self.broker is self.client else Readings()

    def should_stop(self) -> bool:
        """Checked between batches: shutting down, or the lease may have lapsed locally (the fence
        inside each script is what makes a late batch harmless)."""
        return self.stop.is_set() or not self.lease.held()


@dataclass(frozen=True)
class Outcome:
    """What one run did: the fields of its log line; ``completed`` False when it stopped part way."""

    fields: Mapping[str, Any] = field(default_factory=dict)
    completed: bool = True
    skipped: str = ""  # why the run had nothing to do and sent (almost) nothing: a label of *_skipped_total


class Job(abc.ABC):
    """One scheduled job. The daemon runs :meth:`run` every ``interval_setting`` seconds (with jitter,
    never two at once), times it, counts its errors under its own name and logs one line per run."""

    name: ClassVar[str]
    interval_setting: ClassVar[str]  # the Settings field holding its interval, in seconds
    # A sweep writes keys; its metrics are janitor_sweep_*{sweep=name}, every other job's are
    # janitor_job_*{job_name=name}.
    series: ClassVar[Literal["sweep", "job"]] = "job"
    leader_only: ClassVar[bool] = True
    # Its last run failing makes /readyz 503 while this instance leads (a run the lease's fence
    # refused excepted: that run was not this leader's).
    readiness: ClassVar[bool] = False
    first_after: ClassVar[str | None] = None  # its first run comes right after that job's first full run
    # Runs too often for a line per run: success logs at debug, and Redis being away says "redis.down" only.
    quiet: ClassVar[bool] = False

    def interval(self, settings: Settings) -> float:
        return float(getattr(settings, self.interval_setting))

    def first_run(self, settings: Settings) -> float:
        """Seconds from start to the first run (leader-only jobs are also brought forward by events)."""
        return self.interval(settings)

    def on_results_server(self, settings: Settings) -> bool:
        """Whether this job's success or failure says the results' Redis is up or down (health, /readyz)."""
        return True

    @abc.abstractmethod
    def run(self, ctx: Context) -> Outcome:
        """One run; raise on failure (the daemon classifies, counts and logs it)."""
