"""Redis Cluster sweeps on a real 3-primary + 3-replica cluster on loopback.

Both Celery layouts: a hash-tagged ``global_keyprefix`` (``{celery}``: every key of
the app in one slot, the layout Celery needs on a cluster) and unprefixed results
spread over every slot and node. Then the topology changes under a sweep: a slot
moves (MOVED), a slot is half migrated (ASK), a primary dies.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster

from janitor import cli, config
from janitor.dev import demo, embedded
from janitor.errors import Exit
from janitor.operations.sweep import SweepReport, _Pass, sweep_cluster
from janitor.redis_io import scripts
from janitor.redis_io.lease import FENCE_NONE, Fence
from tests.support import ROOT, wait_for
from tests.support.daemons import LEASE_TTL, daemon_env, launch, stop_all

NOW = dt.datetime.now(dt.UTC)
NODE_TIMEOUT_MS = 1000
Snapshot = dict[bytes, tuple[bytes | None, int]]


@dataclass
class Cluster:
    """Six redis-server processes in cluster mode; ports[0] is the seed the janitor's URL names."""

    workdir: Path
    ports: list[int] = field(default_factory=list)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def cluster_client(self) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster(host="127.0.0.1", port=self.ports[0])

    def alive(self) -> list[int]:
        return [p for p in self.ports if self.procs[p].poll() is None]

    def primaries(self) -> list[int]:
        """Ports of the live primaries that own slots, as the first live node sees them."""
        ranges = self.node(self.alive()[0]).execute_command("CLUSTER", "SLOTS")
        return sorted({int(r[2][1]) for r in ranges} & set(self.alive()))

    def owner(self, slot: int) -> int:
        for start, end, primary, *_ in self.node(self.alive()[0]).execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(primary[1])
        raise AssertionError(f"slot {slot} is not covered")

    def node_id(self, port: int) -> str:
        return str(self.node(port).execute_command("CLUSTER", "MYID").decode())

    def wait_ok(self, timeout: float = 20.0) -> None:
        """cluster_state:ok on every live node, all agreeing on three live primaries owning the slots."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                states = {self.node(p).cluster("info")["cluster_state"] for p in self.alive()}
                views = {
                    frozenset((r[0], r[1], int(r[2][1])) for r in self.node(p).execute_command("CLUSTER", "SLOTS"))
                    for p in self.alive()
                }
            except redis.RedisError:
                states, views = set(), set()
            if states == {"ok"} and len(views) == 1:
                owners = {owner for _, _, owner in next(iter(views))}
                if len(owners) == 3 and owners <= set(self.alive()):
                    return
            time.sleep(0.1)
        raise AssertionError(f"cluster not ok within {timeout} s")

    def sync_replicas(self) -> None:
        for port in self.primaries():
            assert self.node(port).execute_command("WAIT", 1, 5000) == 1

    def kill(self, port: int) -> None:
        self.procs[port].kill()
        self.procs[port].wait()

    def snapshot(self) -> Snapshot:
        """Every key of every primary: value (DUMP) and TTL."""
        out: Snapshot = {}
        for port in self.primaries():
            client = self.node(port)
            for key in client.scan_iter(count=1000):
                out[key] = (client.dump(key), client.pttl(key))
        return out


def _free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = embedded.free_port()
        if port < 55535 and port not in taken and port + 10000 not in taken:
            with contextlib.suppress(OSError):
                import socket

                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port + 10000))
                return port
    raise AssertionError("no free port pair for a cluster node")


@pytest.fixture(name="rc")
def _rc() -> Iterator[Cluster]:
    server, cli_bin = embedded.binary("redis"), shutil.which("redis-cli")
    assert server, "the cluster tests need redis-server (Debian redis-server)"
    assert cli_bin, "the cluster tests need redis-cli (Debian redis-tools)"
    with tempfile.TemporaryDirectory(prefix="janitor-cluster-") as tmp:
        rc = Cluster(Path(tmp))
        try:
            taken: set[int] = set()
            for _ in range(6):
                port = _free_cluster_port(taken)
                taken |= {port, port + 10000}
                rc.ports.append(port)
                workdir = rc.workdir / str(port)
                workdir.mkdir()
                args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
                args += ["--dir", str(workdir), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
                args += ["--cluster-node-timeout", str(NODE_TIMEOUT_MS)]
                rc.procs[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for port in rc.ports:
                _wait_ping(rc.node(port))
            create = [cli_bin, "--cluster", "create", *(f"127.0.0.1:{p}" for p in rc.ports)]
            subprocess.run(
                [*create, "--cluster-replicas", "1", "--cluster-yes"], check=True, capture_output=True, timeout=60
            )
            rc.wait_ok()
            yield rc
        finally:
            for proc in rc.procs.values():
                proc.kill()
                proc.wait()


def _wait_ping(client: redis.Redis) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _meta(tid: str, age_days: float) -> bytes:
    return json.dumps(demo.task_meta(tid, "SUCCESS", NOW - dt.timedelta(days=age_days))).encode()


@dataclass
class Keys:
    old: list[bytes] = field(default_factory=list)
    fresh: list[bytes] = field(default_factory=list)


def _fill(client: redis.cluster.RedisCluster, prefix: str, old: int, fresh: int) -> Keys:
    keys = Keys()
    for n, age in ((old, 3.0), (fresh, 0.0)):
        for _ in range(n):
            tid = str(uuid.uuid4())
            key = f"{prefix}celery-task-meta-{tid}".encode()
            client.set(key, _meta(tid, age))
            (keys.old if age else keys.fresh).append(key)
    return keys


def _fill_others(client: redis.cluster.RedisCluster) -> None:
    """Keys no sweep may touch: app data, names that match *celery* but are not Celery's, other types."""
    for i in range(60):
        client.set(f"user:{i}", f"value-{i}")
        client.set(f"{{celery}}_not-celery-{i}", "x")
        client.set(f"my-celery-notes-{i}", "y")
    client.hset("{celery}_celery-task-meta-hash", mapping={"a": "1"})  # wrong type: skipped
    client.rpush("celery", "a-broker-queue")


def _settings(rc: Cluster, **env: str) -> config.Settings:
    return config.load({"JANITOR_REDIS_URL": rc.url, "JANITOR_REDIS_CLUSTER": "true", **env})


def _check(before: Snapshot, after: Snapshot, deleted: set[bytes], ttl: set[bytes]) -> None:
    """Exactly ``deleted`` gone, exactly ``ttl`` given a TTL (same value), everything else byte-identical."""
    assert set(before) - set(after) == deleted
    assert set(after) <= set(before)
    for key, (dump, pttl) in after.items():
        assert dump == before[key][0], key
        if key in ttl:
            assert before[key][1] == -1, key
            assert 0 < pttl <= 86_400_000, key
        elif before[key][1] == -1:
            assert pttl == -1, key
        else:  # a running TTL only counted down
            assert 0 <= before[key][1] - pttl < 10_000, key


class TestLayouts:
    def test_hash_tagged_prefix_and_unprefixed_results_on_every_node(
        self, rc: Cluster, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Each layout's sweep handles its own results on every primary and leaves the other's alone."""
        client = rc.cluster_client()
        tagged = _fill(client, "{celery}_", old=150, fresh=50)
        plain = _fill(client, "", old=150, fresh=50)
        _fill_others(client)
        owners = {rc.owner(client.keyslot(k)) for k in plain.old}
        assert len(owners) == 3  # the unprefixed results really are on every primary

        before = rc.snapshot()
        report = sweep_cluster(_settings(rc, JANITOR_KEY_PREFIX="{celery}"))
        after = rc.snapshot()
        _check(before, after, set(tagged.old), set(tagged.fresh))
        assert report.completed
        assert (report.deleted["task"], report.ttl_applied["task"]) == (150, 50)
        assert report.skipped == {"wrong_type": 1}
        assert sorted(report.nodes) == sorted(f"127.0.0.1:{p}" for p in rc.primaries())
        assert sum(n["scanned"] for n in report.nodes.values()) == report.scanned
        assert all(n["completed"] for n in report.nodes.values())

        # The unprefixed layout through the CLI: same JSON shape as on one server, plus "nodes".
        capsys.readouterr()
        env = {"JANITOR_REDIS_URL": rc.url, "JANITOR_REDIS_CLUSTER": "true", "JANITOR_LOG_LEVEL": "error"}
        assert cli.main(["sweep", "--json"], environ=env) == Exit.OK
        shown = json.loads(capsys.readouterr().out)
        assert shown["completed"]
        assert (shown["deleted"], shown["ttl_applied"]) == ({"task": 150}, {"task": 50})
        assert len(shown["nodes"]) == 3
        _check(after, rc.snapshot(), set(plain.old), set(plain.fresh))

        again = sweep_cluster(_settings(rc))
        assert again.completed
        assert (again.deleted, again.ttl_applied) == ({}, {})
        client.close()

    def test_dry_run_writes_nothing(self, rc: Cluster) -> None:
        client = rc.cluster_client()
        _fill(client, "", old=30, fresh=10)
        _fill(client, "{celery}_", old=30, fresh=10)
        before = rc.snapshot()
        report = sweep_cluster(_settings(rc), dry_run=True)
        assert report.completed
        assert (report.deleted["task"], report.ttl_applied["task"]) == (30, 10)
        assert rc.snapshot() == before
        client.close()

    def test_cluster_url_with_a_database_is_refused(
        self, rc: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """One clear line from `sweep` and `run` alike; `restore` says why it has no cluster mode."""
        env = {"JANITOR_REDIS_URL": rc.url + "/2", "JANITOR_REDIS_CLUSTER": "true"}
        assert cli.main(["sweep"], environ=env) == Exit.UNREACHABLE
        run = subprocess.run(
            [sys.executable, "-m", "janitor", "run"],
            env=daemon_env(embedded.free_port(), PYTHONPATH=str(ROOT), **env),
            cwd=ROOT,
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert run.returncode == 2
        assert run.stderr.decode().strip().splitlines() == [
            f"celery-janitor: JANITOR_REDIS_URL: Redis Cluster has only database 0: drop the /db from {rc.url}/2"
        ]
        assert cli.main(["restore"], environ={**env, "JANITOR_REDIS_URL": rc.url}) == Exit.REFUSED
        assert "does not run on Redis Cluster" in capsys.readouterr().err


def test_a_standalone_server_is_not_taken_for_a_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    with embedded.running("redis") as server:
        env = {"JANITOR_REDIS_URL": f"redis://127.0.0.1:{server.port}", "JANITOR_REDIS_CLUSTER": "true"}
        assert cli.main(["sweep"], environ=env) == Exit.UNREACHABLE
    assert "not a Redis Cluster node" in capsys.readouterr().err


def _move_slot(rc: Cluster, slot: int, source: int, target: int, *, only: list[bytes] | None = None) -> None:
    """Migrate ``slot`` from ``source`` to ``target`` as redis-cli --cluster reshard does.

    With ``only``, stop half way: the slot stays MIGRATING/IMPORTING with just
    those keys moved, the rest still on the source.
    """
    src, dst = rc.node(source), rc.node(target)
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", rc.node_id(source))
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", rc.node_id(target))
    if only is not None:
        src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *only)
        return
    _finish_move(rc, slot, source, target)


def _finish_move(rc: Cluster, slot: int, source: int, target: int) -> None:
    src = rc.node(source)
    names = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100_000)
    if names:
        src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *names)
    for port in rc.primaries():
        rc.node(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", rc.node_id(target))


class TestResharding:
    def test_a_slot_moved_between_scan_and_script_is_skipped_then_swept(
        self, rc: Cluster, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """MOVED: the batch is skipped (counted), nothing wrong is deleted, the next pass finishes."""
        client = rc.cluster_client()
        tagged = _fill(client, "{celery}_", old=120, fresh=40)
        _fill(client, "", old=60, fresh=20)
        _fill_others(client)
        slot = client.keyslot("{celery}")
        source = rc.owner(slot)
        target = next(p for p in rc.primaries() if p != source)
        before = rc.snapshot()
        real_send = scripts.Tally.send
        moved: list[int] = []

        def send(self: scripts.Tally, node: redis.Redis, script: scripts.Script, keys: list[bytes], *rest: Any) -> Any:
            port = node.connection_pool.connection_kwargs["port"]
            if not moved and port == source and any(k.startswith(b"{celery}_") for k in keys):
                _move_slot(rc, slot, source, target)  # the whole slot leaves while a batch is in flight
                moved.append(slot)
            return real_send(self, node, script, keys, *rest)

        monkeypatch.setattr(scripts.Tally, "send", send)
        settings = _settings(rc, JANITOR_KEY_PREFIX="{celery}", JANITOR_SCAN_COUNT="50")
        first = sweep_cluster(settings)
        monkeypatch.undo()
        assert moved
        assert rc.owner(slot) == target
        assert first.skipped["moved"] > 0
        assert first.nodes[f"127.0.0.1:{source}"]["skipped_moved"] == first.skipped["moved"]
        mid = rc.snapshot()
        assert set(before) - set(mid) <= set(tagged.old)  # only old results deleted, so far
        for key in set(mid) & set(tagged.fresh):
            assert mid[key][0] == before[key][0]

        second = sweep_cluster(settings)
        assert second.completed
        assert not second.skipped["moved"]
        _check(before, rc.snapshot(), set(tagged.old), set(tagged.fresh))
        client.close()

    def test_a_half_migrated_slot_is_safe_and_finished_by_the_next_pass(self, rc: Cluster) -> None:
        """MIGRATING/IMPORTING: the source sweeps what it still holds, the target refuses (MOVED) the rest."""
        client = rc.cluster_client()
        tagged = _fill(client, "{celery}_", old=100, fresh=40)
        _fill_others(client)
        slot = client.keyslot("{celery}")
        source = rc.owner(slot)
        target = next(p for p in rc.primaries() if p != source)
        before = rc.snapshot()
        _move_slot(rc, slot, source, target, only=tagged.old[:50] + tagged.fresh[:20])
        settings = _settings(rc, JANITOR_KEY_PREFIX="{celery}")
        first = sweep_cluster(settings)
        assert first.completed
        assert first.skipped["moved"] == 70
        assert first.deleted["task"] + first.ttl_applied["task"] == 140 - 70
        _finish_move(rc, slot, source, target)
        second = sweep_cluster(settings)
        assert second.completed
        assert second.deleted["task"] + second.ttl_applied["task"] == 70
        _check(before, rc.snapshot(), set(tagged.old), set(tagged.fresh))
        client.close()


class TestFailover:
    def test_a_primary_killed_mid_sweep(self, rc: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
        """The dead node's pass ends incomplete with a clear error, the others finish; after the
        replica took over, the next pass completes the job."""
        client = rc.cluster_client()
        plain = _fill(client, "", old=200, fresh=60)
        _fill_others(client)
        rc.sync_replicas()
        before = rc.snapshot()
        victim = next(p for p in rc.primaries() if p != rc.ports[0])
        _before_fifth_call(monkeypatch, victim, lambda: rc.kill(victim))
        first = sweep_cluster(_settings(rc))
        monkeypatch.undo()
        assert not first.completed
        dead = first.nodes[f"127.0.0.1:{victim}"]
        assert not dead["completed"]
        assert "cannot reach Redis" in dead["error"]
        assert [n["completed"] for name, n in first.nodes.items() if name != f"127.0.0.1:{victim}"] == [True, True]
        assert 0 < first.deleted["task"] < 200

        rc.wait_ok()  # the victim's replica is primary now
        second = sweep_cluster(_settings(rc))
        assert second.completed
        assert victim not in rc.primaries()
        _check(before, rc.snapshot(), set(plain.old), set(plain.fresh))
        client.close()

    def test_a_graceful_failover_mid_sweep(self, rc: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
        """CLUSTER FAILOVER on a replica mid-pass: the old primary's remaining batches are refused
        (MOVED) and counted, nothing is written there, the next pass sweeps the new primary."""
        client = rc.cluster_client()
        plain = _fill(client, "", old=200, fresh=60)
        _fill_others(client)
        rc.sync_replicas()
        before = rc.snapshot()
        victim = rc.primaries()[1]
        replica = next(p for p in rc.alive() if rc.node(p).info("replication").get("master_port") == victim)

        def fail_over() -> None:
            rc.node(replica).execute_command("CLUSTER", "FAILOVER")
            deadline = time.monotonic() + 10
            while rc.node(victim).info("replication")["role"] != "slave":
                assert time.monotonic() < deadline, "failover did not happen"
                time.sleep(0.05)

        _before_fifth_call(monkeypatch, victim, fail_over)
        first = sweep_cluster(_settings(rc))
        monkeypatch.undo()
        old_primary = first.nodes[f"127.0.0.1:{victim}"]
        assert old_primary["completed"]
        assert old_primary["skipped_moved"] > 0
        assert first.skipped["moved"] == old_primary["skipped_moved"]

        rc.wait_ok()
        assert replica in rc.primaries()
        assert victim not in rc.primaries()
        second = sweep_cluster(_settings(rc))
        assert second.completed
        assert f"127.0.0.1:{replica}" in second.nodes
        _check(before, rc.snapshot(), set(plain.old), set(plain.fresh))
        client.close()


class TestDaemon:
    """`celery-janitor run` on a cluster: one leader sweeps every primary; the lease follows a kill."""

    def test_one_leader_sweeps_the_hash_tagged_layout_fenced(self, rc: Cluster, tmp_path: Path) -> None:
        client = rc.cluster_client()
        tagged = _fill(client, "{celery}_", old=100, fresh=40)
        plain = _fill(client, "", old=30, fresh=10)  # another app's layout: not this janitor's prefix
        env = {"JANITOR_REDIS_URL": rc.url, "JANITOR_REDIS_CLUSTER": "true", "JANITOR_KEY_PREFIX": "{celery}"}
        janitors = [launch(tmp_path / "a.log", **env), launch(tmp_path / "b.log", **env)]
        try:
            wait_for(lambda: sum(j.sample("janitor_is_leader") or 0 for j in janitors) == 1, 10, "one leader")
            leader = next(j for j in janitors if j.sample("janitor_is_leader"))
            follower = next(j for j in janitors if j is not leader)
            wait_for(lambda: leader.events("sweep.finished"), 15, "a finished sweep")
            assert client.exists(*tagged.old) == 0
            assert all(0 < client.pttl(k) <= 86_400_000 for k in tagged.fresh)
            assert all(client.pttl(k) == -1 for k in plain.old + plain.fresh)
            assert leader.sample("janitor_keys_deleted_total", kind="task", reason="retention") == 100
            assert leader.sample("janitor_keys_ttl_applied_total", kind="task") == 40
            finished = leader.events("sweep.finished")[0]
            assert finished["completed"]
            assert len(finished["nodes"]) == 3
            assert "unfenced_batches" not in finished  # the lease key shares the results' slot
            assert client.keyslot(b"{celery}_celery-janitor:lease") == client.keyslot(tagged.old[0])
            assert client.get(b"{celery}_celery-janitor:lease")
            for janitor in janitors:
                assert janitor.get("/readyz")[0] == 200
                assert janitor.sample("janitor_redis_up") == 1

            leader.process.kill()  # the follower takes the lease and sweeps what comes next
            later = _fill(client, "{celery}_", old=20, fresh=0)
            wait_for(lambda: follower.sample("janitor_is_leader") == 1, LEASE_TTL + 5, "failover")
            wait_for(lambda: client.exists(*later.old) == 0, 15, "the new leader's sweep")
        finally:
            stop_all(janitors)
            client.close()

    def test_unprefixed_results_are_swept_and_unfenced_batches_counted(self, rc: Cluster, tmp_path: Path) -> None:
        client = rc.cluster_client()
        plain = _fill(client, "", old=40, fresh=20)
        env = {"JANITOR_REDIS_URL": rc.url, "JANITOR_REDIS_CLUSTER": "true"}
        janitor = launch(tmp_path / "a.log", **env)
        try:
            wait_for(lambda: janitor.events("sweep.finished"), 20, "a finished sweep")
            assert client.exists(*plain.old) == 0
            assert all(client.pttl(k) > 0 for k in plain.fresh)
            finished = janitor.events("sweep.finished")[0]
            assert finished["unfenced_batches"] > 0  # keys outside the lease's slot: said, not hidden
            assert client.get(b"{celery-janitor:lease}")  # ACQUIRE's two keys share a slot
            assert client.exists(b"{celery-janitor:lease}:epoch")
        finally:
            stop_all([janitor])
            client.close()


class TestFence:
    """What DECIDE and ACT check: the lease unchanged off a cluster; on one, only a key in the batch's slot."""

    def _pass(self, *, cluster_mode: bool) -> _Pass:
        settings = config.load({})
        return _Pass(redis.Redis(), settings, SweepReport(dry_run=False), Fence, lambda: NOW, cluster_mode)

    def test_standalone_passes_the_fence_as_is(self) -> None:
        run = self._pass(cluster_mode=False)
        assert run._fenced(Fence(), [b"{x}a"]) == Fence(FENCE_NONE, "")
        assert run._fenced(Fence(b"lease", "tok"), [b"{x}a"]) == Fence(b"lease", "tok")

    def test_cluster_fences_batches_in_the_lease_slot(self) -> None:
        run = self._pass(cluster_mode=True)
        assert run._fenced(Fence(), [b"{x}a", b"{x}b"]) == Fence(b"{x}a", "")
        assert run._fenced(Fence(b"{x}lease", "tok"), [b"{x}a"]) == Fence(b"{x}lease", "tok")
        assert run.report.unfenced == 0

    def test_cluster_counts_every_batch_it_cannot_fence(self) -> None:
        run = self._pass(cluster_mode=True)
        assert run._fenced(Fence(b"{other}lease", "tok"), [b"{x}a"]) == Fence(b"{x}a", "")
        assert run.report.unfenced == 1
        assert run.report.as_dict()["unfenced_batches"] == 1


def _before_fifth_call(monkeypatch: pytest.MonkeyPatch, port: int, fault: Callable[[], None]) -> None:
    """Inject ``fault`` just before the sweep's fifth DECIDE call to the node on ``port``: mid-pass."""
    real_send = scripts.Tally.send
    calls = [0]

    def send(self: scripts.Tally, node: redis.Redis, script: scripts.Script, keys: list[bytes], *rest: Any) -> Any:
        if node.connection_pool.connection_kwargs["port"] == port:
            calls[0] += 1
            if calls[0] == 5:
                fault()
        return real_send(self, node, script, keys, *rest)

    monkeypatch.setattr(scripts.Tally, "send", send)
