"""Daemon parts in-process against a real server: every job run once under its own name, and the result census."""

from __future__ import annotations

import datetime as dt
import json
import threading

import redis
import structlog
from prometheus_client import CollectorRegistry

from janitor import config
from janitor.dev import demo
from janitor.redis_io import scripts
from janitor.redis_io.lease import Change
from janitor.service.daemon import Daemon
from janitor.service.jobs import Context, Job, Outcome
from janitor.service.jobs.census import result_census
from janitor.service.metrics import ResultCensus
from tests.support import wait_for


class Boom(Job):
    name = "boom"
    interval_setting = "broker_interval"

    def run(self, ctx: Context) -> Outcome:
        raise ValueError("a bug")


class Refused(Job):
    """A job whose every run fails with ``error``, counted in readiness as the sweep is."""

    name = "refused"
    interval_setting = "broker_interval"
    readiness = True

    def __init__(self, error: Exception) -> None:
        self.error = error

    def run(self, ctx: Context) -> Outcome:
        raise self.error


class Counted(Job):
    """A job that records each run's number; the first waits for ``release``."""

    name = "counted"
    interval_setting = "broker_interval"
    leader_only = False

    def __init__(self, runs: list[int], release: threading.Event) -> None:
        self.runs = runs
        self.release = release

    def run(self, ctx: Context) -> Outcome:
        self.runs.append(len(self.runs) + 1)
        self.release.wait(10)
        return Outcome({})


class TestJobs:
    def test_each_job_is_timed_counted_and_logged_under_its_own_name(
        self, client: redis.Redis, settings: config.Settings
    ) -> None:
        """One run of every job (and of one that fails): each duration, success, error and log line
        carries that job's own name, and no other job's series moved."""
        demo.fill(client, results=200)
        registry = CollectorRegistry()
        daemon = Daemon.create(settings, registry)
        daemon.jobs.append(Boom())
        assert daemon.lease.step()[0] is Change.ACQUIRED
        try:
            with structlog.testing.capture_logs() as logs:
                for job in daemon.jobs:
                    daemon.run_job(job)
        finally:
            daemon.lease.release()
        get = registry.get_sample_value
        names = [job.name for job in daemon.jobs]
        assert names == ["results", "redis_info", "census", "broker", "redbeat", "boom"]
        for job in daemon.jobs:
            series, label = ("janitor_sweep", "sweep") if job.series == "sweep" else ("janitor_job", "job_name")
            assert get(f"{series}_duration_seconds_count", {label: job.name}) == 1, job.name
            succeeded = get(f"{series}_last_success_timestamp_seconds", {label: job.name})
            assert (succeeded is not None) is (job.name != "boom"), job.name
        assert get("janitor_sweep_duration_seconds_count", {"sweep": "census"}) is None
        assert get("janitor_job_errors_total", {"job_name": "boom", "error": "internal"}) == 1
        ran = [(e["event"], e.get("sweep") or e.get("job")) for e in logs if e.get("sweep") or e.get("job")]
        assert ran == [
            ("sweep.finished", "results"),
            ("job.finished", "redis_info"),
            ("job.finished", "census"),
            ("job.finished", "broker"),
            ("job.finished", "redbeat"),
            ("job.failed", "boom"),
        ]

    def test_a_run_the_fence_refused_leaves_the_leader_ready(
        self, client: redis.Redis, settings: config.Settings
    ) -> None:
        """A sweep refused FENCED ran on a lease this instance no longer held (it may have taken a new
        one since, as after Redis restarted empty): /readyz stays 200. Any other failure turns it 503."""
        daemon = Daemon.create(settings, CollectorRegistry())
        assert daemon.lease.step()[0] is Change.ACQUIRED
        try:
            daemon.run_job(daemon.job("results"))
            assert daemon.readiness() == (True, "ok")
            daemon.run_job(Refused(redis.ResponseError("FENCED lease lost before this batch")))
            assert daemon.readiness() == (True, "ok")
            daemon.run_job(Refused(redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'.")))
            ready, why = daemon.readiness()
            assert not ready
            assert why.startswith("last refused failed: response")
        finally:
            daemon.lease.release()

    def test_a_run_asked_for_while_the_job_runs_happens_as_that_run_ends(
        self, client: redis.Redis, settings: config.Settings
    ) -> None:
        """The lease taken, a gap in watch mode: each asks for a sweep at once. Asked for while a sweep
        runs (on the lease just lost, past keys written during the gap), it would be an overrun, skipped
        until the next interval: the running one goes again as it ends instead, once."""
        runs: list[int] = []
        release = threading.Event()
        daemon = Daemon.create(settings, CollectorRegistry())
        job = Counted(runs, release)
        daemon.jobs.append(job)
        worker = threading.Thread(target=daemon.run_job, args=(job,))
        worker.start()
        try:
            wait_for(lambda: runs == [1], 5, "the first run")
            daemon.run_soon(job.name)
            daemon.run_soon(job.name)
        finally:
            release.set()
            worker.join(10)
        assert runs == [1, 2]
        assert daemon.requests.ask(job.name)  # ended: the next one is the scheduler's


class TestResultCensus:
    def test_counts_by_state_and_ttl(self, client: redis.Redis, settings: config.Settings) -> None:
        """Only result keys are read; oldest age comes from the oldest finished result."""
        now = dt.datetime.now(dt.UTC)
        client.set("celery-task-meta-a", json.dumps(demo.task_meta("a", "SUCCESS", now - dt.timedelta(hours=2))))
        client.set("celery-task-meta-b", json.dumps(demo.task_meta("b", "SUCCESS", now)), ex=60)
        client.set("celery-task-meta-c", json.dumps(demo.task_meta("c", "STARTED", None)))
        client.set("celery-task-meta-d", json.dumps(demo.task_meta("d", "MY_STATE", now - dt.timedelta(days=9))))
        client.set("celery-task-meta-e", b"\xff\xfe not a result")
        client.set("app:session:1", "x")
        tally = scripts.Tally()
        taken = result_census(client, settings, tally, should_stop=lambda: False)
        assert taken.completed
        assert taken.total == 5  # app:session:1 is never read
        census = ResultCensus.of(taken)
        assert dict(census.keys) == {
            ("SUCCESS", False): 1,
            ("SUCCESS", True): 1,
            ("STARTED", False): 1,
            ("custom", False): 1,
            ("unreadable", False): 1,
        }
        assert 7190 < census.oldest_age_s < 7300  # a custom state is not finished, so 'd' does not count
        assert tally.commands["SCAN"] >= 1
