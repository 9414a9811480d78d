"""``celery-janitor run``: scheduled sweeps behind a lease, metrics and health over HTTP.

Threads: the main one waits for SIGTERM/SIGINT; APScheduler runs the jobs;
the lease keeper renews or polls the lease; wsgiref serves HTTP. Redis being
away is a state, not a crash: it is logged once when it changes, shown as
``janitor_redis_up 0`` and a 503 on ``/readyz``, and retried with back-off.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import redis
import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry
from redis.backoff import NoBackoff
from redis.retry import Retry

from janitor import __version__, config, errors
from janitor.config import Settings
from janitor.errors import Exit
from janitor.redis_io import cluster, connection
from janitor.redis_io.heartbeats import WorkerTracker
from janitor.redis_io.lease import Change, Keeper, Lease
from janitor.service import budget, http, probes, scheduler
from janitor.service import jobs as all_jobs
from janitor.service.health import RedisHealth
from janitor.service.jobs import Context, Job, Outcome
from janitor.service.jobs.info import InfoJob
from janitor.service.jobs.results import ResultsJob
from janitor.service.metrics import Metrics
from janitor.service.status_book import Live, StatusBook
from janitor.service.watcher import Watcher

SIGNALS = {signal.SIGTERM, signal.SIGINT}
# Under a command budget the lease's renewals are planned like a job, up to a one-hour TTL.
LEASE = "lease_renewal"
LONGEST = {LEASE: 3600 / 3}

log = structlog.get_logger("janitor.daemon")


def run(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean stop, 2 when it cannot start."""
    if not settings.redis_url:
        print(config.NO_URL, file=sys.stderr)
        return Exit.BAD_CONFIG
    # Block the signals before any thread starts, so every thread inherits the
    # mask and the main thread alone takes them with sigwait: no handler runs
    # at an arbitrary point of another call, and it works as PID 1.
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        daemon = Daemon.create(settings)
        daemon.start()
    except connection.URLError as exc:
        print(f"celery-janitor: {settings.redis_url_source}: {exc}", file=sys.stderr)
        return Exit.BAD_CONFIG
    except OSError as exc:
        where = f"{settings.metrics_host or '[::]'}:{settings.metrics_port}"
        print(f"celery-janitor: cannot listen on {where}: {exc}; set JANITOR_METRICS_PORT", file=sys.stderr)
        return Exit.BAD_CONFIG
    signum = signal.sigwait(SIGNALS)
    log.info("daemon.stopping", signal=signal.Signals(signum).name, timeout_s=settings.shutdown_timeout)
    code = daemon.stop()
    if code != Exit.OK:
        # A job is still inside a Redis call; its non-daemon executor thread would hold exit.
        sys.stderr.flush()
        os._exit(code)
    return code


@dataclass
class Daemon:
    """The wired service; :meth:`start` and :meth:`stop` are its whole lifecycle."""

    settings: Settings
    client: redis.Redis
    lease: Lease
    metrics: Metrics
    broker_client: redis.Redis | None = None  # the broker's Redis, when it is not the results'
    workers: WorkerTracker = field(default_factory=WorkerTracker)
    jobs: list[Job] = field(default_factory=list)
    requests: scheduler.Requests = field(default_factory=scheduler.Requests)  # runs asked for out of schedule
    ctx: Context = field(init=False)
    health: RedisHealth = field(init=False)
    book: StatusBook = field(init=False)
    scheduler: BackgroundScheduler = field(init=False)
    watcher: Watcher = field(init=False)
    _failing: dict[str, str] = field(default_factory=dict)  # readiness jobs whose last run failed
    _completed: set[str] = field(default_factory=set)  # jobs that have finished a full run
    _threads: list[threading.Thread] = field(default_factory=list)
    _http: Any = None
    keeper: Keeper | None = None
    costs: budget.Costs = field(default_factory=budget.Costs.empty)  # commands per run, for the budget's plan
    plan: budget.Plan | None = None
    _warned_budget: bool = False
    _applied: dict[str, float] = field(default_factory=dict)  # the intervals in force, under a budget

    @classmethod
    def create(cls, settings: Settings, registry: CollectorRegistry | None = None) -> Daemon:
        client = _client(settings, settings.socket_timeout)
        # The lease gets its own connections and a timeout well under its TTL: a
        # renewal must never wait behind a sweep or outlive the lease it renews.
        lease_client = _client(settings, min(settings.socket_timeout, settings.lease_ttl / 3))
        lease = Lease.for_prefix(lease_client, settings.key_prefix, settings.lease_ttl, cluster=settings.redis_cluster)
        broker_client = _client(settings.for_broker(), settings.socket_timeout) if settings.broker_apart else None
        metrics = Metrics(registry or CollectorRegistry())
        return cls(settings, client, lease, metrics, broker_client=broker_client, jobs=all_jobs.for_settings(settings))

    def __post_init__(self) -> None:
        s = self.settings
        self.health = RedisHealth(self.metrics, s.masked_url, self._wake_all)
        # A gap in watch mode (keys it may have missed) asks for a full pass at once.
        self.watcher = Watcher(
            s, self.client, self.metrics, fence=self.lease.fence, on_gap=lambda: self.run_soon(ResultsJob.name)
        )
        self.book = StatusBook(
            s,
            live=Live(
                self.health.snapshot,
                self.lease.held,
                self.readiness,
                lambda: scheduler.next_run(self.scheduler, ResultsJob.name),
                watch=lambda: self.watcher.status().line(s.sweep_interval, s.safety_sweep_interval),
                budget=lambda: self.plan.line() if self.plan is not None else "",
            ),
        )
        self.ctx = Context(
            s,
            self.client,
            self.broker_client or self.client,
            self.lease,
            self.metrics,
            self.book,
            self.workers,
            watch=self.watcher,
        )
        self.metrics.gauge("janitor_is_leader").set_function(lambda: float(self.lease.held()))
        self.metrics.gauge("janitor_dry_run").set(int(s.dry_run))
        if s.daily_command_budget:
            self.metrics.gauge("janitor_command_budget_daily").set(s.daily_command_budget)
        self.scheduler = scheduler.build(
            [
                scheduler.Job(job.name, partial(self.run_job, job), job.interval(s), first_run=job.first_run(s))
                for job in self.jobs
            ],
            jitter=s.jitter,
            on_overrun=self._overrun,
        )
        # APScheduler's own warnings say the same as our "overrun" lines, less clearly.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)

    def start(self) -> None:
        s = self.settings
        self._http, http_thread = http.serve(
            http.make_app(self.metrics.registry, self.readiness, self.book.page, probes.Probes(s, self.workers).answer),
            s.metrics_host,
            s.metrics_port,
        )
        # Heartbeats are pub/sub: listening from the start is what lets the
        # broker check tell a dead worker from one we have not heard yet.
        if not s.redis_cluster:
            if not s.broker_apart:
                # The listener's socket is the first to know Redis went away or came back: one INFO
                # then says which (a killed connection is not an outage).
                self.workers.on_lost = lambda _exc: self.run_soon(InfoJob.name)
                self.workers.on_back = self._redis_back
            self.workers.start(s.broker_url or s.redis_url, s)
        self.scheduler.start()
        self.keeper = Keeper(self.lease, self.ctx.stop, self._lease_changed, self._lease_ok, self._lease_failed)
        self._threads = [http_thread, self.keeper.start()]
        host, port = self._http.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        log.info(
            "daemon.started",
            version=__version__,
            url=s.masked_url,
            broker_url=s.masked_broker_url if s.broker_apart else "same",
            url_source=s.redis_url_source,
            http=f"{host}:{port}",
            lease_key=self.lease.key.decode(errors="replace"),
            lease_ttl_s=s.lease_ttl,
            jobs={job.name: job.interval(s) for job in self.jobs},
            dry_run=s.dry_run,
        )

    def stop(self) -> int:
        """Finish the running batch, release the lease, stop serving; 0 when all that fit the timeout."""
        deadline = time.monotonic() + self.settings.shutdown_timeout
        self.ctx.stop.set()  # sweeps stop at the next batch boundary
        if self.keeper is not None:
            self.keeper.nudge()
        waiter = threading.Thread(target=scheduler.shutdown, args=(self.scheduler,), kwargs={"wait": True}, daemon=True)
        waiter.start()
        waiter.join(max(0.0, deadline - time.monotonic()))
        for thread in self._threads[1:]:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.workers.stop()
        self.watcher.stop(max(0.0, deadline - time.monotonic()))
        clean = not waiter.is_alive()
        released = False
        # With Redis away the release would only spend the timeout; the lease expires by itself.
        if self.health.up:
            try:
                released = self.lease.release()
            except (redis.RedisError, OSError) as exc:
                log.warning("lease.release_failed", detail=errors.classify(exc).message)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        log.info("daemon.stopped", clean=clean, lease_released=released)
        return Exit.OK if clean else Exit.FORCED

    def readiness(self) -> tuple[bool, str]:
        if not self.health.up:
            return False, f"redis unavailable: {self.health.reason}"
        if self.lease.held() and self._failing:
            name, error = next(iter(self._failing.items()))
            return False, f"last {'sweep' if name == ResultsJob.name else name} failed: {error}"
        return True, "ok"

    # --- running jobs -------------------------------------------------------

    def job(self, name: str) -> Job:
        return next(job for job in self.jobs if job.name == name)

    def run_job(self, job: Job) -> None:
        """What the scheduler calls: a run of ``job``, and another for each time one was asked for meanwhile."""
        self.requests.begin(job.name)
        self._run_once(job)
        while self.requests.end(job.name):
            self._run_once(job)

    def _run_once(self, job: Job) -> None:
        """One run of ``job``: duration, errors, health, last success and one log line, all under its name."""
        if self.ctx.stop.is_set() or (job.leader_only and not self.lease.held()):
            return
        series, label = _series(job)
        on_results = job.on_results_server(self.settings)
        started, sent = time.monotonic(), self.metrics.sent_on_this_thread()
        outcome: Outcome | None = None
        try:
            outcome = job.run(self.ctx)
        except Exception as exc:  # a failed run is reported; the next one is scheduled anyway
            failure = errors.classify(exc)
            self.metrics.counter(f"{series}_errors_total").labels(job.name, failure.label).inc()
            if job.readiness and failure.label != "fenced":
                # A run the fence refused ran on a lease this instance no longer held: not a failure of
                # this instance as leader (it may well hold a new lease by now), so not one of readiness.
                self._failing[job.name] = f"{failure.label}: {failure.message}"
            if failure.unreachable and on_results:
                self.health.failed(exc)  # "redis.down", logged once per change of state
            if job.quiet and failure.unreachable:
                pass  # a frequent job says no more than "redis.down" while Redis is away
            elif failure.label == "fenced":
                if self.keeper is not None:
                    self.keeper.nudge()  # the lease is gone from Redis: find out now, not at the next renewal
                log.warning(f"{label}.fenced", **{label: job.name}, detail=failure.message, epoch=self.lease.epoch)
            else:
                internal = failure.label == "internal"
                log.error(
                    f"{label}.failed",
                    **{label: job.name},
                    error=failure.label,
                    detail=failure.message,
                    exc_info=internal,
                )
            return
        finally:
            self.metrics.histogram(f"{series}_duration_seconds").labels(job.name).observe(time.monotonic() - started)
            full_pass = job.name == ResultsJob.name and outcome is not None and not outcome.skipped
            self._spent(job, self.metrics.sent_on_this_thread() - sent, full_pass=full_pass)
        if on_results:
            self.health.ok()
        self._failing.pop(job.name, None)
        if not outcome.completed:
            log.info(f"{label}.stopped", **{label: job.name}, stopping=self.ctx.stop.is_set(), **outcome.fields)
            return
        self.metrics.gauge(f"{series}_last_success_timestamp_seconds").labels(job.name).set(time.time())
        if outcome.skipped:
            # What it would have found is what it found last time: as fresh as a run, at no cost.
            self.metrics.counter(f"{series}_skipped_total").labels(job.name, outcome.skipped).inc()
            log.debug(f"{label}.skipped", **{label: job.name}, reason=outcome.skipped, **outcome.fields)
        else:
            (log.debug if job.quiet else log.info)(f"{label}.finished", **{label: job.name}, **outcome.fields)
        if job.name not in self._completed:
            self._completed.add(job.name)
            for later in self.jobs:
                if later.first_after == job.name:
                    self.run_soon(later.name)

    # --- the daily command budget ---------------------------------------------

    def _spent(self, job: Job, commands: int, *, full_pass: bool) -> None:
        """Record what a run sent and, under a budget, plan the intervals (the lease's too) again."""
        s = self.settings
        if not s.daily_command_budget:
            return
        self.costs.ran(job.name, commands, full_pass=full_pass)
        self.costs.per_run[LEASE] = 1  # one renewal
        configured = {j.name: j.interval(s) for j in self.jobs} | {LEASE: s.lease_ttl / 3}
        plan = budget.plan(s.daily_command_budget, configured, self.costs, sweep=ResultsJob.name, longest=LONGEST)
        self.plan = plan
        for name, interval in plan.intervals.items():
            self.metrics.gauge("janitor_job_planned_interval_seconds").labels(name).set(interval)
            applied = self._applied.setdefault(name, configured[name])
            if abs(interval - applied) <= 0.1 * applied:  # not worth moving the schedule for
                continue
            self._applied[name] = interval
            if name == LEASE:
                self.lease.ttl = 3 * interval  # from its next renewal on
            else:
                scheduler.reschedule(self.scheduler, name, interval, jitter=s.jitter)
        self.metrics.gauge("janitor_commands_planned_daily").set(plan.daily)
        warning = plan.warning(self.costs.full_pass)
        if warning and not self._warned_budget:
            log.warning("budget.too_small", detail=warning)
        self._warned_budget = bool(warning)

    def _overrun(self, name: str) -> None:
        if self.requests.lost(name):
            scheduler.run_soon(self.scheduler, name, delay=1.0)
            return
        series, label = _series(self.job(name))
        self.metrics.counter(f"{series}_overruns_total").labels(name).inc()
        log.info(f"{label}.overrun", **{label: name}, detail="previous run still going; this one skipped")

    # --- lease keeper callbacks ----------------------------------------------

    def _lease_changed(self, change: Change) -> None:
        if change is Change.ACQUIRED:
            self.metrics.counter("janitor_lease_acquisitions_total").inc()
            log.info("lease.acquired", epoch=self.lease.epoch, key=self.lease.key.decode(errors="replace"))
            self.run_soon(ResultsJob.name)
            self.watcher.start()
        elif change is Change.LOST:
            log.warning("lease.lost", epoch=self.lease.epoch)
            self.metrics.seen.forget_leader_views()
            self.watcher.stop(timeout=1.0)

    def _lease_ok(self) -> None:
        self._flush_lease_commands()
        self.health.ok()

    def _lease_failed(self, exc: BaseException) -> None:
        self._flush_lease_commands()
        if errors.classify(exc).label == "internal":
            log.error("lease.error", exc_info=exc)
        self.health.failed(exc)

    def _flush_lease_commands(self) -> None:
        self.metrics.add_commands(self.lease.tally.commands)
        self.lease.tally.commands.clear()

    def _redis_back(self) -> None:
        """Redis answers again (it may have restarted empty, the lease with it): check both now."""
        if self.keeper is not None:
            self.keeper.nudge()
        self.run_soon(InfoJob.name)

    def run_soon(self, name: str) -> None:
        """Run a job now; if it is running, once more as soon as that run ends."""
        if self.requests.ask(name) and self.scheduler.running:
            scheduler.run_soon(self.scheduler, name)

    def _wake_all(self) -> None:
        for job in self.jobs:
            self.run_soon(job.name)


def _series(job: Job) -> tuple[str, str]:
    """The metric family prefix and the log label of a job: ``janitor_sweep``/``sweep`` or ``janitor_job``/``job``."""
    return (f"janitor_{job.series}", job.series)


def _client(settings: Settings, timeout: float) -> redis.Redis:
    """A client that fails fast: the daemon does its own backing off and logs it once."""
    if settings.redis_cluster:
        return cast(redis.Redis, cluster.LazyCluster(settings, timeout))
    # One immediate retry replaces a pooled connection a Redis restart killed.
    return settings.connect(socket_timeout=timeout, retry=Retry(NoBackoff(), 1))
