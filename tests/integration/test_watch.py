"""Watch mode on real servers: a result Celery writes gets its TTL from the keyspace notification of
its SET, with no full pass; servers without notifications, or refusing CONFIG, fall back to full
passes and say why in one line; a lost subscription is a gap that asks for a full pass, and nothing
written meanwhile stays without a TTL. Timings are never asserted, only generous deadlines."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import structlog
from celery.result import GroupResult
from prometheus_client import CollectorRegistry

from janitor import config
from janitor.dev import demo, embedded
from janitor.operations.sweep import sweep
from janitor.redis_io.lease import Fence
from janitor.reports import diagnose
from janitor.service.metrics import Metrics
from janitor.service.watcher import Watcher
from tests.celery_app import make_app
from tests.support import acl_audit, wait_for
from tests.support.celery_keyspace import workers
from tests.support.daemons import Janitor

CHANNEL = "__keyevent@0__:set"
DEADLINE = 10.0  # seconds a watched key may take to get its TTL here; the target is well under one


@pytest.fixture(name="notify")
def _notify(client: redis.Redis) -> Iterator[Callable[[str], None]]:
    """Sets the server's notify-keyspace-events; every test leaves them off again."""

    def notify(flags: str) -> None:
        client.config_set("notify-keyspace-events", flags)

    notify("")
    yield notify
    notify("")


@contextlib.contextmanager
def watching(
    settings: config.Settings,
    client: redis.Redis,
    metrics: Metrics,
    on_gap: Callable[[], None] = lambda: None,
    **kwargs: Any,
) -> Iterator[Watcher]:
    kwargs.setdefault("fence", Fence)
    watcher = Watcher(settings, client, metrics, on_gap=on_gap, window_s=0.05, **kwargs)
    watcher.start()
    try:
        yield watcher
    finally:
        watcher.stop()


def _result(client: redis.Redis, tid: str, status: str = "SUCCESS", age_days: float = 0) -> bytes:
    """A result as Celery's JSON backend writes it (SET, no TTL)."""
    key = f"celery-task-meta-{tid}".encode()
    done = dt.datetime.now(dt.UTC) - dt.timedelta(days=age_days)
    client.set(key, json.dumps(demo.task_meta(tid, status, done)))
    return key


def _all_have_ttl(client: redis.Redis, keys: list[bytes]) -> bool:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.pttl(key)
    return all(ttl > 0 for ttl in pipe.execute())


def _subscribers(client: redis.Redis) -> int:
    return int(client.pubsub_numsub(CHANNEL)[0][1])


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class TestWatching:
    def test_celery_results_get_their_ttl_without_a_pass(
        self, client: redis.Redis, settings: config.Settings, server: embedded.Server, notify: Callable[[str], None]
    ) -> None:
        """Results and a group saved by Celery's own backend get the retention TTL from their notification;
        a key of the app's own and a result Celery gave a TTL are left as they are."""
        notify("E$")
        app = make_app("plain", server.url, tasks=False)
        metrics = Metrics(CollectorRegistry())
        client.set("app:cache:user:1", "x")
        with watching(settings, client, metrics) as watcher:
            assert watcher.wait_watching(DEADLINE)
            tids = [str(uuid.uuid4()) for _ in range(40)]
            for i, tid in enumerate(tids):
                app.backend.store_result(tid, {"n": i}, "FAILURE" if i % 10 == 0 else "SUCCESS")
            gid = str(uuid.uuid4())
            app.backend.save_group(gid, GroupResult(gid, [app.AsyncResult(t) for t in tids[:3]], app=app))
            client.set("celery-task-meta-own-ttl-0000000000", json.dumps({"status": "SUCCESS"}), ex=99_999)
            client.set("app:cache:user:2", "y")
            keys = [app.backend.get_key_for_task(t) for t in tids] + [app.backend.get_key_for_group(gid)]
            wait_for(lambda: _all_have_ttl(client, keys), DEADLINE, "every result and the group to get a TTL")
        assert client.pttl("app:cache:user:1") == -1
        assert client.pttl("app:cache:user:2") == -1
        assert 99_000_000 < client.pttl("celery-task-meta-own-ttl-0000000000") <= 99_999_000
        assert client.ttl(keys[1]) > 86400 - 600  # SUCCESS: JANITOR_RESULT_TTL, a day
        assert client.ttl(keys[0]) > 86400  # FAILURE: JANITOR_FAILURE_TTL, a week
        assert _sample(metrics, "janitor_watch_keys_total") >= len(keys)
        assert _sample(metrics, "janitor_watch_lag_seconds_count") >= len(keys)
        assert _sample(metrics, "janitor_keys_scanned_total", sweep="results") == 0  # no full pass ran
        for command in ("CONFIG GET", "SUBSCRIBE", "EVALSHA"):
            assert _sample(metrics, "janitor_redis_commands_total", command=command) >= 1, command

    def test_real_worker_results(
        self, client: redis.Redis, settings: config.Settings, server: embedded.Server, notify: Callable[[str], None]
    ) -> None:
        """A real worker (result_expires=None, STARTED tracked): every result it writes ends with the TTL of
        its final state, though SUCCESS overwrites STARTED (and its TTL) with a plain SET."""
        notify("KEA")
        app = make_app("plain", server.url, tasks=False)
        metrics = Metrics(CollectorRegistry())
        with watching(settings, client, metrics) as watcher, workers(server.url, ["plain"]):
            assert watcher.wait_watching(DEADLINE)
            sent = [app.send_task("ks.add", (i, i)) for i in range(5)] + [app.send_task("ks.fail")]
            wait_for(lambda: all(r.ready() for r in sent), 60, "the worker to run every task")
            keys = [app.backend.get_key_for_task(r.id) for r in sent]
            wait_for(lambda: _all_have_ttl(client, keys), DEADLINE, "every worker result to get a TTL")
        assert client.ttl(keys[0]) <= 86400 < client.ttl(keys[-1])  # SUCCESS a day, FAILURE a week

    def test_dry_run_writes_nothing(
        self, client: redis.Redis, server: embedded.Server, notify: Callable[[str], None]
    ) -> None:
        """JANITOR_DRY_RUN: the watcher judges what it hears and writes nothing, old results included."""
        notify("E$")
        settings = config.load({"JANITOR_REDIS_URL": server.url, "JANITOR_DRY_RUN": "true"})
        metrics = Metrics(CollectorRegistry())
        with watching(settings, client, metrics) as watcher:
            assert watcher.wait_watching(DEADLINE)
            keys = [_result(client, f"dry-{i:04d}-{uuid.uuid4()}", age_days=3 * (i % 2)) for i in range(20)]
            before = {k: client.dump(k) for k in keys}
            wait_for(
                lambda: _sample(metrics, "janitor_watch_keys_total") >= len(keys), DEADLINE, "the watcher to judge"
            )
        assert {k: client.dump(k) for k in keys} == before
        assert [client.pttl(k) for k in keys] == [-1] * len(keys)


class TestFallback:
    def test_off_under_auto_never_subscribes(
        self, client: redis.Redis, settings: config.Settings, notify: Callable[[str], None]
    ) -> None:
        """Notifications off and JANITOR_WATCH=auto: no subscription, one line that says what to run."""
        metrics = Metrics(CollectorRegistry())
        with structlog.testing.capture_logs() as logs, watching(settings, client, metrics, recheck_s=0.1) as watcher:
            wait_for(lambda: any(e["event"] == "watch.unavailable" for e in logs), DEADLINE, "the fallback line")
            threading.Event().wait(1.0)  # several re-checks: still one line
            assert watcher.unbroken_since() is None
            assert _subscribers(client) == 0
            assert not watcher.status().watching
            assert "notifications are off" in watcher.status().reason
        (line,) = [e for e in logs if e["event"] == "watch.unavailable"]
        assert line["reason"] == "keyspace notifications are off (notify-keyspace-events='')"
        assert "JANITOR_SWEEP_INTERVAL" in line["fallback"]
        assert "CONFIG SET notify-keyspace-events E$" in line["fix"]
        assert "heroku redis:keyspace-notifications" in line["fix"]
        assert client.config_get("notify-keyspace-events")["notify-keyspace-events"] == ""  # auto changes nothing

    def test_on_turns_notifications_on_keeping_existing_flags(
        self, client: redis.Redis, settings: config.Settings, notify: Callable[[str], None]
    ) -> None:
        """JANITOR_WATCH=on adds E and $ to what the server has (here keyspace events for lists), says so once,
        and watches."""
        notify("Kl")
        on = settings.model_copy(update={"watch": "on"})
        with structlog.testing.capture_logs() as logs, watching(on, client, Metrics(CollectorRegistry())) as watcher:
            assert watcher.wait_watching(DEADLINE)
            key = _result(client, f"on-{uuid.uuid4()}")
            wait_for(lambda: client.pttl(key) > 0, DEADLINE, "the result to get a TTL")
        flags = client.config_get("notify-keyspace-events")["notify-keyspace-events"]
        assert set(flags) == set("KlE$")
        (line,) = [e for e in logs if e["event"] == "watch.enabled_notifications"]
        assert set(line["before"]) == set("Kl")
        assert set(line["after"]) == set("KlE$")

    @pytest.mark.parametrize(
        "case",
        [
            ("-config", "auto", "CONFIG GET"),
            ("-config", "on", "CONFIG GET"),
            ("-config|set", "on", "CONFIG SET"),
        ],
    )
    def test_config_refused_one_clear_line(
        self, client: redis.Redis, server: embedded.Server, notify: Callable[[str], None], case: tuple[str, str, str]
    ) -> None:
        """An ACL user refused CONFIG (as on managed servers) on a server without notifications: one line naming
        what was refused and what to run instead, and full passes (a refused CONFIG GET is probed first)."""
        refuse, watch, refused = case
        rules = [r for r in acl_audit.acl_lines()["janitor"] if not r.startswith("+config")]
        rules += ["+config|get"] if refuse == "-config|set" else []
        client.execute_command("ACL", "SETUSER", "nocfg", "reset", *rules)
        url = f"redis://nocfg:{acl_audit.PASSWORD}@127.0.0.1:{server.port}/0"
        settings = config.load({"JANITOR_REDIS_URL": url, "JANITOR_WATCH": watch})
        user = settings.connect()
        try:
            with (
                structlog.testing.capture_logs() as logs,
                watching(settings, user, Metrics(CollectorRegistry()), recheck_s=0.1) as watcher,
            ):
                wait_for(lambda: any(e["event"] == "watch.unavailable" for e in logs), DEADLINE, "the fallback line")
                threading.Event().wait(1.0)
                assert watcher.unbroken_since() is None
                assert not watcher.status().watching
                if refused == "CONFIG SET":  # flags known to be off: not even a probe's subscription
                    assert _subscribers(client) == 0
        finally:
            user.close()
            client.acl_deluser("nocfg")
        (line,) = [e for e in logs if e["event"] == "watch.unavailable"]
        assert line["reason"].startswith(f"the server refused {refused} notify-keyspace-events (")
        assert "NOPERM" in line["reason"] or "permission" in line["reason"]
        assert "heroku redis:keyspace-notifications -c E$" in line["fix"]
        assert client.config_get("notify-keyspace-events")["notify-keyspace-events"] == ""

    def test_config_refused_but_notifications_on_watches_by_probe(
        self, client: redis.Redis, server: embedded.Server, notify: Callable[[str], None]
    ) -> None:
        """A managed server that refuses CONFIG but has notifications on (Heroku's CLI, a parameter group): a SET
        of the janitor's own probe key comes back as a notification, so it watches."""
        notify("E$")
        rules = [r for r in acl_audit.acl_lines()["janitor"] if not r.startswith("+config")]
        client.execute_command("ACL", "SETUSER", "nocfg", "reset", *rules)
        url = f"redis://nocfg:{acl_audit.PASSWORD}@127.0.0.1:{server.port}/0"
        settings = config.load({"JANITOR_REDIS_URL": url})
        user = settings.connect()
        try:
            with (
                structlog.testing.capture_logs() as logs,
                watching(settings, user, Metrics(CollectorRegistry())) as watcher,
            ):
                assert watcher.wait_watching(DEADLINE)
                key = _result(client, f"probe-{uuid.uuid4()}")
                wait_for(lambda: client.pttl(key) > 0, DEADLINE, "the result to get a TTL")
        finally:
            user.close()
            client.acl_deluser("nocfg")
        assert [e for e in logs if e["event"] == "watch.unavailable"] == []
        (line,) = [e for e in logs if e["event"] == "watch.on"]
        assert line["reason"].startswith("CONFIG GET refused (")
        assert 0 < client.pttl(watcher.probe_key) <= 20_000  # the probe expires by itself


class TestGaps:
    def test_subscriber_killed_during_writes_nothing_missed(
        self, client: redis.Redis, settings: config.Settings, notify: Callable[[str], None]
    ) -> None:
        """CLIENT KILL TYPE pubsub while a writer writes: the gap is counted, a full pass is asked for once
        the subscription is back, and after it every result written has its TTL."""
        notify("E$")
        metrics = Metrics(CollectorRegistry())
        asked = threading.Event()
        passes: list[threading.Thread] = []

        def full_pass() -> None:  # what the daemon's scheduler does on run_soon
            asked.set()
            passes.append(threading.Thread(target=sweep, args=(client, settings)))
            passes[-1].start()

        written: list[bytes] = []
        stop = threading.Event()

        def writer() -> None:
            own = redis.Redis.from_url(settings.redis_url)
            i = 0
            while not stop.is_set() or i < 400:
                written.append(_result(own, f"gap-{i:06d}-{uuid.uuid4()}"))
                i += 1
            own.close()

        with watching(settings, client, metrics, on_gap=full_pass) as watcher:
            assert watcher.wait_watching(DEADLINE)
            thread = threading.Thread(target=writer)
            thread.start()
            wait_for(lambda: len(written) >= 100, DEADLINE, "the writer to start")
            killed_at = time.monotonic()
            assert (watcher.unbroken_since() or killed_at) < killed_at
            client.client_kill_filter(_type="pubsub")
            wait_for(asked.is_set, DEADLINE, "a full pass to be asked for")
            stop.set()
            thread.join(60)
            for p in passes:
                p.join(60)
            wait_for(lambda: _all_have_ttl(client, written), DEADLINE, "every written result to have a TTL")
            assert watcher.wait_watching(DEADLINE)  # subscribed again
            assert (watcher.unbroken_since() or 0) > killed_at  # unbroken only since it was back
        assert (
            _sample(metrics, "janitor_watch_gaps_total", reason="reconnected")
            + _sample(metrics, "janitor_watch_gaps_total", reason="disconnected")
            >= 1
        )

    def test_notifications_turned_off_and_on_are_noticed(
        self, client: redis.Redis, settings: config.Settings, notify: Callable[[str], None]
    ) -> None:
        """Someone turns notifications off while it watches: the next re-check finds it, counts a gap, asks for a
        full pass and says why; turned on again, it watches again."""
        notify("E$")
        metrics = Metrics(CollectorRegistry())
        asked = threading.Event()
        with (
            structlog.testing.capture_logs() as logs,
            watching(settings, client, metrics, on_gap=asked.set, recheck_s=0.2) as watcher,
        ):
            assert watcher.wait_watching(DEADLINE)
            notify("")
            wait_for(asked.is_set, DEADLINE, "a full pass to be asked for")
            wait_for(lambda: watcher.unbroken_since() is None, DEADLINE, "watch mode to stop")
            notify("E$")
            assert watcher.wait_watching(DEADLINE)
        assert _sample(metrics, "janitor_watch_gaps_total", reason="notifications_off") == 1
        events = [e["event"] for e in logs if e["event"] in {"watch.on", "watch.unavailable"}]
        assert events == ["watch.on", "watch.unavailable", "watch.on"]

    def test_fenced_batch_is_a_gap(
        self, client: redis.Redis, settings: config.Settings, notify: Callable[[str], None]
    ) -> None:
        """A batch the fence turns away (the lease moved on) writes nothing, is counted as a gap, and asks for a
        full pass at once; the subscription goes on, unbroken only from after the failure."""
        notify("E$")
        metrics = Metrics(CollectorRegistry())
        asked: list[float] = []
        stale = Fence(b"celery-task-meta-celery-janitor:lease", "1:someone-else")
        with watching(
            settings, client, metrics, on_gap=lambda: asked.append(time.monotonic()), fence=lambda: stale
        ) as w:
            assert w.wait_watching(DEADLINE)
            key = _result(client, f"fenced-{uuid.uuid4()}")
            wait_for(lambda: asked, DEADLINE, "a full pass to be asked for")
            assert client.pttl(key) == -1
            assert (w.unbroken_since() or 0) >= asked[0] - 1.0  # still subscribed, unbroken from the failure on
        assert _sample(metrics, "janitor_watch_gaps_total", reason="batch_failed") >= 1

    def test_restarted_server_watched_again(self, server: embedded.Server) -> None:
        """A Redis restart drops the subscription and CONFIG SET flags: with JANITOR_WATCH=on the watcher turns
        them on again once it is back, asks for a full pass, and new results get their TTL."""
        with embedded.running(server.engine) as own:
            client = own.client()
            client.config_set("notify-keyspace-events", "E$")
            settings = config.load({"JANITOR_REDIS_URL": own.url, "JANITOR_WATCH": "on"})
            metrics = Metrics(CollectorRegistry())
            asked = threading.Event()
            with (
                structlog.testing.capture_logs() as logs,
                watching(settings, client, metrics, on_gap=asked.set, retry_s=0.1) as watcher,
            ):
                assert watcher.wait_watching(DEADLINE)
                own.restart()
                wait_for(asked.is_set, 60, "a full pass to be asked for")
                assert watcher.wait_watching(60)
                assert set(client.config_get("notify-keyspace-events")["notify-keyspace-events"]) == set("E$")
                key = _result(client, f"restart-{uuid.uuid4()}")
                wait_for(lambda: client.pttl(key) > 0, DEADLINE, "the result to get a TTL")
            client.close()
        assert watcher.gaps >= 1
        (line,) = [e for e in logs if e["event"] == "watch.enabled_notifications"]  # the restart dropped them
        assert line["before"] == ""


class TestDiagnose:
    def test_diagnose_says_whether_watch_mode_can_run(
        self, client: redis.Redis, settings: config.Settings, notify: Callable[[str], None]
    ) -> None:
        """diagnose reads notify-keyspace-events and says what the daemon would do with it."""
        off = diagnose.collect(client, settings, listen_s=0, progress=False)
        assert off.connection.notify_keyspace_events == ""
        assert "  watch      off (notify-keyspace-events=''): the daemon runs full passes only; to turn " in (
            diagnose.render_text(off)
        )
        notify("KEA")
        on = diagnose.collect(client, settings, listen_s=0, progress=False)
        assert on.as_dict()["connection"]["notify_keyspace_events"] == "AKE"
        assert "  watch      available (notify-keyspace-events=AKE)" in diagnose.render_text(on)


class TestDaemon:
    def test_daemon_watches_and_a_gap_runs_a_pass(
        self, client: redis.Redis, spawn: Callable[..., Janitor], notify: Callable[[str], None]
    ) -> None:
        """The leader watches (full passes an hour apart here): new results get their TTL, the status page
        and metrics say watch mode is on, and a killed subscription runs a full pass at once."""
        notify("E$")
        janitor = spawn(JANITOR_SWEEP_INTERVAL="3600")
        wait_for(lambda: janitor.sample("janitor_watch_active") == 1, 30, "watch mode to start")
        wait_for(lambda: janitor.events("sweep.finished"), 30, "the pass run when the lease is taken")
        keys = [_result(client, f"d-{i:04d}-{uuid.uuid4()}") for i in range(20)]
        wait_for(lambda: _all_have_ttl(client, keys), DEADLINE, "the daemon to give every result a TTL")
        status, page = janitor.get("/")
        assert status == 200
        assert "Watch mode</th><td>watch (notify-keyspace-events=" in page
        assert (janitor.sample("janitor_watch_keys_total") or 0) >= len(keys)
        passes = len(janitor.events("sweep.finished"))
        client.client_kill_filter(_type="pubsub")
        wait_for(lambda: janitor.events("watch.gap"), DEADLINE, "the gap to be logged")
        wait_for(lambda: len(janitor.events("sweep.finished")) > passes, 30, "the full pass the gap asks for")
        wait_for(lambda: janitor.sample("janitor_watch_active") == 1, 30, "watch mode to resume")

    def test_daemon_without_notifications_says_why(
        self, client: redis.Redis, spawn: Callable[..., Janitor], notify: Callable[[str], None]
    ) -> None:
        """Notifications off under JANITOR_WATCH=auto: no subscription, full passes as before (results get their
        TTL from them), and the status page says why."""
        janitor = spawn()
        keys = [_result(client, f"off-{i:04d}-{uuid.uuid4()}") for i in range(5)]
        wait_for(lambda: _all_have_ttl(client, keys), 30, "a full pass to give the results a TTL")
        wait_for(lambda: janitor.events("watch.unavailable"), 30, "the fallback line")
        assert janitor.sample("janitor_watch_active") == 0
        assert _subscribers(client) == 0
        _, page = janitor.get("/")
        assert "Watch mode</th><td>full passes only, every 1 s: keyspace notifications are off" in page
