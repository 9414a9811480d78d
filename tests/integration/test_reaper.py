"""Abandoned STARTED results and the worker probes, against real servers and real Celery workers."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from celery import Celery
from celery.exceptions import WorkerLostError

from janitor import config
from janitor.dev import embedded
from janitor.operations import beat, reap
from janitor.redis_io import scripts
from janitor.redis_io.lease import Fence
from janitor.reports import findings
from janitor.service.status_book import StatusBook
from tests import broker_app
from tests.support import acl_audit, wait_for
from tests.support.celery import celery_worker, janitor_settings, producer, sigkill, snapshot, status
from tests.support.daemons import Janitor, launch, stop_all


def _started(app: Celery, host: str) -> str:
    """A STARTED result written by Celery's own backend, as a worker running it on ``host`` writes it."""
    task_id = str(uuid.uuid4())
    app.backend.store_result(task_id, {"pid": 4242, "hostname": host}, "STARTED")
    return task_id


def _meta(client: redis.Redis, key: str) -> dict[str, Any]:
    raw = client.get(key)
    assert isinstance(raw, bytes), key
    meta: dict[str, Any] = json.loads(raw)
    return meta


def _reap(client: redis.Redis, settings: config.Settings, *, dry_run: bool, **kw: Any) -> reap.ReapReport:
    args: dict[str, Any] = {"alive": set(), "last_seen": {}, "listened_s": 3600.0} | kw
    return reap.reap(client, client, settings, now=time.time(), fence=Fence(), dry_run=dry_run, **args)


class TestReapOnHandMadeResults:
    """What one pass rewrites, and everything it leaves alone, on results written by Celery's backend."""

    def test_dry_run_writes_nothing(self, client: redis.Redis, server: embedded.Server) -> None:
        settings = janitor_settings(server.url, reap_after="3")
        task_id = _started(producer(server.url), "gone@nowhere")
        before = snapshot(client)
        report = _reap(client, settings, dry_run=True)
        assert [r.task_id for r in report.reaped] == [task_id]
        assert snapshot(client) == before

    def test_rewritten_as_celery_reads_a_lost_worker(self, client: redis.Redis, server: embedded.Server) -> None:
        """The FAILURE is what Celery's client turns into WorkerLostError, it is published on the key's
        channel, and it keeps the janitor's failure retention."""
        app = producer(server.url)
        settings = janitor_settings(server.url, reap_after="3", failure_ttl="600")
        task_id = _started(app, "gone@nowhere")
        channel = client.pubsub(ignore_subscribe_messages=True)
        channel.subscribe(f"celery-task-meta-{task_id}")
        wait_for(lambda: channel.subscribed, 5, "the subscription")
        report = _reap(client, settings, dry_run=False)
        published = wait_for(lambda: channel.get_message(timeout=0.2), 10, "the published FAILURE")
        channel.close()
        assert [r.task_id for r in report.reaped] == [task_id]
        assert published["data"] == client.get(f"celery-task-meta-{task_id}")
        meta = _meta(client, f"celery-task-meta-{task_id}")
        assert meta["status"] == "FAILURE"
        assert meta["task_id"] == task_id
        assert meta["result"]["exc_type"] == "WorkerLostError"
        assert meta["result"]["exc_module"] == "billiard.exceptions"
        assert "gone@nowhere" in meta["result"]["exc_message"][0]
        assert meta["date_done"].endswith("+00:00")
        assert 0 < client.ttl(f"celery-task-meta-{task_id}") <= 600
        result = app.AsyncResult(task_id)
        assert result.state == "FAILURE"
        assert isinstance(result.result, WorkerLostError)

    def test_left_alone(self, client: redis.Redis, server: embedded.Server) -> None:
        """A live worker's task, one silent for less than REAP_AFTER, one whose message is in unacked, a
        pickled one and a finished one are never written."""
        app = producer(server.url)
        settings = janitor_settings(server.url, reap_after="30")
        alive = _started(app, "alive@here")
        recent = _started(app, "quiet@here")
        queued = _started(app, "gone@nowhere")
        client.hset("unacked", "tag-1", json.dumps([{"headers": {"id": queued, "task": "t"}}, "", "celery"]))
        client.zadd("unacked_index", {"tag-1": time.time()})
        pickled = Celery("pickled", broker=server.url, backend=server.url, set_as_current=False)
        pickled.conf.result_serializer = "pickle"
        _started(pickled, "gone@nowhere")
        done = str(uuid.uuid4())
        app.backend.store_result(done, "STARTED", "SUCCESS")
        before = snapshot(client)
        now = time.time()
        report = _reap(
            client,
            settings,
            dry_run=False,
            alive={"alive@here"},
            last_seen={"alive@here": now, "quiet@here": now - 10},
        )
        assert report.reaped == []
        assert report.skipped == {"alive": 1, "recent": 1, "in_unacked": 1, "serializer": 1}
        assert snapshot(client) == before
        assert status(client, alive) == status(client, recent) == "STARTED"

    def test_a_value_rewritten_since_it_was_read_is_kept(self, client: redis.Redis) -> None:
        """The compare-and-set: a worker that wrote its SUCCESS after the read wins."""
        key = b"celery-task-meta-raced"
        read = json.dumps({"status": "STARTED", "result": {"hostname": "w@h", "pid": 1}}).encode()
        client.set(key, json.dumps({"status": "SUCCESS", "result": 1}))
        after = client.get(key)
        done = scripts.reap(
            scripts.Tally(), client, fence=Fence().key, token="", key=key, read=read, value=b"x", ttl_ms=1000
        )
        assert not done
        assert client.get(key) == after
        assert client.ttl(key) == -1

    def test_fenced_without_the_lease(self, client: redis.Redis) -> None:
        key = b"celery-task-meta-fenced"
        read = json.dumps({"status": "STARTED", "result": {"hostname": "w@h", "pid": 1}}).encode()
        client.set(key, read)
        client.set(b"celery-janitor:test-lease", b"someone-else")
        with pytest.raises(redis.ResponseError, match="FENCED"):
            scripts.reap(
                scripts.Tally(),
                client,
                fence=b"celery-janitor:test-lease",
                token="mine",
                key=key,
                read=read,
                value=b"x",
                ttl_ms=1000,
            )
        assert client.get(key) == read


class TestDocumentedAcl:
    def test_reap_and_redbeat_as_the_janitor_user(self, client: redis.Redis, server: embedded.Server) -> None:
        """docs/acl.md's janitor grant covers the reaper's SCAN page, its write and its PUBLISH, and the
        RedBeat check: ACL LOG stays empty."""
        for user, rules in acl_audit.acl_lines().items():
            client.acl_deluser(user)
            client.execute_command("ACL", "SETUSER", user, *rules)
        client.execute_command("ACL", "LOG", "RESET")
        task_id = _started(producer(server.url), "gone@nowhere")
        client.zadd("redbeat::schedule", {"redbeat:tick": time.time() - 600})
        client.hset("redbeat:tick", "definition", json.dumps({"schedule": {"__type__": "interval", "every": 5}}))
        url = f"redis://janitor:{acl_audit.PASSWORD}@127.0.0.1:{server.port}/0"
        settings = janitor_settings(url, reap_after="3")
        as_janitor = settings.connect()
        try:
            report = _reap(as_janitor, settings, dry_run=False)
            seen = beat.check(as_janitor, settings, now=time.time(), tally=scripts.Tally())
        finally:
            as_janitor.close()
        assert [r.task_id for r in report.reaped] == [task_id]
        assert seen.overdue == 1
        assert client.acl_log() == []


# -- RedBeat, its schedule written by redbeat itself ---------------------------------------------
class TestRedBeat:
    def _app(self, url: str) -> Celery:
        app = Celery("beat", broker=url, set_as_current=False)
        app.conf.redbeat_redis_url = url
        return app

    def _entry(self, app: Celery, name: str, kind: Any, then: dt.datetime) -> None:
        """An entry as RedBeat leaves it after running it at ``then`` (its schedule's clock set to then):
        scored by the next run it worked out, and never rescheduled since, since no beat is ticking."""
        from redbeat import RedBeatSchedulerEntry

        entry = RedBeatSchedulerEntry(name, "tasks.tick", kind, app=app)
        entry.save()
        entry.reschedule(last_run_at=then)

    def test_diagnose_and_the_status_page_report_it(self, client: redis.Redis, server: embedded.Server) -> None:
        """An overdue RedBeat schedule is a finding in `diagnose --json` and on the daemon's status page."""
        from celery.schedules import schedule

        app = self._app(server.url)
        then = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        self._entry(app, "every-10s", schedule(dt.timedelta(seconds=10), nowfun=lambda: then), then)
        env = {k: v for k, v in os.environ.items() if not k.startswith("JANITOR_") and k != "REDIS_URL"}
        proc = subprocess.run(
            [sys.executable, "-m", "janitor", "diagnose", "--json", "--listen", "0"],
            env=env | {"JANITOR_REDIS_URL": server.url},
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        codes = {f["code"] for f in json.loads(proc.stdout)["findings"]}
        assert "beat_not_scheduling" in codes
        book = StatusBook(janitor_settings(server.url))
        book.checked_beat(beat.check(client, janitor_settings(server.url), now=time.time(), tally=scripts.Tally()))
        assert "beat is not scheduling: 1 entries overdue" in book.page({})[2].decode()

    def test_absent_without_redbeat(self, client: redis.Redis, settings: config.Settings) -> None:
        seen = beat.check(client, settings, now=time.time(), tally=scripts.Tally())
        assert not seen.present
        assert findings.beat_not_scheduling(findings.Inputs(None, redbeat=seen)) == []

    def test_overdue_by_their_interval_or_the_threshold(self, client: redis.Redis, server: embedded.Server) -> None:
        """Entries written by RedBeat: an interval entry late by more than its interval is overdue, one late
        by less is not; a crontab entry counts from JANITOR_BEAT_OVERDUE_AFTER. Nothing is written."""
        from celery.schedules import crontab, schedule

        app = self._app(server.url)
        then = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        clock = {"nowfun": lambda: then}
        self._entry(app, "every-10s", schedule(dt.timedelta(seconds=10), **clock), then)  # due 59 min ago
        self._entry(app, "every-2h", schedule(dt.timedelta(hours=2), **clock), then)  # due in an hour
        self._entry(app, "minutely", crontab(**clock), then)  # due 59 min ago, its interval not stated
        before = snapshot(client)
        settings = janitor_settings(server.url, beat_overdue_after="7200")
        lenient = beat.check(client, settings, now=time.time(), tally=scripts.Tally())
        strict = beat.check(
            client, janitor_settings(server.url, beat_overdue_after="60"), now=time.time(), tally=scripts.Tally()
        )
        assert snapshot(client) == before
        assert (lenient.present, lenient.entries, lenient.overdue) == (True, 3, 1)
        assert strict.overdue == 2
        (finding,) = findings.beat_not_scheduling(findings.Inputs(None, redbeat=strict))
        assert finding.title == "beat is not scheduling: 2 entries overdue"


# -- a real worker killed mid-task -------------------------------------------------------------
@dataclass
class Abandoned:
    """What a client, the janitor and its probes saw around a worker SIGKILLed with two tasks running."""

    ids: dict[str, str]
    host: str
    raised: list[BaseException] = field(default_factory=list)
    failure: dict[str, Any] = field(default_factory=dict)
    late_kept: bool = False
    killed_at: float = 0.0  # not asserted on (machine speed): reported by bench-style runs only
    woken_at: float = 0.0
    alive_status: str | None = None
    skipped_in_unacked: float | None = None
    reaped_total: float | None = None
    logged: list[dict[str, Any]] = field(default_factory=list)
    listing: list[dict[str, Any]] = field(default_factory=list)
    livez_alive: int = 0
    livez_dead: int = 0
    livez_never_heard: int = 0
    livez_second_worker: int = 0


@pytest.fixture(name="abandoned", scope="module", params=embedded.available_engines())
def _abandoned(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Abandoned]:
    with embedded.running(request.param) as server:
        janitor = launch(
            tmp_path_factory.mktemp("reaper") / "janitor.log",
            JANITOR_REDIS_URL=server.url,
            JANITOR_REAP_ABANDONED="true",
            JANITOR_REAP_AFTER="3",
            JANITOR_REAP_INTERVAL="0.5",
            JANITOR_SWEEP_INTERVAL="60",
            JANITOR_CENSUS_INTERVAL="60",
        )
        try:
            yield _kill_mid_task(server, janitor)
        finally:
            stop_all([janitor])


def _whole_pass_after(janitor: Janitor, since: float) -> None:
    """Until a reaper pass that began after ``since`` has finished (passes every 0.5 s)."""
    wait_for(
        lambda: (janitor.sample("janitor_job_last_success_timestamp_seconds", job_name="reaper") or 0) > since + 1,
        30,
        "a whole reaper pass",
    )


def _kill_mid_task(server: embedded.Server, janitor: Janitor) -> Abandoned:
    client = server.client()
    app = producer(server.url)
    ids = {"early": app.send_task("broker_app.hold_early").id, "late": app.send_task("broker_app.hold").id}
    with celery_worker(server.url, "w1@%h", concurrency=2) as w1:
        wait_for(lambda: all(status(client, i) == "STARTED" for i in ids.values()), 30, "two STARTED tasks")
        wait_for(lambda: client.hlen("unacked") == 1, 10, "the acks_late message alone in unacked")
        host = _meta(client, f"celery-task-meta-{ids['early']}")["result"]["hostname"]
        late_before = client.get(f"celery-task-meta-{ids['late']}")
        out = Abandoned(ids, host)
        out.livez_alive = wait_for(lambda: janitor.get(f"/workers/{host}/livez")[0] == 200 and 200, 15, "w1 alive")
        out.listing = json.loads(janitor.get("/workers")[1])

        def wait() -> None:
            try:
                app.AsyncResult(ids["early"]).get(timeout=120)
            except BaseException as exc:  # noqa: BLE001 - what get() raised is the finding
                out.raised.append(exc)
                out.woken_at = time.time()

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        out.killed_at = time.time()
        sigkill(w1)
    out.livez_dead = wait_for(lambda: janitor.get(f"/workers/{host}/livez")[0] == 503 and 503, 30, "w1 dead")
    out.livez_never_heard = wait_for(
        lambda: janitor.get("/workers/nobody@nowhere/livez")[0] == 503 and 503, 30, "a never-heard worker dead"
    )
    waiter.join(120)
    wait_for(lambda: status(client, ids["early"]) == "FAILURE", 30, "the abandoned task failed")
    _whole_pass_after(janitor, time.time())
    # The acks_late task of the same dead worker: its message is still in unacked, its result untouched.
    out.late_kept = client.get(f"celery-task-meta-{ids['late']}") == late_before and client.hlen("unacked") == 1
    # A worker started now takes the acks_late message back (kombu restores at start-up) and a new task:
    # both STARTED on a live worker, through whole reaper passes.
    with celery_worker(server.url, "w2@%h", concurrency=2):
        ids["alive"] = app.send_task("broker_app.hold_early").id
        wait_for(lambda: status(client, ids["alive"]) == "STARTED", 30, "a task STARTED on w2")
        w2 = _meta(client, f"celery-task-meta-{ids['alive']}")["result"]["hostname"]
        wait_for(lambda: janitor.get(f"/workers/{w2}/livez")[0] == 200, 15, "w2 heard")
        _whole_pass_after(janitor, time.time())
        out.alive_status = status(client, ids["alive"])
        out.livez_second_worker = janitor.get(f"/workers/{w2}/livez")[0]
        client.set(broker_app.RELEASE_KEY, 1)
        wait_for(lambda: status(client, ids["alive"]) == "SUCCESS", 30, "w2's task to finish")
    out.failure = _meta(client, f"celery-task-meta-{ids['early']}")
    out.skipped_in_unacked = janitor.sample("janitor_reap_skipped_total", reason="in_unacked")
    out.reaped_total = janitor.sample("janitor_reaped_tasks_total")
    out.logged = janitor.events("reaper.reaped")
    client.close()
    return out


@pytest.mark.celery
class TestKilledWorker:
    def test_waiting_client_gets_the_failure(self, abandoned: Abandoned) -> None:
        """AsyncResult.get(timeout=120) raises WorkerLostError instead of timing out."""
        assert len(abandoned.raised) == 1
        assert isinstance(abandoned.raised[0], WorkerLostError), abandoned.raised
        assert abandoned.failure["status"] == "FAILURE"
        assert abandoned.failure["task_id"] == abandoned.ids["early"]
        assert abandoned.reaped_total == 1.0
        assert [e["task_id"] for e in abandoned.logged] == [abandoned.ids["early"]]
        assert abandoned.logged[0]["worker"] == abandoned.host

    def test_message_in_unacked_never_reaped(self, abandoned: Abandoned) -> None:
        """The acks_late task of the same dead worker is still kombu's to redeliver: its STARTED result is
        left byte for byte as the worker wrote it."""
        assert abandoned.late_kept
        assert (abandoned.skipped_in_unacked or 0) >= 1

    def test_live_worker_never_touched(self, abandoned: Abandoned) -> None:
        assert abandoned.alive_status == "STARTED"


@pytest.mark.celery
class TestWorkerProbes:
    def test_listing(self, abandoned: Abandoned) -> None:
        """/workers names the worker with its heartbeat interval, when it was heard and how busy it was."""
        (row,) = [r for r in abandoned.listing if r["hostname"] == abandoned.host]
        assert row["freq"] == 2.0
        assert row["alive"] is True
        assert isinstance(row["active"], int)
        assert abs(row["last_heartbeat"] - time.time()) < 3600

    def test_livez(self, abandoned: Abandoned) -> None:
        """200 while the worker beats, 503 once it is killed; a worker never heard is dead once the janitor
        has listened long enough, and another live worker is alive."""
        assert (abandoned.livez_alive, abandoned.livez_dead) == (200, 503)
        assert abandoned.livez_never_heard == 503
        assert abandoned.livez_second_worker == 200
