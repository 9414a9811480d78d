"""Faults on loopback: real servers, real daemons, real kombu messages.

Every test injects faults into a running janitor (or a `celery-janitor restore`)
and checks four things against an oracle the test wrote itself: the process
keeps running, nothing it claimed done is lost, nothing outside the past-retention
set is deleted (wrong deletions), and its metrics and logs say what happened.
Broker tests check every message is in exactly one place (queue, unacked or a
dead-letter list): never lost, never duplicated.

The module keeps a tally of faults injected, wrong deletions and lost/duplicated
messages and prints it at the end (``-rA`` or plain ``pytest -q`` show it).
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from janitor.dev import demo, embedded
from janitor.redis_io.lease import LEASE_SUFFIX, Change, Lease
from tests.support import ROOT, wait_for
from tests.support.celery import deliver_without_ack, message_ids, producer
from tests.support.daemons import LEASE_TTL, Janitor

ENGINES = embedded.available_engines()
pytestmark = pytest.mark.skipif(not ENGINES, reason="no redis-server or valkey-server")
LEASE_KEY = LEASE_SUFFIX
AOF = ("--appendonly", "yes", "--appendfsync", "always")

# What the whole module did, printed at the end.
TALLY: collections.Counter[str] = collections.Counter()


def engine(i: int) -> str:
    """Spread the tests over the engines on this machine (Redis 7 and Valkey 8)."""
    return ENGINES[i % len(ENGINES)] if ENGINES else "redis"


def fault(kind: str, n: int = 1) -> None:
    TALLY["faults"] += n
    TALLY[f"fault:{kind}"] += n


@pytest.fixture(autouse=True, scope="module")
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    line = (
        f"faults injected: {TALLY['faults']}; wrong deletions: {TALLY['wrong_deletions']}; "
        f"messages tried: {TALLY['messages_tried']}, lost: {TALLY['messages_lost']}, "
        f"duplicated: {TALLY['messages_duplicated']}"
    )
    kinds = ", ".join(f"{k[6:]} {v}" for k, v in sorted(TALLY.items()) if k.startswith("fault:"))
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capman is not None:
        with capman.global_and_fixture_disabled():
            reporter.write_sep("-", "fault injection tally")
            reporter.write_line(line)
            reporter.write_line(f"by kind: {kinds}")
    out = os.environ.get("JANITOR_FAULTS_REPORT")
    if out:
        Path(out).write_text(json.dumps(dict(TALLY), indent=1, sort_keys=True))


# -- servers and daemons ---------------------------------------------------------
@pytest.fixture(name="stack")
def _stack() -> Iterator[contextlib.ExitStack]:
    """Private servers started by a test; stopped (or reaped) at the end whatever happened."""
    with contextlib.ExitStack() as stack:
        yield stack


def start_server(stack: contextlib.ExitStack, eng: str, *extra: str) -> embedded.Server:
    server = stack.enter_context(embedded.running(eng, *extra))
    stack.callback(lambda: server.process.poll() is None or server.process.wait(1))
    return server


def sigkill_server(server: embedded.Server) -> None:
    server.process.kill()
    server.process.wait(10)


@pytest.fixture(name="spawn")
def _spawn(tmp_path: Path) -> Iterator[Callable[..., Janitor]]:
    """`python -m janitor run` against ``url``; every daemon is killed at the end."""
    started: list[Janitor] = []

    def spawn(url: str, **env: str) -> Janitor:
        port = embedded.free_port()
        log_path = tmp_path / f"janitor-{len(started)}.log"
        full = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("JANITOR_", "REDIS_URL", "PORT"))},
            "PYTHONPATH": str(ROOT),
            "JANITOR_REDIS_URL": url,
            "JANITOR_METRICS_PORT": str(port),
            "JANITOR_METRICS_HOST": "127.0.0.1",
            "JANITOR_LOG_FORMAT": "json",
            "JANITOR_SWEEP_INTERVAL": "1",
            "JANITOR_CENSUS_INTERVAL": "600",
            "JANITOR_BROKER_INTERVAL": "600",
            "JANITOR_INFO_INTERVAL": "0.5",
            "JANITOR_LEASE_TTL": str(LEASE_TTL),
            "JANITOR_SOCKET_TIMEOUT": "1",
            "JANITOR_SHUTDOWN_TIMEOUT": "5",
            "JANITOR_JITTER": "0",
            **env,
        }
        with log_path.open("wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "janitor", "run"], env=full, stderr=err, cwd=ROOT)
        janitor = Janitor(proc, port, log_path)
        started.append(janitor)
        wait_for(lambda: janitor.get("/livez")[0] == 200, 15, f"daemon on port {port} did not serve /livez")
        return janitor

    yield spawn
    for janitor in started:
        if janitor.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(janitor.process.pid, signal.SIGCONT)
            janitor.process.kill()
            janitor.process.wait(10)


def metric(janitor: Janitor, name: str, **labels: str) -> float:
    return janitor.sample(name, **labels) or 0.0


def deleted(janitor: Janitor) -> float:
    return metric(janitor, "janitor_keys_deleted_total", kind="task", reason="retention")


def errors(janitor: Janitor, label: str) -> float:
    return metric(janitor, "janitor_redis_errors_total", error=label) + metric(
        janitor, "janitor_sweep_errors_total", sweep="results", error=label
    )


def swept_since(janitor: Janitor, since: float) -> bool:
    return metric(janitor, "janitor_sweep_last_success_timestamp_seconds", sweep="results") > since


# -- the oracle ------------------------------------------------------------------
@dataclass
class Oracle:
    """What the test wrote: ``old`` may be deleted (past retention); the rest must stay."""

    old: set[bytes] = field(default_factory=set)
    fresh: set[bytes] = field(default_factory=set)  # recent results: get a TTL, never deleted
    foreign: dict[bytes, bytes] = field(default_factory=dict)  # not Celery's: never touched

    def seed(self, client: redis.Redis, tag: str, old: int = 0, fresh: int = 0, foreign: int = 0) -> Oracle:
        now = dt.datetime.now(dt.UTC)
        pipe = client.pipeline(transaction=False)
        for i in range(old):
            tid = f"{tag}-old-{i:06d}"
            key = f"celery-task-meta-{tid}".encode()
            pipe.set(key, json.dumps(demo.task_meta(tid, "SUCCESS", now - dt.timedelta(days=3))))
            self.old.add(key)
            if len(pipe) >= 5000:
                pipe.execute()
        for i in range(fresh):
            tid = f"{tag}-fresh-{i:06d}"
            key = f"celery-task-meta-{tid}".encode()
            pipe.set(key, json.dumps(demo.task_meta(tid, "SUCCESS", now - dt.timedelta(minutes=5))))
            self.fresh.add(key)
        for i in range(foreign):
            key, value = f"app:{tag}:cache:{i}".encode(), f"v{i}".encode()
            pipe.set(key, value)
            self.foreign[key] = value
        pipe.execute()
        return self

    def check(self, client: redis.Redis, *, all_old_gone: bool = False) -> int:
        """Count wrong deletions (and changed foreign keys); add them to the module tally."""
        fresh = sorted(self.fresh)
        present = sum(client.exists(*fresh[i : i + 1000]) for i in range(0, len(fresh), 1000))
        foreign = list(self.foreign)
        pipe = client.pipeline(transaction=False)
        for key in foreign:
            pipe.get(key)
            pipe.ttl(key)
        replies = pipe.execute() if foreign else []
        changed = sum(
            1
            for key, value, ttl in zip(foreign, replies[::2], replies[1::2], strict=True)
            if value != self.foreign[key] or ttl != -1
        )
        wrong = (len(fresh) - present) + changed
        TALLY["wrong_deletions"] += wrong
        TALLY["keys_checked"] += len(fresh) + len(foreign) + len(self.old)
        if all_old_gone:
            assert self.old_left(client) == 0
        return wrong

    def old_left(self, client: redis.Redis) -> int:
        old = sorted(self.old)
        return sum(client.exists(*old[i : i + 1000]) for i in range(0, len(old), 1000))


# -- a TCP proxy the test controls ----------------------------------------------------
class Proxy:
    """Loopback TCP proxy: ``cut()`` resets every live connection, ``blackhole`` drops all traffic."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.blackhole = False
        self.cuts = 0
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = None
            if not self.blackhole:
                with contextlib.suppress(OSError):
                    upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            with self._lock:
                self._socks.add(client)
                if upstream is not None:
                    self._socks.add(upstream)
            if upstream is None:
                continue  # accepted, never answered: a black hole
            upstream.settimeout(None)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self.blackhole:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(src)
            self._drop(dst)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.discard(sock)
        with contextlib.suppress(OSError):
            # SO_LINGER 0: close with a RST, as a load balancer or a NAT timeout does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        with contextlib.suppress(OSError):
            sock.close()

    def cut(self) -> int:
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            self._drop(sock)
        self.cuts += 1
        return len(socks)

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self.cut()


# -- 1. Redis killed mid-sweep ---------------------------------------------------------
@pytest.mark.parametrize(("eng", "restart"), [(engine(0), "with_data"), (engine(1), "empty")])
def test_redis_killed_mid_sweep(
    stack: contextlib.ExitStack, spawn: Callable[..., Janitor], eng: str, restart: str
) -> None:
    """SIGKILL Redis in the middle of a long sweep, restart it (from its AOF, or empty):
    the daemon survives, says so (/readyz 503 → 200, janitor_redis_up 0 → 1, errors counted,
    one redis.down line), every delete it counted is still done after the restart, and it
    never deletes a key on what it read before the crash."""
    server = start_server(stack, eng, *(AOF if restart == "with_data" else ()))
    client = server.client()
    oracle = Oracle().seed(client, "k", old=30_000, fresh=2_000, foreign=1_000)
    janitor = spawn(server.url, JANITOR_MAX_KEYS_PER_SECOND="6000", JANITOR_SWEEP_INTERVAL="1")
    wait_for(lambda: deleted(janitor) > 3_000, 20, "mid-sweep")
    sigkill_server(server)
    fault(f"redis_sigkill_restart_{restart}")
    wait_for(lambda: janitor.get("/readyz")[0] == 503, 10, "/readyz 503 while Redis is down")
    wait_for(lambda: janitor.sample("janitor_redis_up") == 0, 5, "janitor_redis_up 0")
    claimed = deleted(janitor)
    assert 3_000 < claimed < len(oracle.old)  # really mid-sweep
    time.sleep(1.5)  # failed attempts, with back-off
    assert janitor.process.poll() is None
    assert deleted(janitor) == claimed  # nothing counted while Redis is away

    # Hold the daemon still while Redis comes back, to read what survived before it resumes.
    janitor.process.send_signal(signal.SIGSTOP)
    try:
        server.restart()
        client = server.client()
        if restart == "with_data":
            done = len(oracle.old) - oracle.old_left(client)
            # appendfsync always: every delete the daemon counted survived the crash; at most
            # the one batch in flight when Redis died was done without being counted.
            assert claimed <= done <= claimed + 1_000
            assert oracle.check(client) == 0
            probes: set[bytes] = set()
        else:
            assert client.dbsize() == 0
            # Same names as results the daemon may have read just before the crash, now with
            # fresh content: acting on what it read before would delete them.
            probes = set(sorted(oracle.old)[:2_000])
            oracle = Oracle().seed(client, "after", old=3_000, foreign=500)
            now = dt.datetime.now(dt.UTC)
            pipe = client.pipeline(transaction=False)
            for key in probes:
                tid = key.decode().removeprefix("celery-task-meta-")
                pipe.set(key, json.dumps(demo.task_meta(tid, "SUCCESS", now)))
            pipe.execute()
            oracle.fresh |= probes
    finally:
        janitor.process.send_signal(signal.SIGCONT)
    restarted = time.time()
    wait_for(lambda: janitor.get("/readyz")[0] == 200, 15, "/readyz 200 after Redis is back")
    wait_for(lambda: swept_since(janitor, restarted) and oracle.old_left(client) == 0, 30, "a full sweep after")
    assert janitor.process.poll() is None
    assert janitor.sample("janitor_redis_up") == 1
    assert errors(janitor, "connection") >= 1
    assert oracle.check(client, all_old_gone=True) == 0
    down = janitor.events("redis.down")
    assert len(down) == 1
    assert "cannot reach Redis" in down[0]["detail"]
    assert [e["recovered"] for e in janitor.events("redis.up")] == [False, True]
    if restart == "with_data":
        # Nothing counted twice: a delete lost in the crash would be re-done and re-counted.
        assert deleted(janitor) <= len(oracle.old)
    else:
        assert all(client.pttl(k) > 0 for k in probes)  # given a TTL, not deleted


# -- 2. CLIENT PAUSE and DEBUG SLEEP ---------------------------------------------------
def test_client_pause_and_debug_sleep(stack: contextlib.ExitStack, spawn: Callable[..., Janitor]) -> None:
    """Freeze Redis mid-sweep for longer than the socket timeout, twice (CLIENT PAUSE ALL
    3 s, then DEBUG SLEEP 3 s): the sweep fails with a timeout, counted and logged, the
    next one finishes, and only past-retention results are gone."""
    server = start_server(stack, engine(0))
    client = server.client()
    oracle = Oracle().seed(client, "p", old=20_000, fresh=2_000, foreign=1_000)
    janitor = spawn(server.url, JANITOR_MAX_KEYS_PER_SECOND="4000")
    for round_, freeze in enumerate(("pause", "sleep")):
        if round_:
            oracle.seed(client, f"p{round_}", old=15_000)
        start = deleted(janitor)
        wait_for(lambda s=start: deleted(janitor) > s + 1_500, 20, "mid-sweep")
        before = errors(janitor, "timeout")
        frozen = time.time()
        if freeze == "pause":
            client.execute_command("CLIENT", "PAUSE", 3000, "ALL")
        else:
            sleeper = server.client()
            threading.Thread(target=sleeper.execute_command, args=("DEBUG", "SLEEP", "3"), daemon=True).start()
        fault(f"redis_{freeze}_3s")
        wait_for(lambda b=before: errors(janitor, "timeout") > b, 10, f"a timeout during the {freeze}")
        time.sleep(max(0.0, frozen + 3.2 - time.time()))
        wait_for(lambda f=frozen: swept_since(janitor, f + 3), 30, f"a full sweep after the {freeze}")
        assert janitor.process.poll() is None
        assert oracle.check(client) == 0
    wait_for(lambda: oracle.old_left(client) == 0, 20, "every old result deleted")
    assert oracle.check(client, all_old_gone=True) == 0
    failed = [e for e in janitor.events("sweep.failed") if e["sweep"] == "results"]
    assert {e["error"] for e in failed} <= {"timeout", "connection"}
    assert failed
    assert janitor.get("/readyz")[0] == 200
    assert janitor.sample("janitor_redis_up") == 1
    # Counted deletes never exceed what was there to delete (a timed-out batch Redis ran
    # anyway is seen as "raced" by the retry, not counted twice).
    assert deleted(janitor) <= len(oracle.old)


# -- 3. OOM on writes --------------------------------------------------------------------
def _oom(client: redis.Redis, below: int = 256 * 1024) -> int:
    """Set maxmemory just under what is used now (noeviction): every growing write is refused."""
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used - below)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("test:probe", "x")
    fault("oom_noeviction")
    return used - below


def test_oom_noeviction(stack: contextlib.ExitStack, spawn: Callable[..., Janitor]) -> None:
    """`maxmemory` under the used memory, `noeviction`: deletes (UNLINK) and TTLs (PEXPIRE) are
    still allowed, so a leader keeps sweeping and brings Redis back under its limit; a janitor
    started while Redis is out of memory still takes the lease and does the same."""
    server = start_server(stack, engine(0), "--maxmemory-policy", "noeviction")
    client = server.client()
    oracle = Oracle().seed(client, "m", old=20_000, fresh=1_000, foreign=500)
    # The leader is already sweeping when Redis runs out of memory.
    first = spawn(server.url, JANITOR_MAX_KEYS_PER_SECOND="5000")
    wait_for(lambda: deleted(first) > 2_000, 20, "mid-sweep")
    limit = _oom(client)
    wait_for(lambda: int(client.info("memory")["used_memory"]) < limit, 20, "memory freed under maxmemory")
    wait_for(lambda: oracle.old_left(client) == 0, 20, "every old result deleted")
    client.set("test:probe", "x")  # writes accepted again
    assert first.events("sweep.failed") == []
    assert oracle.check(client, all_old_gone=True) == 0
    first.process.kill()
    first.process.wait(10)
    fault("janitor_sigkill")

    # Out of memory again, and a janitor (re)started now: no leader holds the lease.
    client.config_set("maxmemory", 0)
    more = Oracle().seed(client, "m2", old=20_000, foreign=200)
    client.delete(LEASE_KEY)
    limit = _oom(client)
    second = spawn(server.url)
    wait_for(lambda: second.sample("janitor_is_leader") == 1, 10, "the lease taken while Redis is out of memory")
    wait_for(lambda: more.old_left(client) == 0, 20, "every old result deleted")
    assert int(client.info("memory")["used_memory"]) < limit
    assert second.events("sweep.failed") == []
    assert oracle.check(client) == 0
    assert more.check(client, all_old_gone=True) == 0
    assert deleted(second) == len(more.old)
    assert second.process.poll() is None


# -- 4. connections dropped by a proxy ---------------------------------------------------------
def test_proxy_drops_connections(stack: contextlib.ExitStack, spawn: Callable[..., Janitor]) -> None:
    """Through a TCP proxy: every connection reset three times mid-sweep, then a 2.5 s black hole
    (connections accepted, nothing answered): the daemon reconnects each time, counts the
    errors, and finishes the sweep with only past-retention results gone."""
    server = start_server(stack, engine(1))
    client = server.client()
    proxy = Proxy(server.port)
    stack.callback(proxy.close)
    oracle = Oracle().seed(client, "x", old=25_000, fresh=2_000, foreign=1_000)
    janitor = spawn(proxy.url, JANITOR_MAX_KEYS_PER_SECOND="5000")
    wait_for(lambda: deleted(janitor) > 2_000, 20, "mid-sweep")
    for _ in range(3):
        assert proxy.cut() > 0
        fault("tcp_reset_all")
        time.sleep(0.4)
    assert janitor.process.poll() is None
    wait_for(lambda: janitor.sample("janitor_redis_up") == 1, 10, "reconnected after the resets")
    mark = deleted(janitor)
    wait_for(lambda: deleted(janitor) > mark + 500, 10, "deleting again after the resets")
    before = errors(janitor, "timeout")
    proxy.blackhole = True
    fault("tcp_blackhole_2_5s")
    wait_for(lambda: errors(janitor, "timeout") > before, 10, "a timeout in the black hole")
    wait_for(lambda: janitor.get("/readyz")[0] == 503, 10, "/readyz 503 in the black hole")
    assert janitor.sample("janitor_redis_up") == 0
    time.sleep(1.0)
    proxy.blackhole = False
    proxy.cut()  # what a recovering path does to the stalled connections
    healed = time.time()
    wait_for(lambda: janitor.get("/readyz")[0] == 200, 15, "/readyz 200 after the black hole")
    wait_for(lambda: swept_since(janitor, healed) and oracle.old_left(client) == 0, 30, "a full sweep after")
    assert janitor.process.poll() is None
    assert errors(janitor, "timeout") >= 1
    assert errors(janitor, "connection") + errors(janitor, "timeout") >= 2
    assert oracle.check(client, all_old_gone=True) == 0
    assert deleted(janitor) <= len(oracle.old)
    assert janitor.events("redis.down")
    assert janitor.events("redis.up")[-1]["recovered"] is True


# -- 5. a replica promoted under it ---------------------------------------------------------
def test_replica_then_promoted(stack: contextlib.ExitStack, spawn: Callable[..., Janitor]) -> None:
    """Pointed at a read-only replica, the janitor cannot take the lease: it says READONLY,
    stays up, not ready and not leading, and writes nothing. The primary dies, the replica
    is promoted (REPLICAOF NO ONE): it leads and sweeps."""
    eng = engine(1)
    primary = start_server(stack, eng)
    replica = start_server(stack, eng, "--replicaof", "127.0.0.1", str(primary.port))
    pclient, rclient = primary.client(), replica.client()
    oracle = Oracle().seed(pclient, "r", old=5_000, fresh=500, foreign=500)
    total = pclient.dbsize()
    wait_for(lambda: rclient.dbsize() == total, 20, "the replica in sync")
    janitor = spawn(replica.url)
    wait_for(lambda: janitor.events("redis.down"), 10, "the refusal logged")
    time.sleep(1.5)  # sweep intervals pass
    fault("read_only_replica")
    down = janitor.events("redis.down")
    assert "read only replica" in down[0]["detail"]  # READONLY
    assert down[0]["error"] == "readonly"
    assert janitor.events("redis.up") == [], "the state flapped: INFO answers, writes do not"
    assert janitor.sample("janitor_is_leader") == 0
    assert janitor.get("/readyz")[0] == 503
    assert errors(janitor, "readonly") >= 1
    assert janitor.process.poll() is None
    assert oracle.old_left(rclient) == oracle.old_left(pclient) == len(oracle.old)
    assert rclient.dbsize() == total

    sigkill_server(primary)
    rclient.execute_command("REPLICAOF", "NO", "ONE")
    fault("replica_promoted")
    promoted = time.time()
    wait_for(lambda: janitor.sample("janitor_is_leader") == 1, 10, "leading on the promoted replica")
    wait_for(lambda: swept_since(janitor, promoted) and oracle.old_left(rclient) == 0, 20, "a sweep")
    assert janitor.get("/readyz")[0] == 200
    assert janitor.sample("janitor_redis_up") == 1
    assert oracle.check(rclient, all_old_gone=True) == 0
    assert deleted(janitor) == len(oracle.old)
    assert janitor.events("redis.up")[-1]["recovered"] is True


# -- 6. the lease key deleted behind its back -------------------------------------------------
def _leaders(janitors: list[Janitor]) -> list[Janitor]:
    return [j for j in janitors if j.sample("janitor_is_leader") == 1]


def _stamp(event: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(event["timestamp"]).timestamp()


def test_lease_key_deleted(stack: contextlib.ExitStack, spawn: Callable[..., Janitor]) -> None:
    """Two daemons; the lease key is deleted five times (once mid-sweep, then while old
    results keep arriving). The holder notices (lease.lost, its next batch FENCED), one
    leader is back within the TTL, no two sweeps that wrote overlap in time, and every
    delete is done and counted exactly once."""
    server = start_server(stack, engine(0))
    client = server.client()
    oracle = Oracle().seed(client, "l", old=20_000, fresh=1_000, foreign=500)
    both = [spawn(server.url, JANITOR_MAX_KEYS_PER_SECOND="4000") for _ in range(2)]
    wait_for(lambda: len(_leaders(both)) == 1, 10, "one leader")
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), len(_leaders(both))))
            time.sleep(0.02)

    def write() -> None:
        writer = server.client()
        n = 0
        while not stop.is_set():
            oracle.seed(writer, f"w{n}", old=100)
            n += 1
            time.sleep(0.1)

    threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=write, daemon=True)]
    for t in threads:
        t.start()
    try:
        leader = _leaders(both)[0]
        wait_for(lambda: deleted(leader) > 2_000, 20, "mid-sweep")
        # Deleted mid-sweep, and taken at once by another instance (this test): the holder's
        # next batch is refused by the fence (or it stops between batches once its renewal
        # failed), and while the other instance holds the lease no daemon deletes anything.
        other = Lease.for_prefix(server.client(), "", LEASE_TTL)
        for _ in range(5):
            client.delete(LEASE_KEY)
            if other.step()[0] is Change.ACQUIRED:
                break
        assert other.held()
        fault("lease_key_deleted_and_taken")
        wait_for(lambda ld=leader: ld.events("sweep.fenced") or ld.events("sweep.stopped"), 5, "the sweep stops")
        wait_for(lambda ld=leader: ld.events("lease.lost"), 5, "lease.lost logged")
        wait_for(lambda: _leaders(both) == [], 5, "no daemon leads")
        frozen = [deleted(j) for j in both]
        left = oracle.old_left(client)
        for _ in range(4):
            time.sleep(0.4)
            assert other.step()[0] is Change.KEPT
        assert [deleted(j) for j in both] == frozen
        assert oracle.old_left(client) >= left
        assert other.release()
        rng = random.Random(8)
        for _ in range(5):
            wait_for(lambda: len(_leaders(both)) == 1, LEASE_TTL + 2, "one leader again")
            leader = _leaders(both)[0]
            time.sleep(rng.uniform(0.5, 1.2))
            lost_before = len(leader.events("lease.lost"))
            assert client.delete(LEASE_KEY) == 1
            fault("lease_key_deleted")
            # The holder notices at its next renewal (and may well take the free lease again).
            wait_for(lambda lb=lost_before, ld=leader: len(ld.events("lease.lost")) > lb, 5, "the holder notices")
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    wait_for(lambda: oracle.old_left(client) == 0, 30, "every old result deleted")
    time.sleep(1.2)  # the last sweep's counters reach /metrics
    assert all(j.process.poll() is None for j in both)
    assert oracle.check(client, all_old_gone=True) == 0
    # Each delete done once, by one daemon, and counted once.
    assert sum(deleted(j) for j in both) == len(oracle.old)
    # Two daemons both think they lead at most until the old holder's next renewal (TTL/3).
    longest, since = 0.0, None
    for when, leaders in samples:
        if leaders > 1:
            since = when if since is None else since
            longest = max(longest, when - since)
        else:
            since = None
    assert longest <= LEASE_TTL / 3 + 0.5
    # Every acquisition has its own, increasing epoch: a deposed leader's token is never valid again.
    acquired = sorted((_stamp(e), e["epoch"]) for j in both for e in j.events("lease.acquired"))
    epochs = [e for _, e in acquired]
    assert epochs == sorted(set(epochs))
    assert len(epochs) >= 6
    # No two sweeps that wrote ran at the same time.
    writes = [
        (_stamp(e) - e["duration_s"], _stamp(e), i)
        for i, j in enumerate(both)
        for e in j.events("sweep.finished")
        if e["sweep"] == "results" and (e["deleted"] or e["ttl_applied"])
    ]
    writes.sort()
    overlaps = [(a, b) for k, a in enumerate(writes) for b in writes[k + 1 :] if a[2] != b[2] and b[0] < a[1] - 0.005]
    assert overlaps == []
    fenced = sum(metric(j, "janitor_sweep_errors_total", sweep="results", error="fenced") for j in both)
    TALLY["fenced_batches"] += int(fenced)


# -- 7. restore under faults -----------------------------------------------------------
def _restore(url: str) -> subprocess.Popen[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("JANITOR_", "REDIS_URL"))},
        "PYTHONPATH": str(ROOT),
        "JANITOR_REDIS_URL": url,
        "JANITOR_VISIBILITY_TIMEOUT": "1",
        "JANITOR_SOCKET_TIMEOUT": "1",
        "JANITOR_LOG_LEVEL": "error",
    }
    args = [sys.executable, "-m", "janitor", "restore", "--wait", "0"]
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _placement(client: redis.Redis, ids: list[str]) -> tuple[int, int]:
    """Where every message is: queue, unacked or dead-letter list; (lost, duplicated)."""
    seen = collections.Counter(message_ids(client))
    seen.update(json.loads(m)["headers"]["id"] for m in client.lrange("janitor.dead.celery", 0, -1))
    assert set(seen) <= set(ids)
    # kombu restores only what both unacked and unacked_index hold: a half-removed entry is lost too.
    assert {t.decode() for t in client.hkeys("unacked")} == {t.decode() for t in client.zrange("unacked_index", 0, -1)}
    lost = sum(1 for i in ids if seen[i] == 0)
    duplicated = sum(seen[i] - 1 for i in ids if seen[i] > 1)
    TALLY["messages_tried"] += len(ids)
    TALLY["messages_lost"] += lost
    TALLY["messages_duplicated"] += duplicated
    return lost, duplicated


def _mid_restore(client: redis.Redis, proc: subprocess.Popen[str], timeout: float = 15) -> bool:
    """Wait until the restore has moved a first message (True), or ended (False)."""
    start = client.hlen("unacked")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.hlen("unacked") < start:
            return True
        if proc.poll() is not None:
            return False
    raise AssertionError("the restore neither moved a message nor ended")


def _clear_mutex(client: redis.Redis) -> bool:
    """A killed restore leaves kombu's unacked_mutex behind: it must expire by itself; we skip the wait."""
    pttl = client.pttl("unacked_mutex")
    if pttl == -2:
        return False
    assert 0 < pttl <= 300_000
    client.delete("unacked_mutex")
    return True


def _make_stuck(url: str, client: redis.Redis) -> None:
    """Take every queued message without acking (a worker SIGKILLed), past the 1 s visibility timeout."""
    n = client.llen("celery")
    if n:
        deliver_without_ack(url, n)
    time.sleep(1.1)


@pytest.mark.slow
def test_restore_under_faults(stack: contextlib.ExitStack) -> None:
    """`celery-janitor restore` SIGKILLed mid-restore (when it has moved a first message, and at
    random times), Redis SIGKILLed mid-restore (appendfsync always, restarted from its AOF),
    Redis frozen mid-restore (CLIENT PAUSE WRITE past the socket timeout): after each, every
    message is in exactly one place (its queue, unacked or the dead-letter list)."""
    server = start_server(stack, engine(0), *AOF)
    client = server.client()
    n = 400
    app = producer(server.url)
    ids = [app.send_task("app.t").id for _ in range(n)]
    _make_stuck(server.url, client)
    assert client.hlen("unacked") == n
    rng = random.Random(8)
    mid = 0

    # The janitor killed between the steps of a restore.
    for round_ in range(6):
        proc = _restore(server.url)
        if round_ < 3:
            mid += _mid_restore(client, proc)
        else:
            time.sleep(rng.uniform(0.2, 1.2))
        proc.kill()
        proc.communicate(timeout=10)
        fault("restore_sigkill")
        assert _placement(client, ids) == (0, 0)
        _clear_mutex(client)
        if round_ == 2:
            _make_stuck(server.url, client)

    # Redis killed mid-restore and restarted from its AOF while the restore is still retrying
    # (redis-py's default retry backs off for seconds): it either finishes on the restarted
    # server or gives up with one clear line; either way no message is lost or doubled.
    for _ in range(2):
        _make_stuck(server.url, client)
        proc = _restore(server.url)
        mid += _mid_restore(client, proc)
        sigkill_server(server)
        fault("redis_sigkill_mid_restore")
        time.sleep(0.5)
        server.restart()
        client = server.client()
        out, err = proc.communicate(timeout=30)
        assert "Traceback" not in err
        if proc.returncode != 0:
            assert "cannot reach Redis" in err or "unacked_mutex" in out or "FENCED" in err
        assert _placement(client, ids) == (0, 0)
        _clear_mutex(client)

    # Redis frozen mid-restore for longer than the socket timeout.
    _make_stuck(server.url, client)
    proc = _restore(server.url)
    mid += _mid_restore(client, proc)
    client.execute_command("CLIENT", "PAUSE", 2500, "WRITE")
    paused = time.monotonic()
    fault("client_pause_mid_restore")
    out, err = proc.communicate(timeout=15)
    time.sleep(max(0.0, paused + 2.6 - time.monotonic()))
    assert _placement(client, ids) == (0, 0)
    if proc.returncode != 0:
        assert "cannot reach Redis" in err or "Timeout" in err
    _clear_mutex(client)

    # Finally a clean restore empties unacked: every message in its queue or dead-lettered, once.
    for _ in range(3):
        if not client.hlen("unacked"):
            break
        done = _restore(server.url)
        done.communicate(timeout=15)
        assert done.returncode == 0
    assert client.hlen("unacked") == client.zcard("unacked_index") == 0
    assert _placement(client, ids) == (0, 0)
    assert client.llen("celery") + client.llen("janitor.dead.celery") == n
    assert mid >= 3  # at least some kills really landed between two messages
    TALLY["restore_kills_mid_restore"] += mid


def test_outage_noticed_at_once_with_the_default_intervals(
    stack: contextlib.ExitStack, spawn: Callable[..., Janitor]
) -> None:
    """With the default intervals the daemon sends a command every minute or two, yet /readyz turns
    503 within seconds of Redis dying and 200 within seconds of its return: the heartbeat listener's
    socket hears both, and one INFO confirms each."""
    server = start_server(stack, engine(0))
    janitor = spawn(
        server.url,
        JANITOR_SWEEP_INTERVAL="300",
        JANITOR_INFO_INTERVAL="120",
        JANITOR_LEASE_TTL="300",
        JANITOR_BROKER_INTERVAL="300",
    )
    wait_for(lambda: janitor.get("/readyz")[0] == 200, 15, "ready")
    sigkill_server(server)
    fault("redis_sigkill_idle_daemon")
    wait_for(lambda: janitor.get("/readyz")[0] == 503, 15, "/readyz 503 soon after Redis died")
    server.restart()
    wait_for(lambda: janitor.get("/readyz")[0] == 200, 45, "/readyz 200 soon after Redis came back")
    assert [e["event"] for e in janitor.events("redis.down")] == ["redis.down"]
