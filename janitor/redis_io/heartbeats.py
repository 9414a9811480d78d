"""Which Celery workers are alive, from their heartbeats on pub/sub.

Workers publish ``worker-heartbeat`` every ``freq`` seconds (2 s by default,
even without ``-E``) on ``<global_keyprefix>/<broker db>.celeryev/worker.heartbeat``.
We PSUBSCRIBE to ``worker.*`` with a plain redis-py client: no kombu consumer is
opened, so the janitor never takes a message or joins a queue. A worker is alive
while ``now < last_seen + 2 * freq``, Celery's and Flower's own rule
(``celery.events.state.HEARTBEAT_EXPIRE_WINDOW``); we use our own receive time
because the worker's ``timestamp`` is on its clock.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from janitor import errors
from janitor.config import Settings

log = structlog.get_logger("janitor.heartbeats")

DEFAULT_FREQ = 2.0
# Before the first heartbeat we do not know how often workers send one, so
# "silent" only means "gone" after this long (5 x Celery's default interval).
MIN_LISTEN_S = 10.0
_MAX_EVENT_BYTES = 64 * 1024

ClientSource = str | Callable[[], redis.Redis]


def channel_pattern(settings: Settings, url_db: int) -> str:
    """``<prefix>/<db>.celeryev/worker.*``: kombu's fanout prefix uses the broker db number."""
    db = url_db if settings.broker_db is None else settings.broker_db
    return f"{settings.broker_key_prefix}/{db}.celeryev/worker.*"


@dataclass(frozen=True, slots=True)
class Seen:
    """One worker as its last heartbeat described it (``active``: tasks running, when the event says)."""

    last_seen: float
    freq: float
    active: int | None = None

    def alive(self, now: float) -> bool:
        return now < self.last_seen + 2 * self.freq


def parse_event(data: bytes) -> dict[str, Any] | None:
    """The event dict inside a kombu envelope, or None for anything else."""
    if len(data) > _MAX_EVENT_BYTES:
        return None
    try:
        envelope = json.loads(data)
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body, validate=True)
        event = json.loads(body)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, RecursionError):
        return None
    return event if isinstance(event, dict) and isinstance(event.get("hostname"), str) else None


class WorkerTracker:
    """Keeps who is alive from heartbeats, in a background thread."""

    def __init__(
        self, *, min_listen_s: float = MIN_LISTEN_S, clock: Callable[[], float] = time.time, retry_s: float = 0.5
    ) -> None:
        self.min_listen_s = min_listen_s
        self.retry_s = retry_s  # first back-off after a failure; doubles up to 30 s
        self._clock = clock
        self._seen: dict[str, Seen] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._since: float | None = None  # when the current subscription was confirmed
        self._until: float | None = None  # when stop() was called: a stopped tracker hears nothing
        self.events = 0
        # The subscription's socket drops the moment Redis goes away, and costs no command to
        # watch: the daemon hears of an outage here before its next command would fail.
        self.on_lost: Callable[[BaseException], None] = lambda _exc: None
        self.on_back: Callable[[], None] = lambda: None

    # -- lifecycle ---------------------------------------------------------
    def start(self, source: ClientSource, settings: Settings) -> WorkerTracker:
        """Subscribe in a daemon thread; returns at once (see :meth:`wait_subscribed`)."""
        factory = _factory(source, settings)
        self._thread = threading.Thread(target=self._run, args=(factory, settings), name="janitor-heartbeats")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        self._until = self._clock()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def wait_subscribed(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while self._since is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._since is not None

    # -- queries -----------------------------------------------------------
    def alive(self, now: float | None = None) -> dict[str, float]:
        """``{hostname: last_seen}`` for workers whose last heartbeat is under 2 x freq old."""
        now = self._clock() if now is None else now
        with self._lock:
            return {h: s.last_seen for h, s in self._seen.items() if s.alive(now)}

    def workers(self) -> dict[str, Seen]:
        """Every worker heard (and not forgotten), alive or not, as last heard."""
        with self._lock:
            return dict(self._seen)

    def listened_for(self, now: float | None = None) -> float:
        """Seconds of uninterrupted subscription (0 after a reconnect: we may have missed beats)."""
        since = self._since
        now = self._clock() if now is None else now
        if self._until is not None:
            now = min(now, self._until)
        return 0.0 if since is None else max(0.0, now - since)

    def max_freq(self) -> float:
        """The slowest heartbeat interval heard so far (0 before any)."""
        with self._lock:
            return max((s.freq for s in self._seen.values()), default=0.0)

    def knows_the_dead(self, now: float | None = None) -> bool:
        """True once silence means death: listened >= max(min_listen_s, 2 x the largest freq seen)."""
        return self.listened_for(now) >= max(self.min_listen_s, 2 * self.max_freq())

    # -- internals ---------------------------------------------------------
    def reconnected(self) -> None:
        """Called on every (re)connect: heartbeats sent while we were away were lost."""
        self._since = None

    def record(self, event: dict[str, Any], received: float) -> None:
        host = event["hostname"]
        kind = event.get("type", "")
        with self._lock:
            if kind == "worker-offline":
                self._seen.pop(host, None)
                return
            freq = event.get("freq")
            freq = float(freq) if isinstance(freq, int | float) and 0 < freq < 86400 else DEFAULT_FREQ
            active = event.get("active")
            active = active if isinstance(active, int) and not isinstance(active, bool) and active >= 0 else None
            self._seen[host] = Seen(received, freq, active)
            if self.events % 1000 == 0:  # forget workers silent for an hour (autoscaled names come and go)
                self._seen = {h: s for h, s in self._seen.items() if received < s.last_seen + 2 * s.freq + 3600}
        self.events += 1

    def _run(self, factory: Callable[[], redis.Redis], settings: Settings) -> None:
        backoff = self.retry_s
        down = False  # an outage is logged when it starts and when it ends, not at every retry
        while not self._stop.is_set():
            client = factory()
            pubsub = _PubSub(client.connection_pool, ignore_subscribe_messages=True)
            pubsub.tracker = self
            try:
                db = int(client.connection_pool.connection_kwargs.get("db", 0))
                pubsub.psubscribe(channel_pattern(settings, db))
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if self._since is None and pubsub.subscribed:
                        self._since = self._clock()
                        backoff = self.retry_s
                        if down:
                            down = False
                            log.info("heartbeats.reconnected")
                            self.on_back()
                    if message and message.get("type") == "pmessage" and isinstance(message["data"], bytes):
                        event = parse_event(message["data"])
                        if event is not None:
                            self.record(event, self._clock())
            except Exception as exc:  # noqa: BLE001 - the listener thread must outlive any one failure
                if not down and not self._stop.is_set():
                    down = True
                    log.warning("heartbeats.disconnected", error=errors.classify(exc).message, retrying=True)
                    self.on_lost(exc)
                self._since = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                pubsub.close()
                client.close()


class _PubSub(redis.client.PubSub):
    """redis-py reconnects and resubscribes by itself; beats sent meanwhile are lost,
    so every (re)connect restarts the tracker's listening clock."""

    tracker: WorkerTracker | None = None

    def on_connect(self, connection: Any) -> None:
        if self.tracker is not None:
            self.tracker.reconnected()
        super().on_connect(connection)


def _factory(source: ClientSource, settings: Settings) -> Callable[[], redis.Redis]:
    if callable(source):
        return source
    # get_message(timeout=...) polls; the socket timeout only bounds a dead peer.
    return lambda: settings.model_copy(update={"redis_url": source}).connect(
        socket_timeout=max(settings.socket_timeout, 5.0)
    )
