"""The ETA and running-task guards against real servers, real kombu and real Celery workers whose own
``restore_visible`` runs every second: what kombu duplicates without a guard, and does not with it."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import redis
import structlog
from prometheus_client import CollectorRegistry

from janitor import config
from janitor.dev import embedded
from janitor.operations import broker, guards
from janitor.redis_io import scripts
from janitor.redis_io.lease import Change
from janitor.service.daemon import Daemon
from tests import broker_app
from tests.support import wait_for
from tests.support.celery import celery_worker, deliver_without_ack, producer, sigkill, snapshot
from tests.support.daemons import Janitor, launch, stop_all

VT = 3  # the workers' visibility timeout (tests.broker_app)
GRACE = 3  # JANITOR_ETA_GUARD_GRACE in these tests


def _score(client: redis.Redis, tag: str) -> float:
    score = client.zscore("unacked_index", tag)
    assert score is not None
    return float(score)


# -- the script and the pass, without workers --------------------------------------------
class TestRescore:
    """One held ETA message from a consumer that took it and vanished: what a pass writes, and what not."""

    def _held(
        self, client: redis.Redis, server: embedded.Server, settings: config.Settings
    ) -> tuple[broker.BrokerReport, str, float]:
        producer(server.url).send_task("app.later", countdown=7200)
        (tag,) = deliver_without_ack(server.url, 1)
        report = broker.detect(client, settings, now=time.time(), unacked_only=True)
        (held,) = report.guardable
        assert held.state == "held"
        assert held.eta is not None
        return report, tag, held.eta

    def test_dry_run_writes_nothing(
        self, client: redis.Redis, settings: config.Settings, server: embedded.Server
    ) -> None:
        report, _, _ = self._held(client, server, settings)
        planned = guards.plan(report, "eta", grace=60)
        before = snapshot(client)
        done = guards.rescore(client, settings, planned, guard="eta", dry_run=True)
        assert (done.planned, done.raised) == (1, 1)
        assert snapshot(client) == before
        assert sum(done.tally.commands.values()) == 0

    def test_raises_once_to_eta_minus_vt_plus_grace(
        self, client: redis.Redis, settings: config.Settings, server: embedded.Server
    ) -> None:
        """The score becomes eta - vt + grace; the hash entry and the mutex are left as they were;
        the next pass has nothing to do."""
        report, tag, eta = self._held(client, server, settings)
        entry = client.hget("unacked", tag)
        done = guards.rescore(client, settings, guards.plan(report, "eta", grace=60), guard="eta", dry_run=False)
        assert done.raised == 1
        assert _score(client, tag) == pytest.approx(eta - settings.visibility_timeout + 60, abs=0.01)
        assert client.hget("unacked", tag) == entry
        assert not client.exists("unacked_mutex")
        again = broker.detect(client, settings, now=time.time(), unacked_only=True)
        assert guards.plan(again, "eta", grace=60) == []

    def test_changed_entry_and_lower_score_are_left_alone(
        self, client: redis.Redis, settings: config.Settings, server: embedded.Server
    ) -> None:
        """An entry re-delivered since it was read (another copy, another score) is not re-scored, and the
        script never lowers a score."""
        report, tag, _ = self._held(client, server, settings)
        planned = guards.plan(report, "eta", grace=60)
        client.zadd("unacked_index", {tag: time.time() + 1})  # re-delivered meanwhile
        redelivered = _score(client, tag)
        done = guards.rescore(client, settings, planned, guard="eta", dry_run=False)
        assert (done.raised, dict(done.skipped)) == (0, {"changed": 1})
        assert _score(client, tag) == redelivered
        token = uuid.uuid4().hex
        client.set("unacked_mutex", token)
        lower = scripts.rescore(
            scripts.Tally(),
            client,
            unacked="unacked",
            index="unacked_index",
            mutex="unacked_mutex",
            tag=tag,
            mutex_token=token,
            entry=client.hget("unacked", tag) or b"",
            read_score=redelivered,
            new_score=redelivered - 100,
        )
        assert lower is scripts.Rescored.LOWER
        assert _score(client, tag) == redelivered

    def test_skips_while_kombu_holds_the_mutex(
        self, client: redis.Redis, settings: config.Settings, server: embedded.Server
    ) -> None:
        report, tag, _ = self._held(client, server, settings)
        client.set("unacked_mutex", "kombu's")
        delivered = _score(client, tag)
        done = guards.rescore(client, settings, guards.plan(report, "eta", grace=60), guard="eta", dry_run=False)
        assert done.mutex_held
        assert dict(done.skipped) == {"mutex_held": 1}
        assert _score(client, tag) == delivered
        assert client.get("unacked_mutex") == b"kombu's"


class TestEtaGuardJob:
    """The daemon's eta_guard job on one held message: a dry run says what it would raise and writes
    nothing; a real run raises it once and counts it."""

    def test_dry_run_then_real_run(self, client: redis.Redis, server: embedded.Server) -> None:
        producer(server.url).send_task("app.later", countdown=7200)
        (tag,) = deliver_without_ack(server.url, 1)
        delivered = _score(client, tag)
        outcomes = {}
        for dry in (True, False):
            settings = config.load(
                {"JANITOR_REDIS_URL": server.url, "JANITOR_ETA_GUARD": "true", "JANITOR_DRY_RUN": str(dry).lower()}
            )
            registry = CollectorRegistry()
            daemon = Daemon.create(settings, registry)
            assert daemon.lease.step()[0] is Change.ACQUIRED
            try:
                before = snapshot(client)
                with structlog.testing.capture_logs() as logs:
                    daemon.run_job(daemon.job("eta_guard"))
                (line,) = [e for e in logs if e.get("job") == "eta_guard"]
                outcomes[dry] = (
                    line["raised"],
                    line["held"],
                    registry.get_sample_value("janitor_rescored_total", {"guard": "eta"}),
                )
                if dry:
                    assert {k: v for k, v in snapshot(client).items() if b"janitor" not in k} == {
                        k: v for k, v in before.items() if b"janitor" not in k
                    }
            finally:
                daemon.lease.release()
        assert outcomes == {True: (1, 1, None), False: (1, 1, 1.0)}
        assert _score(client, tag) > delivered + 3600


# -- real workers, kombu's own restore every second -------------------------------------
def _janitor(tmp_path: Path, url: str, **env: str) -> Janitor:
    janitor = launch(
        tmp_path / "janitor.log",
        JANITOR_REDIS_URL=url,
        JANITOR_VISIBILITY_TIMEOUT=str(VT),
        JANITOR_GUARD_INTERVAL="0.5",
        JANITOR_ETA_GUARD_GRACE=str(GRACE),
        JANITOR_BROKER_INTERVAL="0.5",
        JANITOR_SWEEP_INTERVAL="60",
        JANITOR_CENSUS_INTERVAL="60",
        **env,
    )
    wait_for(lambda: janitor.sample("janitor_is_leader") == 1, 15, "the janitor to lead")
    return janitor


def _runs(client: redis.Redis, ids: list[str], kind: str = "started") -> list[int]:
    return [int(client.get(f"test:{kind}:{i}") or 0) for i in ids]


def _settled(client: redis.Redis, ids: list[str]) -> bool:
    """Every task done, nothing left unacked or waiting."""
    return all(_runs(client, ids, "done")) and not client.hlen("unacked") and not client.llen("celery")


@pytest.mark.celery
class TestEtaGuard:
    """Countdown tasks longer than the visibility timeout, two workers restoring every second."""

    @pytest.mark.parametrize("guarded", [False, True], ids=["without_guard", "with_guard"])
    def test_countdown_tasks_run_once_only_with_the_guard(
        self, guarded: bool, client: redis.Redis, server: embedded.Server, tmp_path: Path
    ) -> None:
        janitor = _janitor(tmp_path, server.url, JANITOR_ETA_GUARD=str(guarded).lower())
        try:
            with (
                celery_worker(server.url, "w1@%h", kombu_restore_every=1),
                celery_worker(server.url, "w2@%h", kombu_restore_every=1),
            ):
                app = producer(server.url)
                ids = [app.send_task("broker_app.work", args=[0.2], countdown=8).id for _ in range(4)]
                wait_for(lambda: _settled(client, ids), 60, "the countdown tasks to run")
                time.sleep(2.0)  # room for a late duplicate to show up
                runs = _runs(client, ids)
            rescored = janitor.sample("janitor_rescored_total", guard="eta")
        finally:
            stop_all([janitor])
        if guarded:
            assert runs == [1, 1, 1, 1]
            assert (rescored or 0) >= 4
        else:
            assert sum(runs) > len(ids), "kombu's restore should have duplicated the held messages"

    def test_killed_workers_eta_tasks_run_once_after_eta_plus_grace(
        self, client: redis.Redis, server: embedded.Server, tmp_path: Path
    ) -> None:
        """Re-scored held messages of a SIGKILLed worker wait in unacked until eta + grace, then kombu's
        restore in another worker hands them back and each runs exactly once."""
        janitor = _janitor(tmp_path, server.url, JANITOR_ETA_GUARD="true")
        try:
            app = producer(server.url)
            with celery_worker(server.url, "w1@%h", kombu_restore_every=1) as w1:
                eta = time.time() + 8  # no later than the tasks' own ETA
                ids = [app.send_task("broker_app.work", args=[0.2], countdown=8).id for _ in range(3)]
                wait_for(lambda: (janitor.sample("janitor_rescored_total", guard="eta") or 0) >= 3, 30, "re-scores")
                sigkill(w1)
            with celery_worker(server.url, "w2@%h", kombu_restore_every=1):
                wait_for(lambda: time.time() > eta + GRACE - 0.5, 30, "almost eta + grace")
                still_unacked = client.hlen("unacked")
                early = _runs(client, ids)
                wait_for(lambda: _settled(client, ids), 60, "the killed worker's tasks to run")
                time.sleep(2.0)
                runs = _runs(client, ids)
        finally:
            stop_all([janitor])
        assert (still_unacked, early) == (3, [0, 0, 0])
        assert runs == [1, 1, 1]


@pytest.mark.celery
class TestRunningGuard:
    """acks_late tasks three times longer than the visibility timeout, workers restoring every second."""

    @pytest.mark.parametrize("guarded", [False, True], ids=["without_guard", "with_guard"])
    def test_long_tasks_run_once_only_with_the_guard(
        self, guarded: bool, client: redis.Redis, server: embedded.Server, tmp_path: Path
    ) -> None:
        janitor = _janitor(tmp_path, server.url, JANITOR_RUNNING_GUARD=str(guarded).lower())
        try:
            with (
                celery_worker(server.url, "w1@%h", kombu_restore_every=1),
                celery_worker(server.url, "w2@%h", kombu_restore_every=1),
            ):
                wait_for(lambda: janitor.sample("celery_workers_alive") == 2, 30, "the janitor to hear both workers")
                app = producer(server.url)
                ids = [app.send_task("broker_app.work", args=[3 * VT]).id for _ in range(3)]
                wait_for(lambda: _settled(client, ids), 90, "the long tasks to finish")
                time.sleep(2.0)
                runs = _runs(client, ids)
            rescored = janitor.sample("janitor_rescored_total", guard="running")
        finally:
            stop_all([janitor])
        if guarded:
            assert runs == [1, 1, 1]
            assert (rescored or 0) >= 3
        else:
            assert sum(runs) > len(ids), "kombu's restore should have handed running tasks to a second run"

    def test_killed_worker_task_is_restored_and_completes_once(
        self, client: redis.Redis, server: embedded.Server, tmp_path: Path
    ) -> None:
        """While its worker lives, kombu's own restore leaves a running task alone well past the visibility
        timeout; once the worker is SIGKILLed, its score ages, kombu restores it, and it completes once."""
        janitor = _janitor(tmp_path, server.url, JANITOR_RUNNING_GUARD="true")
        try:
            app = producer(server.url)
            with celery_worker(server.url, "w1@%h", concurrency=3, kombu_restore_every=1) as w1:
                wait_for(lambda: janitor.sample("celery_workers_alive") == 1, 30, "the janitor to hear w1")
                ids = [app.send_task("broker_app.hold").id for _ in range(3)]
                wait_for(lambda: client.hlen("unacked") == 3, 30, "three unacked messages")
                started = time.time()
                wait_for(lambda: time.time() > started + 3 * VT, 30, "three visibility timeouts")
                kept = (client.hlen("unacked"), client.llen("celery"))
                sigkill(w1)
            client.set(broker_app.RELEASE_KEY, 1)
            with celery_worker(server.url, "w2@%h", kombu_restore_every=1):
                wait_for(lambda: _settled(client, ids), 60, "the killed worker's tasks to run again")
                time.sleep(2.0)
                done = _runs(client, ids, "done")
        finally:
            stop_all([janitor])
        assert kept == (3, 0)
        assert done == [1, 1, 1]
