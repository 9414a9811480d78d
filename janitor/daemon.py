"""``celery-janitor run``: scheduled sweeps behind a lease, metrics and health over HTTP.

Threads: the main one waits for SIGTERM/SIGINT; APScheduler runs the jobs;
the lease keeper renews or polls the lease; wsgiref serves HTTP. Redis being
away is a state, not a crash: it is logged once when it changes, shown as
``janitor_redis_up 0`` and a 503 on ``/readyz``, and retried with back-off.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import redis
import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry
from redis.backoff import NoBackoff
from redis.retry import Retry

from janitor import (
    __version__,
    census,
    cluster,
    config,
    connection,
    errors,
    findings,
    scheduler,
    scripts,
    server,
    status_page,
)
from janitor.config import Settings
from janitor.errors import Exit
from janitor.heartbeats import WorkerTracker
from janitor.keyspace import Layout, glob_escape
from janitor.lease import Change, Keeper, Lease
from janitor.metrics import Metrics, ResultCensus, SweepRecorder
from janitor.metrics_broker import BrokerMetrics
from janitor.status_book import Live, StatusBook
from janitor.sweeps import broker
from janitor.sweeps.results import sweep

SIGNALS = {signal.SIGTERM, signal.SIGINT}

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
class RedisHealth:
    """Up or down, and why; logs and exports only changes of state."""

    metrics: Metrics
    url: str
    on_recover: Callable[[], None]
    _state: str | None = None  # None: not known yet, "": up, else the error label
    _reason: str = "not checked yet"
    _since: float | None = None  # clock() at the last change between up and down
    _lock: threading.Lock = field(default_factory=threading.Lock)
    clock: Callable[[], float] = time.time

    @property
    def up(self) -> bool:
        return self._state == ""

    def snapshot(self) -> status_page.RedisState:
        """For the status page: up, down or unknown, why, and since when."""
        with self._lock:
            state, reason, since = self._state, self._reason, self._since
        return status_page.RedisState(
            None if state is None else state == "",
            "" if state == "" else reason,
            None if since is None else dt.datetime.fromtimestamp(since, dt.UTC),
        )

    @property
    def reason(self) -> str:
        return self._reason

    def ok(self) -> None:
        with self._lock:
            before, self._state, self._reason = self._state, "", "ok"
            if before != "":
                self._since = self.clock()
        if before != "":
            self.metrics.redis_up.set(1)
            log.info("redis.up", url=self.url, recovered=before is not None)
            if before is not None:
                self.on_recover()

    def failed(self, exc: BaseException) -> None:
        failure = errors.classify(exc)
        label = failure.label
        self.metrics.redis_errors.labels(label).inc()
        with self._lock:
            before, self._state, self._reason = self._state, label, failure.message
            if before in {None, ""}:  # a new reason while down keeps the time it went down
                self._since = self.clock()
        if before != label:
            self.metrics.redis_up.set(0)
            log.error("redis.down", url=self.url, error=label, detail=self._reason, retrying=True)


@dataclass
class Daemon:
    """The wired service; :meth:`start` and :meth:`stop` are its whole lifecycle."""

    settings: Settings
    client: redis.Redis
    lease: Lease
    metrics: Metrics
    stop_event: threading.Event = field(default_factory=threading.Event)
    broker_client: redis.Redis | None = None  # the broker's Redis, when it is not the results'
    health: RedisHealth = field(init=False)
    jobs: BackgroundScheduler = field(init=False)
    book: StatusBook = field(init=False)
    broker_metrics: BrokerMetrics = field(init=False)
    workers: WorkerTracker = field(default_factory=WorkerTracker)
    sightings: broker.Sightings = field(init=False)
    _overdue_warned: set[str] = field(default_factory=set)
    clock: Callable[[], float] = time.time
    catalog: broker.QueueCatalog = field(init=False)
    _last_sweep_error: str = ""
    _swept: bool = False
    _threads: list[threading.Thread] = field(default_factory=list)
    _http: Any = None

    @classmethod
    def create(cls, settings: Settings, registry: CollectorRegistry | None = None) -> Daemon:
        client = _client(settings, settings.socket_timeout)
        # The lease gets its own connections and a timeout well under its TTL: a
        # renewal must never wait behind a sweep or outlive the lease it renews.
        lease_client = _client(settings, min(settings.socket_timeout, settings.lease_ttl / 3))
        lease = Lease.for_prefix(lease_client, settings.key_prefix, settings.lease_ttl, cluster=settings.redis_cluster)
        broker_client = _client(settings.for_broker(), settings.socket_timeout) if settings.broker_apart else None
        return cls(settings, client, lease, Metrics(registry or CollectorRegistry()), broker_client=broker_client)

    def __post_init__(self) -> None:
        s = self.settings
        self.health = RedisHealth(self.metrics, s.masked_url, self._wake_all)
        self.book = StatusBook(
            s,
            live=Live(
                self.health.snapshot, self.lease.held, self.readiness, lambda: scheduler.next_run(self.jobs, "results")
            ),
        )
        self.broker_metrics = BrokerMetrics(self.metrics.registry)
        # New queues are rare; finding them costs a full SCAN, so as often as the census.
        self.catalog = broker.QueueCatalog(every=s.census_interval)
        self.sightings = broker.Sightings(min_gap=s.broker_interval / 2)
        self.metrics.is_leader.set_function(lambda: float(self.lease.held()))
        self.metrics.dry_run.set(int(s.dry_run))
        jobs = [
            # The sweep starts when the lease is taken, the census after the first sweep.
            scheduler.Job("results", self.sweep_results, s.sweep_interval, first_run=s.sweep_interval),
            scheduler.Job("redis_info", self.read_info, s.info_interval),
        ]
        if not s.redis_cluster:  # see README "Redis Cluster": no census there, and Celery has no cluster broker
            jobs.append(scheduler.Job("census", self.census, s.census_interval, first_run=s.census_interval))
            jobs.append(
                scheduler.Job("broker", self.check_broker, s.broker_interval, first_run=min(s.broker_interval, 5))
            )
        self.jobs = scheduler.build(
            jobs,
            jitter=s.jitter,
            on_overrun=self._overrun,
        )
        # APScheduler's own warnings say the same as our "sweep.overrun" line, less clearly.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)

    def start(self) -> None:
        s = self.settings
        self._http, http_thread = server.serve(
            server.make_app(self.metrics.registry, self.readiness, self.book.page), s.metrics_host, s.metrics_port
        )
        # Heartbeats are pub/sub: listening from the start is what lets the
        # broker check tell a dead worker from one we have not heard yet.
        if not s.redis_cluster:
            self.workers.start(s.broker_url or s.redis_url, s)
        self.jobs.start()
        keeper = Keeper(self.lease, self.stop_event, self._lease_changed, self._lease_ok, self._lease_failed)
        self._threads = [http_thread, keeper.start()]
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
            sweep_interval_s=s.sweep_interval,
            census_interval_s=s.census_interval,
            dry_run=s.dry_run,
        )

    def stop(self) -> int:
        """Finish the running batch, release the lease, stop serving; 0 when all that fit the timeout."""
        deadline = time.monotonic() + self.settings.shutdown_timeout
        self.stop_event.set()  # sweeps stop at the next batch boundary, the keeper wakes up
        waiter = threading.Thread(target=scheduler.shutdown, args=(self.jobs,), kwargs={"wait": True}, daemon=True)
        waiter.start()
        waiter.join(max(0.0, deadline - time.monotonic()))
        for thread in self._threads[1:]:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.workers.stop()
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
        if self.lease.held() and self._last_sweep_error:
            return False, f"last sweep failed: {self._last_sweep_error}"
        return True, "ok"

    # --- jobs -------------------------------------------------------------

    def sweep_results(self) -> None:
        if self.stop_event.is_set() or not self.lease.held():
            return
        recorder = SweepRecorder(self.metrics, "results")

        def body() -> dict[str, Any]:
            # Stop between batches once we may have lost the lease locally;
            # the fence in ACT is what makes a late batch harmless.
            def should_stop() -> bool:
                return self.stop_event.is_set() or not self.lease.held()

            if self.settings.redis_cluster:
                report = cluster.sweep_cluster(
                    self.settings, fence=self.lease.fence, should_stop=should_stop, on_batch=recorder
                )
            else:
                report = sweep(
                    self.client, self.settings, fence=self.lease.fence, should_stop=should_stop, on_batch=recorder
                )
            recorder(report)
            self.book.swept(report)
            return report.as_dict()

        self._timed("results", body)

    def census(self) -> None:
        if self.stop_event.is_set() or not self.lease.held():
            return

        def body() -> dict[str, Any]:
            tally = scripts.Tally()
            try:
                taken = result_census(self.client, self.settings, tally, should_stop=self.stop_event.is_set)
            finally:
                self.metrics.add_commands(tally.commands)
            if not taken.completed or not self.lease.held():  # lost mid-way: the new leader counts
                return {"completed": False}
            result = ResultCensus.of(taken)
            self.metrics.snapshots.update(census=result)
            self.book.counted(taken)
            return {"completed": True, "result_keys": sum(result.keys.values()), "oldest_age_s": result.oldest_age_s}

        self._timed("census", body)

    def check_broker(self) -> None:
        """Stuck/held unacked, queue depths, orphaned STARTED; then the opt-in restore (leader only)."""
        if self.stop_event.is_set() or not self.lease.held():
            return

        def body() -> dict[str, Any]:
            tally = scripts.Tally()
            try:
                now = self.clock()
                on = self.broker_client or self.client
                report = broker.detect(
                    on,
                    self.settings,
                    now=now,
                    workers=self.workers,
                    tally=tally,
                    catalog=self.catalog,
                    results=self.client,
                )
                confirmed = self.sightings.confirm(report)
                restored = broker.auto_restore(on, self.settings, report, confirmed=confirmed, tally=tally)
            finally:
                self.metrics.add_commands(tally.commands)
            if self.lease.held():
                self.broker_metrics.observe(report)
            self._warn_overdue(report)
            workers = findings.Workers(self.workers.alive(now), self.workers.listened_for(now))
            self.book.checked_broker(report, workers)
            fields: dict[str, Any] = {
                "unacked": report.unacked_total,
                "states": report.by_state,
                "stuck": len(report.stuck),
                "workers_alive": len(workers.alive),
            }
            if restored is not None:
                self.broker_metrics.observe_restore(restored)
                fields["restore"] = restored.as_dict()
            return fields

        # Reaching a broker that lives elsewhere says nothing of the results' Redis (health, /readyz).
        self._timed("broker", body, results_server=self.broker_client is None)

    def _warn_overdue(self, report: broker.BrokerReport) -> None:
        """One log line per task found running past the visibility timeout (kombu will redeliver it)."""
        overdue = {m.task_id: m for m in report.overdue_running}
        for task_id in overdue.keys() - self._overdue_warned:
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
        self._overdue_warned = set(overdue)

    def read_info(self) -> None:
        try:
            if isinstance(self.client, cluster.LazyCluster):
                info = self.client.info_where(self.lease.key)
            else:
                info = self.client.info()
        except (redis.RedisError, OSError) as exc:
            self.health.failed(exc)
            return
        finally:
            self.metrics.add_commands({"INFO": 1})
        self.metrics.snapshots.update(info=info)
        self.book.read_info(info)
        if info.get("role", "master") != "master":
            # A replica answers reads and refuses every write. Saying so here keeps the state
            # from flapping up/down between this read and the lease's READONLY refusal.
            self.health.failed(redis.ReadOnlyError("You can't write against a read only replica (INFO role)"))
            return
        self.health.ok()

    def _timed(self, name: str, body: Callable[[], dict[str, Any]], *, results_server: bool = True) -> None:
        """Run one job: duration, errors, health (of the results' Redis), last success, one log line."""
        started = time.monotonic()
        try:
            fields = body()
        except Exception as exc:  # a failed run is reported; the next one is scheduled anyway
            failure = errors.classify(exc)
            label, detail = failure.label, failure.message
            self.metrics.sweep_errors.labels(name, label).inc()
            if failure.unreachable and results_server:
                self.health.failed(exc)
            if name == "results":
                self._last_sweep_error = f"{label}: {detail}"
            if label == "fenced":
                log.warning("sweep.fenced", sweep=name, detail=detail, epoch=self.lease.epoch)
            else:
                log.error("sweep.failed", sweep=name, error=label, detail=detail, exc_info=label == "internal")
            return
        finally:
            self.metrics.sweep_duration.labels(name).observe(time.monotonic() - started)
        if results_server:
            self.health.ok()
        if name == "results":
            self._last_sweep_error = ""
        if fields.get("completed", True):
            if name == "results" and not self._swept:
                # First census right after the first sweep: not racing it, and counting what it left.
                self._swept = True
                scheduler.run_soon(self.jobs, "census")
            self.metrics.sweep_last_success.labels(name).set(time.time())
            log.info("sweep.finished", sweep=name, **fields)
        else:
            log.info("sweep.stopped", sweep=name, stopping=self.stop_event.is_set(), **fields)

    def _overrun(self, job: str) -> None:
        self.metrics.sweep_overruns.labels(job).inc()
        log.info("sweep.overrun", sweep=job, detail="previous run still going; this one skipped")

    # --- lease keeper callbacks ----------------------------------------------

    def _lease_changed(self, change: Change) -> None:
        if change is Change.ACQUIRED:
            self.metrics.lease_acquired.inc()
            log.info("lease.acquired", epoch=self.lease.epoch, key=self.lease.key.decode(errors="replace"))
            scheduler.run_soon(self.jobs, "results")
        elif change is Change.LOST:
            log.warning("lease.lost", epoch=self.lease.epoch)
            # The new leader exports the census and broker gauges now; stale copies here would mislead.
            self.metrics.snapshots.forget_census()
            self.broker_metrics.reset()

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

    def _wake_all(self) -> None:
        if self.jobs.running:
            for job in ("redis_info", "results", "census", "broker"):
                scheduler.run_soon(self.jobs, job)


def result_census(
    client: redis.Redis, settings: Settings, tally: scripts.Tally, *, should_stop: Callable[[], bool]
) -> census.Census:
    """The census narrowed to result keys: all the gauges and the status page need, at a fraction of the cost."""
    layout = Layout.for_prefixes(settings.key_prefix, settings.broker_key_prefix)
    match = glob_escape(layout.task_prefix) + "*"
    return census.take(client, settings, tally=tally, match=match, should_stop=should_stop)


def _client(settings: Settings, timeout: float) -> redis.Redis:
    """A client that fails fast: the daemon does its own backing off and logs it once."""
    if settings.redis_cluster:
        return cast(redis.Redis, cluster.LazyCluster(settings, timeout))
    # One immediate retry replaces a pooled connection a Redis restart killed.
    return settings.connect(socket_timeout=timeout, retry=Retry(NoBackoff(), 1))
