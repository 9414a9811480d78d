"""Daemon parts in-process, no server: scheduling without overlap, Redis state changes, settings."""

from __future__ import annotations

import threading
import time

import redis
import structlog
from prometheus_client import CollectorRegistry

from janitor import config
from janitor.service import scheduler
from janitor.service.health import RedisHealth
from janitor.service.metrics import Metrics


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

    def test_a_run_asked_for_while_the_job_runs_goes_as_that_run_ends(self) -> None:
        """The scheduler would skip it as an overrun: the running one goes again instead, once however
        often it was asked for meanwhile."""
        requests = scheduler.Requests()
        requests.begin("results")
        assert not requests.ask("results")  # running: not brought forward in the scheduler
        assert not requests.ask("results")
        assert requests.ask("info")  # another job is not running: brought forward
        assert requests.end("results")  # goes again...
        assert not requests.end("results")  # ...once
        assert requests.ask("results")  # ended: the scheduler runs it

    def test_a_run_asked_for_as_the_last_one_ended_is_asked_again_if_skipped(self) -> None:
        """Asked for after the run ended, but before the scheduler counted it finished: the scheduler
        skips it, and the daemon asks again. An overrun of a run nobody asked for stays an overrun."""
        requests = scheduler.Requests()
        requests.begin("results")
        assert not requests.end("results")
        assert not requests.lost("results")  # an interval's overrun
        assert requests.ask("results")
        assert requests.lost("results")
        requests.begin("results")
        assert not requests.lost("results")  # started: nothing lost


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


class TestSettings:
    def test_port_falls_back_to_platform_port(self) -> None:
        """Railway injects PORT; JANITOR_METRICS_PORT wins when both are set."""
        assert config.load({"PORT": "8123"}).metrics_port == 8123
        assert config.load({"PORT": "8123", "JANITOR_METRICS_PORT": "9000"}).metrics_port == 9000
        assert config.load({}).metrics_port == 9810
