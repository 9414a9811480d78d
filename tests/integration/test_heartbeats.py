"""Worker liveness from heartbeats sent by Celery's own event dispatcher, over a real server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
import structlog
from celery import Celery
from redis.backoff import NoBackoff
from redis.retry import Retry

from janitor import config
from janitor.dev import embedded
from janitor.redis_io.heartbeats import ClientSource, WorkerTracker, parse_event


def _app(url: str, **transport: Any) -> Celery:
    app = Celery("hb", broker=url, set_as_current=False)
    app.conf.broker_transport_options = transport
    return app


def beat(app: Celery, hostname: str, *, freq: float = 0.5, kind: str = "worker-heartbeat") -> None:
    """Publish one event exactly as a worker's ``Heart`` does."""
    with app.connection_for_write() as conn, app.events.Dispatcher(conn, hostname=hostname, enabled=True) as disp:
        disp.send(kind, freq=freq, active=0, processed=0)


@contextmanager
def tracking(source: ClientSource, settings: config.Settings, **kwargs: Any) -> Iterator[WorkerTracker]:
    tracker = WorkerTracker(**kwargs).start(source, settings)
    try:
        assert tracker.wait_subscribed()
        yield tracker
    finally:
        tracker.stop()


def wait_until(tracker: WorkerTracker, events: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while tracker.events < events and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tracker.events >= events


class TestWorkerTracker:
    """A worker counts as alive for 2 x its heartbeat interval after each heartbeat, as in Celery and Flower."""

    def test_alive_then_gone(self, server: embedded.Server, settings: config.Settings) -> None:
        """A worker is alive right after a heartbeat and gone 2 x freq later."""
        with tracking(server.url, settings) as tracker:
            beat(_app(server.url), "w1@host", freq=0.5)
            wait_until(tracker, 1)
            seen = tracker.alive()["w1@host"]
            assert tracker.alive(now=seen + 0.9) == {"w1@host": seen}
            assert tracker.alive(now=seen + 1.1) == {}

    def test_offline(self, server: embedded.Server, settings: config.Settings) -> None:
        """A clean worker-offline removes the worker at once."""
        app = _app(server.url)
        with tracking(server.url, settings) as tracker:
            beat(app, "w1@host")
            beat(app, "w1@host", kind="worker-offline")
            wait_until(tracker, 1)
            time.sleep(0.2)
            assert tracker.alive() == {}

    def test_prefix_and_db(self, server: embedded.Server) -> None:
        """Heartbeats are read on <global_keyprefix>/<broker db>.celeryev, and other apps' are ignored."""
        url = server.url.rsplit("/", 1)[0] + "/2"
        settings = config.load({"JANITOR_REDIS_URL": url, "JANITOR_BROKER_KEY_PREFIX": "myapp"})
        with tracking(url, settings) as tracker:
            beat(_app(server.url), "db0@host")  # another app: db 0, no prefix
            beat(_app(url, global_keyprefix="myapp"), "mine@host")
            wait_until(tracker, 1)
            time.sleep(0.2)
            assert set(tracker.alive()) == {"mine@host"}

    def test_broker_db_setting(self, server: embedded.Server) -> None:
        """JANITOR_BROKER_DB names the broker's db when the janitor connects to another one."""
        settings = config.load({"JANITOR_REDIS_URL": server.url, "JANITOR_BROKER_DB": "5"})
        with tracking(server.url, settings) as tracker:
            beat(_app(server.url.rsplit("/", 1)[0] + "/5"), "w5@host")
            wait_until(tracker, 1)
            assert set(tracker.alive()) == {"w5@host"}

    def test_silence_means_death_only_after_listening(self, server: embedded.Server, settings: config.Settings) -> None:
        """Silence proves nothing until the janitor has listened min_listen_s and 2 x the slowest freq seen."""
        with tracking(server.url, settings, min_listen_s=0.3) as tracker:
            assert not tracker.knows_the_dead()
            time.sleep(0.35)
            assert tracker.knows_the_dead()
            beat(_app(server.url), "slow@host", freq=30)
            wait_until(tracker, 1)
            assert not tracker.knows_the_dead()
            assert tracker.knows_the_dead(now=time.time() + 60)

    def test_a_stopped_tracker_keeps_what_it_heard(self, server: embedded.Server, settings: config.Settings) -> None:
        """Stopped after half a second (diagnose's --listen), a tracker keeps who it heard, its clock stopped."""
        stop = threading.Event()

        def beating() -> None:
            app = _app(server.url)
            while not stop.is_set():
                beat(app, "w1@host", freq=0.2)
                stop.wait(0.1)

        thread = threading.Thread(target=beating)
        thread.start()
        try:
            tracker = WorkerTracker().start(server.url, settings)
            tracker.wait_subscribed()
            time.sleep(0.5)
            tracker.stop()
        finally:
            stop.set()
            thread.join()
        assert "w1@host" in tracker.alive(now=time.time())
        heard = tracker.listened_for()
        assert 0.4 < heard < 5.0  # 0.5 s asked; the upper bound only leaves room for a loaded machine
        time.sleep(0.1)
        assert tracker.listened_for() == heard

    def test_reconnects(self, settings: config.Settings) -> None:
        """After the server restarts the tracker subscribes again and restarts its listening clock."""
        with embedded.running() as private:
            own = settings.model_copy(update={"redis_url": private.url})
            with tracking(private.url, own) as tracker:
                time.sleep(0.3)
                restarted = time.monotonic()
                private.restart()
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    beat(_app(private.url), "back@host")
                    if tracker.alive():
                        break
                    time.sleep(0.2)
                assert "back@host" in tracker.alive()
                # the 0.3 s heard before the restart no longer counts
                assert tracker.listened_for() <= time.monotonic() - restarted

    def test_an_outage_is_logged_once_each_way(self, settings: config.Settings) -> None:
        """While the server is down every retry fails, but only the loss and the return are logged."""
        with embedded.running() as private:
            own = settings.model_copy(update={"redis_url": private.url})
            connects: list[int] = []

            def factory() -> redis.Redis:
                connects.append(1)
                return own.connect(socket_timeout=5, retry=Retry(NoBackoff(), 1))

            with structlog.testing.capture_logs() as logs, tracking(factory, own, retry_s=0.01) as tracker:
                private.stop()
                deadline = time.monotonic() + 20
                while len(connects) < 6 and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert len(connects) >= 6  # five failed attempts at least, with back-off
                assert tracker.listened_for() == 0
                private.restart()
                assert tracker.wait_subscribed(timeout=40)
                time.sleep(0.1)
        ours = [e for e in logs if e["event"].startswith("heartbeats.")]
        assert [e["event"] for e in ours] == ["heartbeats.disconnected", "heartbeats.reconnected"]
        assert "cannot reach Redis" in ours[0]["error"]


class TestParseEvent:
    """Only well-formed kombu event envelopes are believed."""

    def test_garbage(self, client: redis.Redis) -> None:
        """Non-JSON, non-envelope, bad base64 and oversized frames are ignored."""
        for data in (b"x", b"[]", b'{"body": "!!!", "properties": {"body_encoding": "base64"}}', b"{" * 70_000):
            assert parse_event(data) is None
        assert parse_event(b'{"body": "{\\"hostname\\": \\"a@b\\"}"}') == {"hostname": "a@b"}
