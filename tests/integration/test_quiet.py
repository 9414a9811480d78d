"""An idle daemon costs almost nothing: passes and checks are skipped while Redis's own command
counters show no write that could give them work, and JANITOR_DAILY_COMMAND_BUDGET plans the
intervals. Real servers, results written by Celery's own backend, messages sent by kombu."""

from __future__ import annotations

import collections
import uuid
from collections.abc import Callable, Iterator

import kombu
import pytest
import redis
import structlog
from prometheus_client import CollectorRegistry

from janitor.config import Settings
from janitor.dev import embedded
from janitor.redis_io.lease import Change
from janitor.service import budget
from janitor.service.daemon import Daemon
from tests.support import wait_for
from tests.support.celery import janitor_settings, producer


def server_calls(client: redis.Redis) -> collections.Counter[str]:
    """Calls per command as the server counts them (commands inside scripts included)."""
    stats = client.info("commandstats")
    return collections.Counter({k[len("cmdstat_") :]: v["calls"] for k, v in stats.items()})


def sent_between(before: collections.Counter[str], after: collections.Counter[str]) -> dict[str, int]:
    """What ran in between, less the INFO that read ``after``."""
    diff = after - before
    diff["info"] -= 1
    return {k: v for k, v in diff.items() if v > 0}


@pytest.fixture(name="daemon")
def _daemon(server: embedded.Server) -> Iterator[Daemon]:
    daemon = make(janitor_settings(server.url, watch="off"))
    yield daemon
    daemon.lease.release()


def make(settings: Settings) -> Daemon:
    daemon = Daemon.create(settings, CollectorRegistry())
    assert daemon.lease.step()[0] is Change.ACQUIRED
    return daemon


def store(url: str, n: int) -> list[bytes]:
    """``n`` SUCCESS results written by Celery's Redis backend with no expiry, as result_expires=None does."""
    app = producer(url)
    app.conf.result_expires = None
    ids = [uuid.uuid4().hex for _ in range(n)]
    for task_id in ids:
        app.backend.store_result(task_id, {"ok": task_id}, "SUCCESS")
    return [f"celery-task-meta-{t}".encode() for t in ids]


def skipped(daemon: Daemon, job: str, reason: str = "no_writes") -> float:
    series, label = ("janitor_sweep", "sweep") if job == "results" else ("janitor_job", "job_name")
    value = daemon.metrics.registry.get_sample_value(f"{series}_skipped_total", {label: job, "reason": reason})
    return value or 0.0


def tick(daemon: Daemon, job: str) -> None:
    """One INFO reading, then one run of ``job``: what the scheduler does when both are due."""
    daemon.run_job(daemon.job("redis_info"))
    daemon.run_job(daemon.job(job))


class TestSkippedPasses:
    def test_a_pass_runs_again_only_once_a_result_is_written(
        self, daemon: Daemon, client: redis.Redis, server: embedded.Server
    ) -> None:
        first = store(server.url, 20)
        tick(daemon, "results")
        assert all(client.ttl(k) > 0 for k in first)

        before = server_calls(client)
        tick(daemon, "results")
        assert skipped(daemon, "results") == 1
        # The skip itself sent nothing: the INFO job's reading told it all.
        assert sent_between(before, server_calls(client)) == {"info": 1}
        _, _, page = daemon.book.page({})
        assert b"1 later run skipped (Redis counted no write that could need one since)" in page

        later = store(server.url, 3)  # Celery's backend: one SET each
        tick(daemon, "results")
        assert skipped(daemon, "results") == 1
        assert all(client.ttl(k) > 0 for k in later)
        tick(daemon, "results")
        assert skipped(daemon, "results") == 2

    def test_a_pass_that_read_its_own_baseline_sees_a_write_made_right_after(
        self, daemon: Daemon, client: redis.Redis, server: embedded.Server
    ) -> None:
        """No INFO reading before the first pass: it reads its own. With no newer reading, the next run
        reads INFO again rather than compare the baseline with itself."""
        store(server.url, 1)
        daemon.run_job(daemon.job("results"))
        (later,) = store(server.url, 1)
        daemon.run_job(daemon.job("results"))
        assert skipped(daemon, "results") == 0
        assert client.ttl(later) > 0

    @pytest.mark.parametrize(
        "write",
        [
            pytest.param(lambda c, k: c.persist(k), id="persist"),
            pytest.param(lambda c, k: c.set(k, c.get(k)), id="overwrite"),
            pytest.param(lambda c, k: c.eval("return redis.call('SET', KEYS[1], ARGV[1])", 1, k, c.get(k)), id="lua"),
            pytest.param(lambda c, k: c.copy(k, k + b"-copy"), id="copy"),
        ],
    )
    def test_any_write_that_can_leave_a_result_without_ttl_brings_the_pass_back(
        self, daemon: Daemon, client: redis.Redis, server: embedded.Server, write: object
    ) -> None:
        (key,) = store(server.url, 1)
        tick(daemon, "results")
        tick(daemon, "results")
        assert skipped(daemon, "results") == 1
        write(client, key)  # type: ignore[operator]
        tick(daemon, "results")
        assert skipped(daemon, "results") == 1
        assert client.ttl(key) > 0

    def test_a_write_in_another_database_or_a_counter_reset_brings_it_back(
        self, daemon: Daemon, client: redis.Redis, server: embedded.Server
    ) -> None:
        """The counters are the server's, not the database's: conservative, never blind."""
        store(server.url, 1)
        tick(daemon, "results")
        tick(daemon, "results")
        assert skipped(daemon, "results") == 1
        other = redis.Redis.from_url(server.url.rsplit("/", 1)[0] + "/5")
        other.set("unrelated", "x")
        tick(daemon, "results")
        assert skipped(daemon, "results") == 1
        client.config_resetstat()
        tick(daemon, "results")
        assert skipped(daemon, "results") == 1
        tick(daemon, "results")
        assert skipped(daemon, "results") == 2

    def test_a_result_dated_in_the_future_keeps_every_pass_running(
        self, daemon: Daemon, client: redis.Redis, server: embedded.Server
    ) -> None:
        """A key skipped until its date comes needs no write to become due: no pass is skipped."""
        (key,) = store(server.url, 1)
        value = client.get(key)
        assert value is not None
        client.set(key, value.replace(b'"date_done": "20', b'"date_done": "29'))
        tick(daemon, "results")
        tick(daemon, "results")
        assert skipped(daemon, "results") == 0
        assert client.ttl(key) == -1  # still judged, still left alone

    def test_dry_run_never_skips(self, client: redis.Redis, server: embedded.Server) -> None:
        daemon = make(janitor_settings(server.url, watch="off", dry_run="true"))
        try:
            store(server.url, 2)
            tick(daemon, "results")
            tick(daemon, "results")
            assert skipped(daemon, "results") == 0
        finally:
            daemon.lease.release()


class TestSkippedBrokerChecks:
    def test_a_check_with_nothing_waiting_is_skipped_until_a_message_is_sent(
        self, daemon: Daemon, client: redis.Redis, server: embedded.Server
    ) -> None:
        with kombu.Connection(server.url) as conn:  # an idle app: the queue bound, nothing in it
            kombu.Queue("celery", kombu.Exchange("celery", type="direct"), routing_key="celery")(
                conn.default_channel
            ).declare()
        tick(daemon, "broker")
        before = server_calls(client)
        tick(daemon, "broker")
        assert skipped(daemon, "broker") == 1
        assert sent_between(before, server_calls(client)) == {"info": 1}

        producer(server.url).send_task("app.t")  # kombu's LPUSH
        tick(daemon, "broker")
        assert skipped(daemon, "broker") == 1
        report = daemon.book.broker
        assert report is not None
        assert sum(q.total for q in report.queues) == 1
        # A waiting message ages without a write: every check runs while it waits.
        tick(daemon, "broker")
        tick(daemon, "broker")
        assert skipped(daemon, "broker") == 1

    def test_a_check_that_read_its_own_baseline_sees_a_message_sent_right_after(
        self, daemon: Daemon, client: redis.Redis, server: embedded.Server
    ) -> None:
        daemon.run_job(daemon.job("broker"))  # no INFO reading before it: it reads its own
        producer(server.url).send_task("app.t")
        daemon.run_job(daemon.job("broker"))
        assert skipped(daemon, "broker") == 0

    def test_redbeat_absent_is_read_once(self, daemon: Daemon, client: redis.Redis) -> None:
        tick(daemon, "redbeat")
        tick(daemon, "redbeat")
        assert skipped(daemon, "redbeat") == 1


class TestIdleCost:
    def test_the_defaults_fit_3000_commands_a_day_on_a_clean_keyspace(
        self, client: redis.Redis, server: embedded.Server
    ) -> None:
        """Each job's cost per run on a clean 5,000-result keyspace with the default settings, once
        its first run (the pass that cleans) is done: at the default intervals, with the lease's
        renewals, a full pass and a census a day, the day adds up to under 3,000 commands."""
        store(server.url, 5000)
        daemon = make(janitor_settings(server.url))
        s = daemon.settings
        costs = budget.Costs.empty()
        try:
            daemon.run_job(daemon.job("redis_info"))
            # The pass that gives 5,000 results their TTL is counted like any job's commands.
            assert _sent(daemon, lambda: daemon.run_job(daemon.job("results"))) > 0
            for job in daemon.jobs:
                tick(daemon, job.name)
            # A clean pass reads what the census reads, a SCAN page at a time; the census's
            # pages are SCAN COUNT's, so its cost does not depend on how fast the machine is.
            full_pass = _sent(daemon, lambda: daemon.run_job(daemon.job("census")))
            for job in daemon.jobs:
                for _ in range(3):
                    daemon.run_job(daemon.job("redis_info"))
                    costs.ran(job.name, _sent(daemon, lambda job=job: daemon.run_job(job)))
        finally:
            daemon.lease.release()
        assert costs.per_run["results"] == 0  # skipped: nothing was written
        configured = {job.name: job.interval(s) for job in daemon.jobs} | {"lease": s.lease_ttl / 3}
        costs.per_run["lease"] = 1
        plan = budget.plan(3000, configured, costs, sweep="results")
        assert plan.factor == 1.0, plan.line()
        # A pass costs about what a census does (both walk every result key once).
        assert plan.daily + 2 * full_pass < 3000, (plan.line(), full_pass)


def _sent(daemon: Daemon, run: Callable[[], None]) -> int:
    before = daemon.metrics.sent_on_this_thread()
    run()
    return daemon.metrics.sent_on_this_thread() - before


def test_budget_plans_and_says_what_it_buys(server: embedded.Server) -> None:
    """A budget too small for a day's pass: the intervals stretch (never past a day), the plan and
    the freshness show on the page and in the gauges, and one warning names the setting."""
    store(server.url, 50)
    daemon = make(janitor_settings(server.url, watch="off", daily_command_budget="60"))
    try:
        with structlog.testing.capture_logs() as logs:
            for _ in range(2):
                for job in daemon.jobs:
                    daemon.run_job(job)
    finally:
        daemon.lease.release()
    get = daemon.metrics.registry.get_sample_value
    assert get("janitor_command_budget_daily") == 60
    planned = {j.name: get("janitor_job_planned_interval_seconds", {"job_name": j.name}) for j in daemon.jobs}
    s = daemon.settings
    assert planned["broker"] is not None
    assert planned["broker"] > s.broker_interval
    assert all(
        v is not None and j.interval(s) <= v <= max(j.interval(s), budget.DAY)
        for j, v in zip(daemon.jobs, planned.values(), strict=True)
    )
    scheduled = daemon.scheduler.get_job("broker").trigger.interval.total_seconds()
    assert scheduled == pytest.approx(planned["broker"], rel=0.1)
    assert daemon.lease.ttl > s.lease_ttl  # the renewals are planned too
    warnings = [e for e in logs if e["event"] == "budget.too_small"]
    assert len(warnings) == 1
    assert "JANITOR_DAILY_COMMAND_BUDGET=60" in warnings[0]["detail"]
    _, _, page = daemon.book.page({})
    assert b"Command budget" in page
    assert b"60 commands a day" in page


class TestWatchModePasses:
    def test_passes_skipped_while_watching_and_back_for_a_write_watch_mode_cannot_hear(
        self, client: redis.Redis, server: embedded.Server
    ) -> None:
        client.config_set("notify-keyspace-events", "E$")
        daemon = make(janitor_settings(server.url))
        daemon.watcher.start()
        try:
            assert daemon.watcher.wait_watching(30)
            tick(daemon, "results")  # the pass watch mode's unbroken stretch starts after
            keys = store(server.url, 5)
            wait_for(lambda: all(client.ttl(k) > 0 for k in keys), 30, "TTLs from watch mode")
            tick(daemon, "results")
            assert skipped(daemon, "results", "watching") == 1

            # RESTORE publishes no `set` event: watch mode never hears of this key, the counters do.
            dumped = client.dump(keys[0])
            assert dumped is not None
            client.restore(keys[0], 0, dumped, replace=True)  # as a backup tool would put it back: no TTL
            assert client.ttl(keys[0]) == -1
            tick(daemon, "results")
            assert skipped(daemon, "results", "watching") == 1
            assert client.ttl(keys[0]) > 0
        finally:
            daemon.watcher.stop()
            daemon.lease.release()
