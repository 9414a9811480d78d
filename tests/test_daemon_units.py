"""Daemon parts in-process: scheduling without overlap, Redis state changes, census, settings."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import redis
import structlog
from prometheus_client import CollectorRegistry

from janitor import config
from janitor.dev import demo
from janitor.redis_io import scripts
from janitor.redis_io.lease import Change
from janitor.service import scheduler
from janitor.service.daemon import Daemon
from janitor.service.health import RedisHealth
from janitor.service.jobs import Context, Job, Outcome
from janitor.service.jobs.census import result_census
from janitor.service.metrics import Metrics, ResultCensus


class TestScheduler:
    def test_a_slow_job_never_overlaps_itself(self) -> None:
        """A run longer than the interval delays the next one; overruns are reported, not queued."""
        running, most, overruns = [0], [0], []
        lock = threading.Lock()

        def slow() -> None:
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.35)
            with lock:
                running[0] -= 1

        jobs = scheduler.build([scheduler.Job("slow", slow, 0.1)], jitter=0.5, on_overrun=overruns.append)
        jobs.start()
        time.sleep(1.2)
        scheduler.shutdown(jobs, wait=True)
        assert most[0] == 1
        assert overruns
        assert set(overruns) == {"slow"}

    def test_run_soon_brings_a_job_forward(self) -> None:
        """A job due in an hour runs at once when asked (the first sweep after taking the lease)."""
        ran = threading.Event()
        jobs = scheduler.build([scheduler.Job("late", ran.set, 3600, first_run=3600)], jitter=0, on_overrun=print)
        jobs.start()
        try:
            assert not ran.wait(0.3)
            scheduler.run_soon(jobs, "late")
            assert ran.wait(3)
        finally:
            scheduler.shutdown(jobs, wait=False)


class TestRedisHealth:
    def test_one_log_line_per_change_of_state(self) -> None:
        """Ten failures in a row log once; recovery logs once and wakes the jobs."""
        registry = CollectorRegistry()
        woken: list[int] = []
        health = RedisHealth(Metrics(registry), "redis://h:6379/0", lambda: woken.append(1))
        with structlog.testing.capture_logs() as logs:
            health.ok()
            for _ in range(10):
                health.failed(redis.ConnectionError("Error 111 connecting to h:6379. Connection refused."))
            assert registry.get_sample_value("janitor_redis_up") == 0
            health.ok()
            health.ok()
        assert [e["event"] for e in logs] == ["redis.up", "redis.down", "redis.up"]
        assert "cannot reach Redis" in logs[1]["detail"]
        assert registry.get_sample_value("janitor_redis_errors_total", {"error": "connection"}) == 10
        assert registry.get_sample_value("janitor_redis_up") == 1
        assert woken == [1]


class Boom(Job):
    name = "boom"
    interval_setting = "broker_interval"

    def run(self, ctx: Context) -> Outcome:
        raise ValueError("a bug")


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
        assert names == ["results", "redis_info", "census", "broker", "boom"]
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
            ("job.failed", "boom"),
        ]


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


class TestSettings:
    def test_port_falls_back_to_platform_port(self) -> None:
        """Railway injects PORT; JANITOR_METRICS_PORT wins when both are set."""
        assert config.load({"PORT": "8123"}).metrics_port == 8123
        assert config.load({"PORT": "8123", "JANITOR_METRICS_PORT": "9000"}).metrics_port == 9000
        assert config.load({}).metrics_port == 9810
