"""Watch mode: a new Celery result gets its TTL within a second of being written.

While this instance holds the lease, one thread SUBSCRIBEs on its own connection to
the result database's ``set`` keyevent channel, gathers the result and group key
names it hears (a short window or a batch size, whichever comes first, each name
once) and hands them to :func:`janitor.operations.sweep.sweep_keys`: the same
rules and server-side scripts as a full pass, fenced like it.

Pub/sub forgets what it sends while nobody listens, so anything that may have lost
a notification (the subscription dropped, a batch failed, notifications turned off)
is a *gap*: counted, logged once, and answered with a full pass (``on_gap``), asked
for once the subscription is back so the pass sees every key written meanwhile.
:meth:`Watcher.unbroken_since` tells the results job since when nothing was lost.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from janitor import errors
from janitor.celery_model.keyspace import Kind
from janitor.config import Settings
from janitor.operations.sweep import sweep_keys
from janitor.redis_io import notifications
from janitor.redis_io.lease import Fence
from janitor.redis_io.notifications import Flags, Read
from janitor.redis_io.pacing import Pacer
from janitor.redis_io.scripts import Tally
from janitor.reports.text import duration
from janitor.service.metrics import Metrics, SweepRecorder

log = structlog.get_logger("janitor.watch")

WINDOW_S = 0.2  # a batch waits at most this long for more keys
MAX_KEYS = 500  # ... or until it holds this many
RECHECK_S = 300.0  # flags read again, and the subscription PINGed, this often
KEEP_LAGS = 1000  # the lags the status page's p99 is taken over
PROBE_S = 2.0  # where CONFIG GET is refused: how long the probe SET's notification may take


@dataclass(frozen=True)
class WatchStatus:
    """Which mode the results sweep is in, and why; lags in seconds over the last :data:`KEEP_LAGS` keys."""

    watching: bool
    reason: str
    last_lag_s: float | None = None
    p99_lag_s: float | None = None

    def line(self, sweep_interval: float, safety_interval: float) -> str:
        if not self.watching:
            return f"full passes only, every {duration(sweep_interval)}: {self.reason}"
        lag = "no key seen yet"
        if self.last_lag_s is not None and self.p99_lag_s is not None:
            lag = f"write to TTL: last {self.last_lag_s:.2f} s, p99 {self.p99_lag_s:.2f} s"
        return f"watch ({self.reason}); {lag}; full passes every {duration(safety_interval)} as a safety net"


class Watcher:
    """The watch-mode listener; :meth:`start` when the lease is taken, :meth:`stop` when it is lost."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        metrics: Metrics,
        *,
        fence: Callable[[], Fence],
        on_gap: Callable[[], None],
        connect: Callable[[], redis.Redis] | None = None,
        clock: Callable[[], float] = time.monotonic,
        timer: Callable[[], float] = time.perf_counter,
        window_s: float = WINDOW_S,
        max_keys: int = MAX_KEYS,
        recheck_s: float = RECHECK_S,
        retry_s: float = 0.5,
    ) -> None:
        self.settings = settings
        self.client = client  # the results' client: CONFIG and the batches
        self.metrics = metrics
        self.fence = fence
        self.on_gap = on_gap
        self.connect = connect or (lambda: settings.connect(socket_timeout=max(settings.socket_timeout, 5.0)))
        self.clock = clock
        self.timer = timer
        self.window_s = window_s
        self.max_keys = max_keys
        self.recheck_s = recheck_s
        self.retry_s = retry_s  # first back-off after a failure; doubles up to 30 s
        self.layout = settings.layout
        # One pacer for every batch: what it learns of DECIDE's cost carries over, and so does the key rate.
        self.pacer = Pacer(settings.max_batch_ms, settings.scan_count, settings.max_keys_per_second)
        # Where CONFIG GET is refused, a SET of this key (a name no Celery client writes; the ACL
        # grant's ~*celery* covers it) shows whether notifications are on.
        self.probe_key = (settings.key_prefix + "celery-janitor:watch-probe").encode()
        self._refusal = ""
        self.gaps = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._since: float | None = None  # subscribed, with nothing lost, since then
        self._gap_open = False  # the subscription was lost: its full pass is asked for once it is back
        self._logged = False  # a gap is logged once, until a subscription or a batch succeeds again
        self._reason = _unstarted(settings)
        self._lags: collections.deque[float] = collections.deque(maxlen=KEEP_LAGS)
        self._lock = threading.Lock()
        metrics.gauge("janitor_watch_active").set(0)

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        """Start listening in a thread (once; a no-op while it runs, or when watch mode cannot run here)."""
        if self.settings.watch == "off" or self.settings.redis_cluster:
            return
        if self._thread is not None and self._thread.is_alive():
            if not self._stop.is_set():
                return
            self._thread.join(5)  # a stopped one finishing its last batch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stop,), name="janitor-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._since = None
        self._reason = _unstarted(self.settings)  # so the next start says its mode again
        self.metrics.gauge("janitor_watch_active").set(0)

    # -- what others ask ---------------------------------------------------
    def unbroken_since(self) -> float | None:
        """``clock()`` since when this watcher has been subscribed without a break and with every batch
        done; None while it is not watching."""
        return self._since

    def status(self) -> WatchStatus:
        with self._lock:
            lags = sorted(self._lags)
            last = self._lags[-1] if self._lags else None
        p99 = lags[int(0.99 * (len(lags) - 1))] if lags else None
        return WatchStatus(self._since is not None, self._reason, last, p99)

    def wait_watching(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while self._since is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._since is not None

    # -- the thread --------------------------------------------------------
    def _run(self, stop: threading.Event) -> None:
        backoff = self.retry_s
        while not stop.is_set():
            try:
                flags = self._flags()
                if flags.on or flags.state is Read.REFUSED:
                    self._listen(stop, probing=not flags.on)
                    backoff = self.retry_s
                stop.wait(self.recheck_s)
            except Exception as exc:  # noqa: BLE001 - the listener must outlive any one failure
                self._gap("disconnected", exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _flags(self) -> Flags:
        """Read the flags (and turn them on with JANITOR_WATCH=on). REFUSED: CONFIG GET was refused, so
        only a probe can tell (:meth:`_probe`); a refused CONFIG SET leaves the flags known to be off."""
        if self._refusal:  # asked once: every refusal is a line in the server's ACL LOG
            return Flags(Read.REFUSED, "", self._refusal)
        tally = Tally()
        try:
            flags = notifications.read(self.client, tally)
            if self.settings.watch == "on" and flags.state is Read.OFF:
                before = flags.flags
                flags = notifications.turn_on(self.client, tally, flags)
                if flags.on:
                    log.info("watch.enabled_notifications", before=before, after=flags.flags)
                elif flags.state is Read.REFUSED:
                    reason = f"the server refused CONFIG SET notify-keyspace-events ({flags.refusal})"
                    self._mode(reason, watching=False)
                    return Flags(Read.OFF, before, flags.refusal)
        finally:
            self.metrics.add_commands(tally.commands)
        if flags.on:
            self._mode(f"notify-keyspace-events={flags.flags}", watching=True)
        elif flags.state is Read.OFF:
            self._mode(f"keyspace notifications are off (notify-keyspace-events={flags.flags!r})", watching=False)
        else:
            self._refusal = flags.refusal
        return flags

    def _mode(self, reason: str, *, watching: bool) -> None:
        """Say so, once, when the mode or its reason changes."""
        if reason == self._reason:
            return
        self._reason = reason
        if watching:
            log.info("watch.on", reason=reason, channel=self._channel())
            return
        log.warning(
            "watch.unavailable",
            reason=reason,
            fallback=f"full passes every {self.settings.sweep_interval:g} s (JANITOR_SWEEP_INTERVAL)",
            fix=notifications.HOW_TO_TURN_ON,
        )

    def _channel(self) -> str:
        return notifications.keyevent_channel(int(self.client.connection_pool.connection_kwargs.get("db", 0)))

    def _probe(self, probe: _Probe, now: float, tally: Tally) -> None:
        """Where CONFIG GET is refused (managed servers), SET a key of the janitor's own: if its notification
        comes back, notifications are on. A dry run writes nothing, so it cannot probe."""
        if self.settings.dry_run:
            probe.failed = True
            return
        tally.commands["SET"] += 1
        self.client.set(self.probe_key, "1", px=int(PROBE_S * 10_000))
        probe.by = now + PROBE_S

    def _probe_heard(self, probe: _Probe, now: float) -> None:
        if probe.by is not None and self._since is None:
            self._mode(f"CONFIG GET refused ({self._refusal}), but the server publishes SETs", watching=True)
            self._subscribed(now)
        probe.by = None

    def _on_subscribe(self, probe: _Probe, now: float, tally: Tally) -> bool:
        """The server confirmed the subscription. After a gap the flags are read again (a restarted server
        has its config file's). False: notifications are off, stop listening."""
        flags = self._flags() if self._gap_open else None
        if flags is not None and flags.state is Read.OFF:
            self._gap_open = False
            self.on_gap()
            return False
        probe.needed = probe.needed or (flags is not None and flags.state is Read.REFUSED)
        if probe.needed:
            self._probe(probe, now, tally)
        else:
            self._subscribed(now)
        return True

    def _listen(self, stop: threading.Event, *, probing: bool) -> None:
        """Subscribed until ``stop``, or until notifications are found off; raises on a lost connection."""
        client = self.connect()
        pubsub = _PubSub(client.connection_pool)
        pubsub.watcher = self
        tally = Tally()
        try:
            tally.commands["SUBSCRIBE"] += 1
            pubsub.subscribe(self._channel())
            self._loop(pubsub, stop, tally, probing)
        except Exception as exc:
            self._gap("disconnected", exc)
            raise
        finally:
            self.metrics.add_commands(tally.commands)
            self._since = None
            self.metrics.gauge("janitor_watch_active").set(0)
            pubsub.close()
            client.close()

    def _loop(self, pubsub: redis.client.PubSub, stop: threading.Event, tally: Tally, probing: bool) -> None:
        pending: dict[bytes, float] = {}  # key -> when its notification arrived (oldest first)
        next_check, pinged, probe = self.clock() + self.recheck_s, False, _Probe(probing)
        while not stop.is_set():
            first = next(iter(pending.values()), None)
            wait = 0.5 if first is None else first + self.window_s - self.clock()
            message = pubsub.get_message(timeout=max(0.0, min(wait, 0.5)))
            now = self.clock()
            kind, data = (message.get("type"), message.get("data")) if message is not None else (None, None)
            if kind == "message" and data == self.probe_key:
                self._probe_heard(probe, now)
            elif kind == "message" and isinstance(data, bytes):
                if self.layout.classify(data)[0] is not Kind.OTHER:
                    pending.setdefault(data, now)
            elif kind == "subscribe" and not self._on_subscribe(probe, now, tally):
                return
            elif kind == "pong":
                pinged = False
            if probe.failed or (probe.by is not None and now >= probe.by):
                self._no_probe()
                return
            if pending and (len(pending) >= self.max_keys or now >= next(iter(pending.values())) + self.window_s):
                self._batch(pending)
                pending = {}
            if now >= next_check:
                if pinged:
                    raise redis.ConnectionError("the subscription did not answer PING")
                flags = self._flags()
                if flags.state is Read.OFF:
                    self._gap("notifications_off")
                    return
                probe.needed = flags.state is Read.REFUSED
                if probe.needed and probe.by is None:  # one probe out at a time: its deadline stands
                    self._probe(probe, now, tally)
                tally.commands["PING"] += 1
                pubsub.ping()
                next_check, pinged = now + self.recheck_s, True
            self.metrics.add_commands(tally.commands)
            tally.commands.clear()
        if pending:  # stopping (shutdown, lease lost): the fence turns a late batch away
            self._batch(pending)

    def _no_probe(self) -> None:
        """CONFIG GET was refused and the probe's SET was not published (or, in a dry run, not written)."""
        heard = "a dry run writes no probe" if self.settings.dry_run else "its probe SET was not published"
        self._mode(f"the server refused CONFIG GET notify-keyspace-events ({self._refusal}); {heard}", watching=False)
        self._gap("notifications_off")

    def _batch(self, pending: dict[bytes, float]) -> None:
        try:
            report = sweep_keys(
                self.client, self.settings, list(pending), fence=self.fence, timer=self.timer, pacer=self.pacer
            )
        except Exception as exc:  # noqa: BLE001 - a failed batch is a gap; the next full pass covers its keys
            self._gap("batch_failed", exc)
            return
        done = self.clock()
        self._logged = False
        SweepRecorder(self.metrics, "watch")(report)
        self.metrics.counter("janitor_watch_keys_total").inc(len(pending))
        lag = self.metrics.histogram("janitor_watch_lag_seconds")
        lags = [done - received for received in pending.values()]
        for seconds in lags:
            lag.observe(seconds)
        with self._lock:
            self._lags.extend(lags)

    # -- gaps --------------------------------------------------------------
    def _subscribed(self, now: float) -> None:
        """The server confirmed the subscription: watching from now; a pending gap gets its full pass."""
        self._since = now
        self.metrics.gauge("janitor_watch_active").set(1)
        self._logged = False
        if self._gap_open:
            self._gap_open = False
            log.info("watch.resumed", channel=self._channel())
            self.on_gap()

    def _reconnected(self) -> None:
        """redis-py reconnected the subscription by itself: what was published meanwhile is lost."""
        self._gap("reconnected")

    def _gap(self, reason: str, exc: BaseException | None = None) -> None:
        """Something may have been missed. A failed batch's keys exist already, so the full pass is asked for
        at once (and the subscription goes on); after a lost subscription, once it is back."""
        if self._since is None and reason != "batch_failed":
            return  # not subscribed (or already in a gap): nothing more was being watched
        self.gaps += 1
        self.metrics.counter("janitor_watch_gaps_total").labels(reason).inc()
        if not self._logged:
            self._logged = True
            lost = reason in {"disconnected", "reconnected"}
            then = "a full pass once subscribed again" if lost else "a full pass now"
            detail = errors.classify(exc).message if exc is not None else ""
            log.warning("watch.gap", reason=reason, detail=detail, then=then)
        if reason == "batch_failed":
            if self._since is not None:
                self._since = self.clock()  # still subscribed: unbroken again from here
            self.on_gap()
            return
        self._since = None
        self.metrics.gauge("janitor_watch_active").set(0)
        if reason == "notifications_off":
            self.on_gap()
        else:
            self._gap_open = True


@dataclass
class _Probe:
    """Where CONFIG GET is refused: whether notifications must be shown by a probe, by when it is due back."""

    needed: bool
    by: float | None = None
    failed: bool = False


class _PubSub(redis.client.PubSub):
    """Tells the watcher when redis-py reconnects the subscription on its own (a first connect, before
    anything was subscribed, is no gap: :meth:`Watcher._gap` ignores it)."""

    watcher: Watcher | None = None

    def on_connect(self, connection: Any) -> None:
        if self.watcher is not None:
            self.watcher._reconnected()
        super().on_connect(connection)


def _unstarted(settings: Settings) -> str:
    if settings.watch == "off":
        return "JANITOR_WATCH=off"
    if settings.redis_cluster:
        return "watch mode does not run on a Redis Cluster"
    return "not the leader: the leader watches"
