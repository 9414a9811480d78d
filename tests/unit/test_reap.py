"""The reaper's pure parts (the FAILURE it writes, how silent a worker is) and the worker probes' answers."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from celery import Celery
from celery.exceptions import WorkerLostError

from janitor import config
from janitor.operations import beat, reap
from janitor.redis_io.heartbeats import WorkerTracker
from janitor.redis_io.scripts import DueEntry
from janitor.reports import findings
from janitor.service.probes import Probes, liveness

STARTED: dict[str, Any] = {
    "status": "STARTED",
    "result": {"pid": 7, "hostname": "w1@box"},
    "traceback": None,
    "children": [],
    "date_done": None,
    "group_id": "g-1",
    "task_id": "t-1",
}
NOW = dt.datetime(2026, 12, 5, 12, 0, 0, 123456, tzinfo=dt.UTC)


class TestFailureMeta:
    def test_celery_reads_it_as_a_lost_worker(self) -> None:
        """Celery's own backend decodes the value into WorkerLostError, with the worker named."""
        value = json.dumps(reap.failure_meta(dict(STARTED), "w1@box", 301.2, NOW))
        backend = Celery("reader", backend="cache+memory://", set_as_current=False).backend
        meta = backend.decode_result(value)
        assert meta["status"] == "FAILURE"
        assert isinstance(meta["result"], WorkerLostError)
        assert "w1@box" in str(meta["result"])
        assert "301 s" in str(meta["result"])

    def test_keeps_the_other_fields_in_celerys_order(self) -> None:
        meta = reap.failure_meta(dict(STARTED), "w1@box", 5, NOW)
        assert list(meta) == list(STARTED)
        assert (meta["group_id"], meta["task_id"], meta["children"]) == ("g-1", "t-1", [])
        assert meta["date_done"] == "2026-12-05T12:00:00.123456+00:00"  # Celery's app.now().isoformat()


class TestSilence:
    def test_since_the_last_heartbeat(self) -> None:
        assert reap.silence(last_seen=90.0, listened_s=500.0, now=100.0) == 10.0

    def test_never_heard_counts_from_when_we_listened(self) -> None:
        assert reap.silence(last_seen=None, listened_s=42.0, now=100.0) == 42.0

    def test_never_longer_than_we_listened(self) -> None:
        """After the listener reconnects, beats may have been missed: silence restarts with it."""
        assert reap.silence(last_seen=0.0, listened_s=3.0, now=100.0) == 3.0


class TestLiveness:
    def test_alive_within_twice_the_frequency(self) -> None:
        assert liveness(96.5, 2.0, 600.0, 10.0, 100.0)[0]
        assert not liveness(95.0, 2.0, 600.0, 10.0, 100.0)[0]

    def test_its_own_frequency(self) -> None:
        assert liveness(85.0, 10.0, 600.0, 10.0, 100.0)[0]

    def test_never_heard(self) -> None:
        assert not liveness(None, None, 600.0, 10.0, 100.0)[0]
        ok, reason = liveness(None, None, 4.0, 10.0, 100.0)
        assert ok
        assert reason.startswith("unknown")

    def test_a_deaf_janitor_kills_no_worker(self) -> None:
        """Just reconnected (listened 1 s): a worker last heard long ago is not declared dead."""
        ok, reason = liveness(10.0, 2.0, 1.0, 10.0, 100.0)
        assert ok
        assert reason.startswith("unknown")


def _probes(token: str = "") -> tuple[Probes, WorkerTracker]:
    now = [1000.0]
    tracker = WorkerTracker(clock=lambda: now[0])
    tracker.record({"hostname": "w1@box", "type": "worker-heartbeat", "freq": 2.0, "active": 3}, 999.0)
    tracker.record({"hostname": "w2@box", "type": "worker-heartbeat", "freq": 2.0, "active": 0}, 900.0)
    tracker._since = 0.0  # listening for 1000 s
    settings = config.load({"JANITOR_REDIS_URL": "redis://localhost/0", "JANITOR_STATUS_TOKEN": token})
    return Probes(settings, tracker, clock=lambda: now[0]), tracker


def _get(probes: Probes, path: str, **environ: Any) -> tuple[str, bytes]:
    answer = probes.answer({"PATH_INFO": path, **environ})
    assert answer is not None
    return answer[0], answer[2]


class TestProbes:
    def test_listing(self) -> None:
        line, body = _get(_probes()[0], "/workers")
        assert line == "200 OK"
        rows = {r["hostname"]: r for r in json.loads(body)}
        assert rows["w1@box"] == {
            "hostname": "w1@box",
            "last_heartbeat": 999.0,
            "age_s": 1.0,
            "active": 3,
            "freq": 2.0,
            "alive": True,
        }
        assert rows["w2@box"]["alive"] is False

    def test_livez(self) -> None:
        probes, _ = _probes()
        assert _get(probes, "/workers/w1@box/livez")[0] == "200 OK"
        assert _get(probes, "/workers/w2@box/livez")[0] == "503 Service Unavailable"
        assert _get(probes, "/workers/nobody@box/livez")[0] == "503 Service Unavailable"

    def test_listing_behind_the_status_token_and_livez_not(self) -> None:
        probes, _ = _probes(token="s3cret")
        assert _get(probes, "/workers")[0] == "401 Unauthorized"
        assert _get(probes, "/workers", QUERY_STRING="token=s3cret")[0] == "200 OK"
        assert _get(probes, "/workers", HTTP_AUTHORIZATION="Bearer s3cret")[0] == "200 OK"
        assert _get(probes, "/workers/w1@box/livez")[0] == "200 OK"

    def test_other_paths_are_not_probes(self) -> None:
        probes, _ = _probes()
        assert probes.answer({"PATH_INFO": "/workers/a/b/livez"}) is None
        assert probes.answer({"PATH_INFO": "/workersx"}) is None


class TestBeat:
    def test_overdue_by_interval_else_threshold(self) -> None:
        assert beat.overdue(DueEntry(b"k", 100.0, 10.0, True), now=111.0, threshold=300.0)
        assert not beat.overdue(DueEntry(b"k", 100.0, 10.0, True), now=109.0, threshold=300.0)
        assert not beat.overdue(DueEntry(b"k", 100.0, None, True), now=399.0, threshold=300.0)
        assert beat.overdue(DueEntry(b"k", 100.0, None, True), now=401.0, threshold=300.0)

    def test_disabled_never_overdue(self) -> None:
        assert not beat.overdue(DueEntry(b"k", 0.0, 10.0, False), now=1e9, threshold=300.0)

    def test_finding(self) -> None:
        report = beat.BeatReport(present=True, entries=40, overdue=3, most_late_s=7200.0)
        (f,) = findings.beat_not_scheduling(findings.Inputs(None, redbeat=report))
        assert (f.severity, f.title) == ("error", "beat is not scheduling: 3 entries overdue")
        assert "JANITOR_REDBEAT_PREFIX" in f.fix
        assert findings.beat_not_scheduling(findings.Inputs(None, redbeat=beat.BeatReport(present=False))) == []
        on_time = beat.BeatReport(present=True, entries=40)
        assert findings.beat_not_scheduling(findings.Inputs(None, redbeat=on_time)) == []
