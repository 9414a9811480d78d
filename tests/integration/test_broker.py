"""Broker health and restore against real servers, real kombu and real Celery workers."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kombu
import pytest
import redis
from celery import Celery
from prometheus_client import CollectorRegistry, generate_latest

from janitor import config
from janitor.dev import embedded
from janitor.operations import broker
from janitor.redis_io.heartbeats import WorkerTracker
from janitor.redis_io.lease import Change
from janitor.service.daemon import Daemon
from janitor.service.metrics import Metrics
from tests import broker_app
from tests.support import ROOT, wait_for
from tests.support.celery import (
    celery_worker,
    deliver_without_ack,
    janitor_settings,
    message_ids,
    producer,
    sigkill,
    snapshot,
    status,
)
from tests.support.daemons import launch, stop_all

SEP = "\x06\x16"


# -- detection and restore without workers -------------------------------------
class TestClassification:
    """Each unacked message is classified by its own headers and delivery time."""

    def test_states(self, client: redis.Redis, settings: config.Settings, server: embedded.Server) -> None:
        """Stuck, held (ETA), expired and still-active messages are told apart, and mismatches are counted."""
        app = producer(server.url)
        app.send_task("app.plain", (1,))
        app.send_task("app.eta", countdown=3000)
        app.send_task("app.gone", expires=5)
        deliver_without_ack(server.url, 3)
        client.zadd("unacked_index", {"ghost-tag": time.time()})  # index entry, no message
        client.hset("unacked", "lost-tag", client.hvals("unacked")[0])  # message, no index entry
        now = time.time()
        settings = settings.model_copy(update={"visibility_timeout": 60})

        fresh = broker.detect(client, settings, now=now)
        later = broker.detect(client, settings, now=now + 120)

        assert fresh.by_state["active"] == 2  # plain, and gone (not expired yet)
        assert fresh.by_state["held"] == 1
        assert fresh.stuck == []
        assert later.unacked_total == 4
        assert {m.task_name: m.state for m in later.stuck} == {"app.plain": "stuck", "app.gone": "expired"}
        assert (later.by_state["held"], later.by_state["index_only"], later.by_state["hash_only"]) == (1, 1, 1)
        assert later.max_eta_delay_s is not None
        assert 2990 < later.max_eta_delay_s < 3010
        assert later.oldest_unacked_age_s is not None
        assert later.oldest_unacked_age_s >= 120

    def test_walks_in_pages(self, client: redis.Redis, settings: config.Settings, server: embedded.Server) -> None:
        """A large unacked set is read a page at a time, each entry exactly once, even with tied scores."""
        app = producer(server.url)
        with app.producer_pool.acquire(block=True) as prod:
            for i in range(130):
                app.send_task("app.t", (i,), producer=prod)
        deliver_without_ack(server.url, 130)
        client.zadd("unacked_index", dict.fromkeys(client.zrange("unacked_index", 0, 59), 1000.0))  # ties across pages
        settings = settings.model_copy(update={"unacked_page": 25})

        report = broker.detect(client, settings, now=time.time() + 7200)

        assert report.unacked_total == 130
        assert len(report.stuck_tags) == 130
        assert report.tally.commands["ZRANGE"] == 6


class TestQueues:
    """Queue depth counts every priority list, under kombu's default and a configured separator."""

    def test_catalog_spares_the_keyspace_scan(self, client: redis.Redis, settings: config.Settings) -> None:
        """A daemon's repeated checks find queues by SCAN once per catalog period, then only read their depth."""
        from janitor.operations.broker import QueueCatalog, detect

        client.sadd("_kombu.binding.q1", "q1\x06\x16\x06\x16q1")
        client.lpush("q1", "m")
        catalog = QueueCatalog(every=900)
        first = detect(client, settings, now=1000.0, catalog=catalog)
        client.lpush("q1", "m")
        second = detect(client, settings, now=1060.0, catalog=catalog)
        assert first.tally.commands["SCAN"] >= 1
        assert second.tally.commands["SCAN"] == 0
        assert [q.total for q in second.queues if q.name == "q1"] == [2]
        third = detect(client, settings, now=2000.0, catalog=catalog)
        assert third.tally.commands["SCAN"] >= 1

    def test_default_separator(self, client: redis.Redis, settings: config.Settings, server: embedded.Server) -> None:
        """celery_queue_length sums the priority lists and the per-priority gauge splits them."""
        # Fresh queue names: kombu declares (binds) a queue once per process, and the server is shared.
        work, other = f"work-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
        app = producer(server.url)
        for priority in (0, 1, 4, 6, 6, 9):
            app.send_task("app.t", priority=priority, queue=work)
        app.send_task("app.t", queue=other)
        registry = CollectorRegistry()
        metrics = Metrics(registry)

        report = broker.detect(client, settings, now=time.time())
        metrics.seen.update(broker=report)

        depths = {q.name: q for q in report.queues}
        assert set(depths) == {work, other}  # found from _kombu.binding.*, JANITOR_QUEUES unset
        assert depths[work].total == 6
        assert depths[work].by_priority == {0: 2, 3: 1, 6: 2, 9: 1}
        assert depths[other].total == 1
        text = generate_latest(registry).decode()
        assert f'celery_queue_length{{queue_name="{work}"}} 6.0' in text
        assert f'janitor_queue_priority_length{{priority="6",queue_name="{work}"}} 2.0' in text

    def test_configured_separator(self, client: redis.Redis, server: embedded.Server) -> None:
        """With sep ':' and ten priority steps the janitor still finds every message."""
        app = producer(server.url, sep=":", priority_steps=list(range(10)))
        for priority in (0, 2, 5, 5, 7):
            app.send_task("app.t", priority=priority)
        settings = janitor_settings(server.url, broker_sep=":", priority_steps="0,1,2,3,4,5,6,7,8,9", queues="celery")

        report = broker.detect(client, settings, now=time.time())

        assert client.llen("celery:5") == 2
        assert [(q.name, q.total, q.by_priority) for q in report.queues] == [("celery", 5, {0: 1, 2: 1, 5: 2, 7: 1})]

    def test_oldest_age_when_stamped(
        self, client: redis.Redis, settings: config.Settings, server: embedded.Server
    ) -> None:
        """The age of the next message is reported when its publisher stamped it, and None otherwise."""
        stamped, plain = f"stamped-{uuid.uuid4().hex[:8]}", f"plain-{uuid.uuid4().hex[:8]}"
        with kombu.Connection(server.url) as conn:
            conn.SimpleQueue(stamped).put({"x": 1}, timestamp=time.time() - 30)
            conn.SimpleQueue(plain).put({"x": 1})

        ages = {q.name: q.oldest_age_s for q in broker.detect(client, settings, now=time.time()).queues}

        assert ages[stamped] is not None
        assert 29 < ages[stamped] < 60
        assert ages[plain] is None


class TestRestoreRules:
    """Restore acts only on what is surely stuck, and moves it the way kombu would."""

    def _stuck(self, client: redis.Redis, url: str, settings: config.Settings, **send: Any) -> broker.BrokerReport:
        producer(url).send_task("app.t", **send)
        deliver_without_ack(url, 1)
        return broker.detect(client, settings, now=time.time() + 7200)

    def test_needs_two_sightings(self, client: redis.Redis, settings: config.Settings, server: embedded.Server) -> None:
        """A message seen stuck once is left alone."""
        report = self._stuck(client, server.url, settings)
        before = snapshot(client)

        done = broker.restore(client, settings, report, confirmed=set(), dry_run=False)

        assert done.restored == {}
        assert done.skipped["seen_once"] == 1
        assert snapshot(client) == before

    def test_daemon_restores_only_after_a_check_half_an_interval_later(
        self, client: redis.Redis, server: embedded.Server
    ) -> None:
        """Two sightings are two broker checks whose start times are at least half of
        JANITOR_BROKER_INTERVAL apart: checks run in quick succession are one sighting. Each
        check is counted once, under its own job name."""
        settings = janitor_settings(server.url, restore_stuck="true", broker_interval="60")
        producer(server.url).send_task("app.t")
        deliver_without_ack(server.url, 1)
        registry = CollectorRegistry()
        daemon = Daemon.create(settings, registry)
        now = [time.time() + 7200]
        daemon.ctx.clock = lambda: now[0]
        check = daemon.job("broker")
        assert daemon.lease.step()[0] is Change.ACQUIRED
        try:
            daemon.run_job(check)
            now[0] += 29.9
            daemon.run_job(check)
            daemon.run_job(check)
            assert (client.hlen("unacked"), client.llen("celery")) == (1, 0)
            now[0] += 0.1
            daemon.run_job(check)
            assert (client.hlen("unacked"), client.llen("celery")) == (0, 1)
        finally:
            daemon.lease.release()
        assert registry.get_sample_value("janitor_job_duration_seconds_count", {"job_name": "broker"}) == 4
        assert registry.get_sample_value("janitor_job_duration_seconds_count", {"job_name": "census"}) is None
        assert registry.get_sample_value("janitor_sweep_duration_seconds_count", {"sweep": "broker"}) is None

    @pytest.mark.parametrize(("workers_sep", "janitor_sep"), [(":", SEP), (SEP, ":")])
    def test_refuses_a_separator_the_workers_do_not_use(
        self, client: redis.Redis, server: embedded.Server, workers_sep: str, janitor_sep: str
    ) -> None:
        """A JANITOR_BROKER_SEP unlike the workers' would push priority messages into lists no worker reads:
        `restore` refuses with one line and exit 2, and writes nothing."""
        producer(server.url, sep=workers_sep).send_task("app.t", priority=7)
        deliver_without_ack(server.url, 1, sep=workers_sep)
        time.sleep(1.1)
        before = snapshot(client)
        env = os.environ | {
            "JANITOR_REDIS_URL": server.url,
            "JANITOR_BROKER_SEP": janitor_sep,
            "JANITOR_VISIBILITY_TIMEOUT": "1",
            "JANITOR_LOG_LEVEL": "error",
        }
        proc = subprocess.run(
            [sys.executable, "-m", "janitor", "restore", "--wait", "0.2"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1
        assert "JANITOR_BROKER_SEP" in proc.stderr
        assert "nothing restored" in proc.stderr
        assert snapshot(client) == before

    def test_dry_run_writes_nothing(
        self, client: redis.Redis, settings: config.Settings, server: embedded.Server
    ) -> None:
        """A dry run reports the restore it would do and writes nothing."""
        report = self._stuck(client, server.url, settings)
        before = snapshot(client)

        done = broker.restore(client, settings, report, confirmed=report.stuck_tags, dry_run=True)

        assert done.restored == {"celery": 1}
        assert snapshot(client) == before

    def test_restore_like_kombu(self, client: redis.Redis, settings: config.Settings, server: embedded.Server) -> None:
        """The message goes back to its priority list, marked redelivered, with its tag and body unchanged."""
        report = self._stuck(client, server.url, settings, priority=7)
        original = json.loads(client.hvals("unacked")[0])[0]

        done = broker.restore(client, settings, report, confirmed=report.stuck_tags, dry_run=False)

        assert done.restored == {"celery": 1}
        assert client.hlen("unacked") == client.zcard("unacked_index") == 0
        assert client.exists("unacked_mutex") == 0
        back = json.loads(client.lindex(f"celery{SEP}6", 0))
        assert back["headers"]["redelivered"] is True
        assert back["properties"]["delivery_info"]["redelivered"] is True
        assert back["properties"]["delivery_tag"] == original["properties"]["delivery_tag"]
        assert back["body"] == original["body"]

    def test_named_exchange(self, client: redis.Redis, settings: config.Settings, server: embedded.Server) -> None:
        """A message published to a named exchange goes back to the queues bound to its routing key."""
        with kombu.Connection(server.url) as conn:
            exchange = kombu.Exchange("jobs", type="direct")
            for name, key in (("q1", "a"), ("q2", "b")):
                kombu.Queue(name, exchange, routing_key=key)(conn.default_channel).declare()
            conn.Producer().publish({"x": 1}, exchange=exchange, routing_key="b", headers={"task": "t", "id": "i1"})
        deliver_without_ack(server.url, 1, queue="q2")
        report = broker.detect(client, settings, now=time.time() + 7200)

        done = broker.restore(client, settings, report, confirmed=report.stuck_tags, dry_run=False)

        assert done.restored == {"q2": 1}
        assert (client.llen("q1"), client.llen("q2")) == (0, 1)

    def test_expired_dead_lettered(
        self, client: redis.Redis, settings: config.Settings, server: embedded.Server
    ) -> None:
        """A message past its ``expires`` goes to the dead-letter list, not back to the queue."""
        report = self._stuck(client, server.url, settings, expires=60)

        done = broker.restore(client, settings, report, confirmed=report.stuck_tags, dry_run=False)

        assert done.dead_lettered == {"celery": 1}
        assert [d.reason for d in done.dead] == ["expired"]
        assert client.llen("celery") == 0
        assert client.llen("janitor.dead.celery") == 1

    def test_yields_to_kombu_mutex(
        self, client: redis.Redis, settings: config.Settings, server: embedded.Server
    ) -> None:
        """While a kombu consumer holds unacked_mutex (its own restore), the janitor restores nothing."""
        from kombu.transport.redis import Mutex

        report = self._stuck(client, server.url, settings)
        with Mutex(client, "unacked_mutex", 300):
            done = broker.restore(client, settings, report, confirmed=report.stuck_tags, dry_run=False)
        assert done.mutex_held
        assert done.restored == {}
        assert client.hlen("unacked") == 1

    def test_off_by_default(self, client: redis.Redis, settings: config.Settings, server: embedded.Server) -> None:
        """Without JANITOR_RESTORE_STUCK the janitor only reports."""
        report = self._stuck(client, server.url, settings)
        before = snapshot(client)

        assert broker.auto_restore(client, settings, report, confirmed=report.stuck_tags) is None
        assert snapshot(client) == before


class TestMetrics:
    """Stuck and restore metrics keep a bounded label set."""

    def test_stuck_names_capped(self, client: redis.Redis, settings: config.Settings, server: embedded.Server) -> None:
        """Past 20 task names, the rest of the stuck messages are counted under task_name="other"."""
        app = producer(server.url)
        for i in range(25):
            app.send_task(f"app.task{i:02d}", priority=0)
        app.send_task("app.task00")
        deliver_without_ack(server.url, 26)
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        report = broker.detect(client, settings, now=time.time() + 7200)

        metrics.seen.update(broker=report)
        metrics.restored(broker.restore(client, settings, report, confirmed=report.stuck_tags, dry_run=False))

        text = generate_latest(registry).decode()
        assert text.count("janitor_stuck_messages{") == 21
        assert 'janitor_stuck_messages{task_name="app.task00"} 2.0' in text
        assert 'janitor_stuck_messages{task_name="other"} 5.0' in text
        assert 'janitor_unacked_messages{state="stuck"} 26.0' in text
        assert 'janitor_restored_total{queue="celery"} 26.0' in text


# -- real workers ----------------------------------------------------------------
@dataclass
class KilledWorker:
    """What the janitor saw and did around a worker SIGKILLed with three tasks running."""

    ids: dict[str, str]
    while_alive: broker.BrokerReport
    first: broker.BrokerReport
    second: broker.BrokerReport
    restore_off_wrote: bool
    restored: broker.RestoreReport
    eta_entry_kept: bool
    priority_list: list[str]
    after_restore: broker.BrokerReport
    executions: dict[str, int] = field(default_factory=dict)


@pytest.fixture(name="killed", scope="module", params=embedded.available_engines())
def _killed(request: pytest.FixtureRequest) -> Iterator[KilledWorker]:
    with embedded.running(request.param) as server:
        yield _kill_scenario(server)


def _kill_scenario(server: embedded.Server) -> KilledWorker:
    client = server.client()
    settings = janitor_settings(server.url, visibility_timeout="3")
    tracker = WorkerTracker().start(server.url, settings)
    try:
        app = producer(server.url)
        ids = {"eta": app.send_task("broker_app.hold", countdown=300).id}
        ids |= {role: app.send_task("broker_app.hold").id for role in ("a", "b")}
        ids["prio"] = app.send_task("broker_app.hold", priority=6).id
        with celery_worker(server.url, "w1@%h", concurrency=3) as w1:
            running = [ids["a"], ids["b"], ids["prio"]]
            wait_for(lambda: all(status(client, i) == "STARTED" for i in running), 30, "three STARTED tasks")
            wait_for(lambda: client.hlen("unacked") == 4, 10, "four unacked messages")
            wait_for(lambda: any(h.startswith("w1@") for h in tracker.alive()), 10, "a heartbeat from w1")
            while_alive = broker.detect(client, settings, now=time.time(), workers=tracker)
            sigkill(w1)
        delivered = max(s for _, s in client.zrange("unacked_index", 0, -1, withscores=True))
        wait_for(
            lambda: time.time() > delivered + 3.2 and not tracker.alive() and tracker.knows_the_dead(),
            30,
            "visibility timeout and heartbeat expiry",
        )
        before = snapshot(client)
        first = broker.detect(client, settings, now=time.time(), workers=tracker)
        off = broker.auto_restore(client, settings, first, confirmed=set())
        second = broker.detect(client, settings, now=time.time(), workers=tracker)
        off = off or broker.auto_restore(client, settings, second, confirmed=first.stuck_tags)
        restore_off_wrote = off is not None or snapshot(client) != before
        eta_raw = [v for v in client.hvals("unacked") if ids["eta"].encode() in v]
        on = settings.model_copy(update={"restore_stuck": True})
        restored = broker.auto_restore(client, on, second, confirmed=first.stuck_tags)
        assert restored is not None
        eta_entry_kept = len(eta_raw) == 1 and eta_raw == [
            v for v in client.hvals("unacked") if ids["eta"].encode() in v
        ]
        priority_list = [json.loads(m)["headers"]["id"] for m in client.lrange(f"celery{SEP}6", 0, -1)]
        after_restore = broker.detect(client, settings, now=time.time(), workers=tracker)
        client.set(broker_app.RELEASE_KEY, 1)
        with celery_worker(server.url, "w2@%h"):
            lost = [ids["a"], ids["b"], ids["prio"]]
            wait_for(lambda: all(client.get(f"test:done:{i}") for i in lost), 30, "the lost tasks to run again")
            time.sleep(1.0)  # room for a duplicate to show up
        executions = {role: int(client.get(f"test:done:{i}") or 0) for role, i in ids.items()}
        return KilledWorker(
            ids,
            while_alive,
            first,
            second,
            restore_off_wrote,
            restored,
            eta_entry_kept,
            priority_list,
            after_restore,
            executions,
        )
    finally:
        tracker.stop()
        client.close()


@pytest.mark.celery
class TestKilledWorker:
    """After a worker is SIGKILLed mid-task, the janitor finds and safely recovers its tasks."""

    def test_stuck_reported_with_task_names(self, killed: KilledWorker) -> None:
        """The three running tasks are reported stuck under their task name; the ETA task is held."""
        assert sorted(m.task_id for m in killed.second.stuck) == sorted([killed.ids[r] for r in ("a", "b", "prio")])
        assert {m.task_name for m in killed.second.stuck} == {"broker_app.hold"}
        assert killed.second.by_state["held"] == 1

    def test_orphaned_started(self, killed: KilledWorker) -> None:
        """Their STARTED results are reported orphaned once the worker's heartbeats stop, not before."""
        assert killed.while_alive.orphaned_started == []
        assert killed.while_alive.by_state["running"] == 3
        assert killed.while_alive.workers_alive == 1
        orphaned = dict(killed.second.orphaned_started)
        assert sorted(orphaned) == sorted([killed.ids[r] for r in ("a", "b", "prio")])
        assert all(h.startswith("w1@") for h in orphaned.values())
        assert killed.second.workers_alive == 0

    def test_nothing_restored_while_off(self, killed: KilledWorker) -> None:
        """With restore off, two passes write nothing at all."""
        assert not killed.restore_off_wrote

    def test_restored_once_each(self, killed: KilledWorker) -> None:
        """With restore on, a fresh worker runs each lost task exactly once and the ETA task is untouched."""
        assert killed.restored.restored == {"celery": 3}
        assert killed.eta_entry_kept
        assert killed.executions == {"a": 1, "b": 1, "prio": 1, "eta": 0}
        assert killed.after_restore.stuck == []
        assert killed.after_restore.by_state["held"] == 1

    def test_priority_kept(self, killed: KilledWorker) -> None:
        """The priority-6 message goes back to its priority list."""
        assert killed.priority_list == [killed.ids["prio"]]


@pytest.mark.celery
class TestRunningTasks:
    """A task STARTED on a worker whose heartbeat is live is running, however old its delivery."""

    def test_daemon_never_restores_a_running_task(
        self, client: redis.Redis, server: embedded.Server, tmp_path: Path
    ) -> None:
        """acks_late + task_track_started, a 3 s visibility timeout and tasks that run three times longer,
        the daemon restoring every 0.5 s: it hands back none of them while their worker lives, says why
        they will be redelivered by kombu; once the worker is killed, each still runs to completion once."""
        app = producer(server.url)
        ids = [app.send_task("broker_app.hold").id for _ in range(3)]
        with celery_worker(server.url, "w1@%h", concurrency=3) as w1:
            wait_for(lambda: all(status(client, i) == "STARTED" for i in ids), 30, "three STARTED tasks")
            janitor = launch(
                tmp_path / "janitor.log",
                JANITOR_REDIS_URL=server.url,
                JANITOR_RESTORE_STUCK="true",
                JANITOR_VISIBILITY_TIMEOUT="3",
                JANITOR_BROKER_INTERVAL="0.5",
                JANITOR_SWEEP_INTERVAL="60",
                JANITOR_CENSUS_INTERVAL="60",
            )
            try:
                delivered = max(s for _, s in client.zrange("unacked_index", 0, -1, withscores=True))
                wait_for(lambda: time.time() > delivered + 9, 30, "three visibility timeouts")
                wait_for(lambda: janitor.sample("janitor_unacked_messages", state="running") == 3, 10, "three running")
                page = janitor.get("/")[1]
                held = (
                    client.hlen("unacked"),
                    client.llen("celery"),
                    janitor.sample("janitor_restored_total", queue="celery"),
                )
                sigkill(w1)
                wait_for(lambda: client.llen("celery") == 3, 30, "the killed worker's tasks back in their queue")
            finally:
                stop_all([janitor])
        assert held == (3, 0, 0.0)
        assert "running tasks have outlived the visibility timeout" in page
        assert "on worker w1@" in page
        client.set(broker_app.RELEASE_KEY, 1)
        with celery_worker(server.url, "w2@%h"):
            wait_for(lambda: all(client.get(f"test:done:{i}") for i in ids), 30, "the tasks to run again")
            time.sleep(1.0)  # room for a duplicate to show up
        assert [int(client.get(f"test:done:{i}") or 0) for i in ids] == [1, 1, 1]


@pytest.mark.celery
class TestBrokerApart:
    """Broker and results on different databases or servers (CELERY_BROKER_URL != CELERY_RESULT_BACKEND):
    one daemon sweeps the results' Redis and checks and restores on the broker's."""

    def test_two_databases(self, server: embedded.Server, tmp_path: Path) -> None:
        base = server.url.rsplit("/", 1)[0]
        self._round_trip(f"{base}/0", f"{base}/1", tmp_path)

    def test_two_servers(self, tmp_path: Path) -> None:
        engines = embedded.available_engines()
        with embedded.running(engines[0]) as one, embedded.running(engines[-1]) as other:
            self._round_trip(one.url, other.url, tmp_path)

    def _round_trip(self, broker_url: str, backend_url: str, tmp_path: Path) -> None:
        broker_db, results_db = redis.Redis.from_url(broker_url), redis.Redis.from_url(backend_url)
        app = Celery("producer", broker=broker_url, backend=backend_url, set_as_current=False)
        ids = [app.send_task("broker_app.hold").id for _ in range(3)]
        with celery_worker(broker_url, "w1@%h", concurrency=3, backend=backend_url) as w1:
            wait_for(lambda: all(status(results_db, i) == "STARTED" for i in ids), 30, "three STARTED tasks")
            janitor = launch(
                tmp_path / "janitor.log",
                CELERY_BROKER_URL=broker_url,
                CELERY_RESULT_BACKEND=backend_url,
                JANITOR_RESTORE_STUCK="true",
                JANITOR_VISIBILITY_TIMEOUT="3",
                JANITOR_BROKER_INTERVAL="0.5",
            )
            try:
                delivered = max(s for _, s in broker_db.zrange("unacked_index", 0, -1, withscores=True))
                wait_for(lambda: time.time() > delivered + 4, 30, "the visibility timeout")
                wait_for(lambda: janitor.sample("janitor_unacked_messages", state="running") == 3, 10, "running")
                assert broker_db.llen("celery") == 0
                sigkill(w1)
                wait_for(lambda: broker_db.llen("celery") == 3, 30, "the killed worker's tasks back in their queue")
                broker_db.set(broker_app.RELEASE_KEY, 1)
                with celery_worker(broker_url, "w2@%h", backend=backend_url):
                    wait_for(lambda: all(broker_db.get(f"test:done:{i}") for i in ids), 30, "the tasks to run again")
                    # The finished results, written with no TTL, get one from the sweep of the results' Redis.
                    keys = [f"celery-task-meta-{i}" for i in ids]
                    wait_for(lambda: all(results_db.ttl(k) > 0 for k in keys), 30, "TTLs on the results")
                started = janitor.events("daemon.started")[0]
            finally:
                stop_all([janitor])
        assert [int(broker_db.get(f"test:done:{i}") or 0) for i in ids] == [1, 1, 1]
        assert not broker_db.keys("celery-task-meta-*")
        assert started["url_source"] == "CELERY_RESULT_BACKEND"
        assert started["broker_url"].endswith(broker_url.rsplit("@", 1)[-1].split("//", 1)[-1])


@pytest.mark.celery
class TestRace:
    """Restoring alongside kombu's own restores never loses or duplicates a message."""

    def test_thousand_stuck(self, client: redis.Redis, server: embedded.Server) -> None:
        """kombu consumers and the janitor restore 1000 stuck messages at once: each ends up exactly once."""
        app = producer(server.url)
        with app.producer_pool.acquire(block=True) as prod:
            sent = {app.send_task("app.t", (i,), producer=prod).id for i in range(1000)}
        deliver_without_ack(server.url, 1000)
        settings = janitor_settings(server.url, visibility_timeout="1")
        time.sleep(1.1)
        first = broker.detect(client, settings, now=time.time())
        second = broker.detect(client, settings, now=time.time())
        tags = [m.tag for m in second.stuck]
        assert len(tags) == 1000
        start = threading.Barrier(4)
        errors: list[Exception] = []

        def kombu_shutdown_restore(order: list[str]) -> None:
            # What a worker's warm shutdown does: restore_by_tag for each tag, no mutex.
            with kombu.Connection(server.url, transport_options={"visibility_timeout": 1}) as conn:
                qos = conn.default_channel.qos
                start.wait()
                for tag in order:
                    qos.restore_by_tag(tag)

        def kombu_restore_visible() -> None:
            with kombu.Connection(server.url, transport_options={"visibility_timeout": 1}) as conn:
                qos = conn.default_channel.qos
                start.wait()
                while client.zcard("unacked_index"):
                    qos.restore_visible(num=50, interval=1)

        def guarded(fn: Callable[..., None], *args: Any) -> Callable[[], None]:
            def run() -> None:
                try:
                    fn(*args)
                except Exception as exc:  # noqa: BLE001 - reported by the test below
                    errors.append(exc)

            return run

        threads = [
            threading.Thread(target=guarded(kombu_shutdown_restore, tags[::-1])),
            threading.Thread(target=guarded(kombu_shutdown_restore, tags[500:] + tags[:500])),
            threading.Thread(target=guarded(kombu_restore_visible)),
        ]
        # The janitor takes part whatever the race below does: one message is its own.
        head = dataclasses.replace(second, stuck=second.stuck[:1])
        done = broker.restore(client, settings, head, confirmed=first.stuck_tags, dry_run=False)
        assert done.restored.total() == 1
        for t in threads:
            t.start()
        start.wait()
        report = second
        previous = first.stuck_tags
        while report.stuck:
            broker.restore(client, settings, report, confirmed=previous, dry_run=False)
            previous = report.stuck_tags
            report = broker.detect(client, settings, now=time.time() + 5)
        for t in threads:
            t.join(60)

        assert errors == []
        ids = message_ids(client)
        assert len(ids) == 1000
        assert set(ids) == sent
        assert client.hlen("unacked") == 0


@pytest.mark.celery
class TestPoison:
    """A task that kills every worker that runs it ends in the dead-letter list instead of looping."""

    def test_dead_lettered_after_cap(self, client: redis.Redis, server: embedded.Server) -> None:
        """With JANITOR_MAX_RESTORES=1 the first crash is restored and the second dead-lettered."""
        settings = janitor_settings(server.url, visibility_timeout="2", max_restores="1", restore_stuck="true")
        task_id = producer(server.url).send_task("broker_app.poison").id
        outcomes = []
        for _round in range(2):
            with celery_worker(server.url, "p@%h", pool="solo", concurrency=1) as worker:
                worker.wait(30)
            time.sleep(2.1)
            first = broker.detect(client, settings, now=time.time())
            second = broker.detect(client, settings, now=time.time())
            done = broker.auto_restore(client, settings, second, confirmed=first.stuck_tags)
            assert done is not None
            outcomes.append((dict(done.restored), dict(done.dead_lettered)))

        assert outcomes == [({"celery": 1}, {}), ({}, {"celery": 1})]
        assert int(client.get("test:poison:runs") or 0) == 2
        dead = [json.loads(m) for m in client.lrange("janitor.dead.celery", 0, -1)]
        assert [m["headers"]["id"] for m in dead] == [task_id]
        assert client.hlen("unacked") == 0
        assert client.llen("celery") == 0
