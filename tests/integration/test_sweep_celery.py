"""The result sweep on keyspaces written by real Celery 5.7 workers, on Redis 7 and Valkey 8.

The keyspace (tests.celery_keyspace) comes from real ``celery worker`` processes with eight
result configurations: no TTL, Celery's own TTL, result_extended, pickle, msgpack, yaml,
gzip compression and two ``global_keyprefix`` apps; groups, chords (complete and stuck),
failures, retries, revokes, STARTED (worker killed), a custom PROGRESS state, and the broker
keys the same run left (queues, bindings, unacked). Some results are back-dated. Each test
loads it into a fresh server, sweeps once and checks every key against an oracle built
from Celery's own decoder, never from the janitor's.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

import pytest
import redis

from janitor import config
from janitor.dev import embedded
from janitor.operations.sweep import SweepReport, sweep
from tests.support import celery_keyspace as ck

pytestmark = pytest.mark.celery

TOLERANCE_MS = 3000


@pytest.fixture(name="keyspace", scope="session")
def _keyspace() -> ck.Keyspace:
    """The real Celery keyspace, generated once per session."""
    return ck.generated()


@pytest.fixture(name="loaded")
def _loaded(server: embedded.Server, client: redis.Redis, keyspace: ck.Keyspace) -> ck.Snapshot:
    """The keyspace restored into this test's flushed server; returns its snapshot."""
    ck.restore(client, keyspace)
    return ck.snapshot(client)


def prefixed(settings: config.Settings, prefix: str) -> config.Settings:
    return settings.model_copy(update={"key_prefix": prefix})


@dataclass
class Oracle:
    """What one sweep must do to each key, derived with Celery's decoder from the snapshot before it."""

    gone: set[bytes] = field(default_factory=set)
    ttl_ms: dict[bytes, float] = field(default_factory=dict)  # key -> expected PTTL at `at` (epoch s)
    untouched: set[bytes] = field(default_factory=set)
    ttl_by_kind: dict[str, int] = field(default_factory=dict)
    categories: set[str] = field(default_factory=set)  # which rules fired, to prove coverage

    @classmethod
    def build(
        cls, ks: ck.Keyspace, before: ck.Snapshot, settings: config.Settings, url: str, our_prefix: bytes
    ) -> Oracle:
        oracle = cls()
        apps = {p: ks.app(p, url) for p in ck.PROFILES}
        now = time.time()
        for key, (_rtype, pttl, _dump) in before.items():
            match = ck.RESULT_KEY.match(key)
            if not match or match["prefix"] != our_prefix or match["sfx"] == b".c" or pttl != -1:
                oracle.untouched.add(key)
                continue
            if match["gid"]:
                oracle._ttl(key, now + settings.group_ttl, "group" if not match["sfx"] else "chord")
                continue
            meta = apps[ks.owner[key]].backend.decode(ks.values[key])
            if meta["status"] not in ck.READY:
                oracle._ttl(key, now + settings.pending_ttl, f"pending:{meta['status']}")
                continue
            keep = settings.failure_ttl if meta["status"] == "FAILURE" else settings.result_ttl
            expires = dt.datetime.fromisoformat(meta["date_done"]).timestamp() + keep
            if expires <= now:
                oracle.gone.add(key)
                oracle.categories.add(f"gone:{meta['status']}")
            else:
                oracle._ttl(key, expires, f"ttl:{meta['status']}")
        for app in apps.values():
            app.close()
        return oracle

    def _ttl(self, key: bytes, expires_at: float, category: str) -> None:
        self.ttl_ms[key] = expires_at * 1000
        kind = "task" if b"-task-meta-" in key else _chord_kind(key)
        self.ttl_by_kind[kind] = self.ttl_by_kind.get(kind, 0) + 1
        self.categories.add(category)


def _chord_kind(key: bytes) -> str:
    return {b".j": "chord_join", b".s": "chord_size", b".t": "chord_total", b".d": "chord_dedup"}.get(key[-2:], "group")


def check(before: ck.Snapshot, client: redis.Redis, oracle: Oracle) -> list[str]:
    """Every difference between what the sweep did and what the oracle says, one line each."""
    after = ck.snapshot(client)
    at = time.time() * 1000
    problems = []
    for key in oracle.gone:
        if key in after:
            problems.append(f"{key!r}: past retention but still there")
    for key, expires_ms in oracle.ttl_ms.items():
        if key not in after:
            problems.append(f"{key!r}: deleted, expected a TTL")
            continue
        rtype, pttl, dump = after[key]
        if (rtype, dump) != before[key][::2]:
            problems.append(f"{key!r}: value or type changed")
        if abs(pttl - (expires_ms - at)) > TOLERANCE_MS:
            problems.append(f"{key!r}: PTTL {pttl} ms, expected {expires_ms - at:.0f} ms")
    for key in oracle.untouched:
        if key not in after:
            problems.append(f"{key!r}: deleted, must be left alone")
            continue
        (rtype0, pttl0, dump0), (rtype1, pttl1, dump1) = before[key], after[key]
        if (rtype0, dump0) != (rtype1, dump1):
            problems.append(f"{key!r}: value or type changed")
        if (pttl1 != -1) if pttl0 == -1 else not 0 <= pttl0 - pttl1 < TOLERANCE_MS:
            problems.append(f"{key!r}: PTTL {pttl0} -> {pttl1}")
    problems += [f"{key!r}: appeared" for key in after.keys() - before.keys()]
    return problems


def counts(report: SweepReport) -> tuple[dict[str, int], ...]:
    return dict(report.ttl_applied), dict(report.deleted), dict(report.skipped), dict(report.ttl_capped)


class TestRealKeyspace:
    """One sweep with default settings over everything the real Celery run left."""

    def test_keyspace_has_every_shape(self, keyspace: ck.Keyspace, loaded: ck.Snapshot) -> None:
        """The generated keyspace holds every state, format, chord key and broker key the other tests rely on."""
        names = set(loaded)
        suffixes = {m["prefix"] + (m["sfx"] or b"") for k in names if (m := ck.RESULT_KEY.match(k)) and m["gid"]}
        assert {b"", b".j", b".s", b".d", b".c", b"myapp_", b"myapp_.j", b"myapp_.c", b"other_"} <= suffixes
        assert {b"celery", b"celery\x06\x166", b"unacked", b"unacked_index", b"_kombu.binding.celery"} <= names
        types = {k: v[0] for k, v in loaded.items()}
        assert (types[b"unacked"], types[b"unacked_index"]) == (b"hash", b"zset")
        stuck = keyspace.groups
        assert types[b"celery-taskset-meta-" + stuck["plain"]["chord_stuck"].encode() + b".j"] == b"zset"
        assert types[b"myapp_celery-taskset-meta-" + stuck["myapp"]["chord_stuck"].encode() + b".j"] == b"list"
        assert f"celery-task-meta-{ck.CUSTOM_ID}".encode() in names
        statuses = {}
        for key, profile in keyspace.owner.items():
            meta = keyspace.app(profile, "redis://").backend.decode(keyspace.values[key])
            statuses.setdefault(profile, set()).add(meta["status"])
        assert statuses["plain"] == {"SUCCESS", "FAILURE", "REVOKED", "RETRY", "PROGRESS", "STARTED"}
        assert statuses["ttl"] == {"SUCCESS", "FAILURE", "PROGRESS", "STARTED"}
        assert all({"SUCCESS", "FAILURE"} <= statuses[p] for p in ck.PROFILES)
        ages = {(keyspace.owner[k], a) for k, a in keyspace.ages.items()}
        assert {(p, a) for p in ck.NO_TTL for a in ck.AGES} <= ages
        firsts = {(p, keyspace.values[k][:1]) for k, p in keyspace.owner.items()}
        assert {f for p, f in firsts if p == "pickle"} == {b"\x80"}
        assert all(0x80 <= f[0] <= 0x8F for p, f in firsts if p == "msgpack")
        assert {f for p, f in firsts if p == "gzip"} == {b"\x00"}
        assert {f for p, f in firsts if p == "yaml"} <= {b"c", b"d", b"r", b"s", b"t"}

    def test_every_key_gets_exactly_its_rule(
        self, keyspace: ck.Keyspace, loaded: ck.Snapshot, client: redis.Redis, settings: config.Settings
    ) -> None:
        """After one sweep: stale ready results are gone, every other result/group/chord key has the TTL its
        date_done and retention give, and every other key is byte-identical with its TTL."""
        oracle = Oracle.build(keyspace, loaded, settings, "redis://", b"")
        report = sweep(client, settings, dry_run=False)
        assert check(loaded, client, oracle) == []
        assert report.completed
        assert {
            "gone:SUCCESS",
            "gone:FAILURE",
            "gone:REVOKED",
            "ttl:SUCCESS",
            "ttl:FAILURE",
            "pending:STARTED",
            "pending:RETRY",
            "pending:PROGRESS",
            "group",
            "chord",
        } <= oracle.categories

    def test_no_result_key_is_left_without_ttl(
        self, keyspace: ck.Keyspace, loaded: ck.Snapshot, client: redis.Redis, settings: config.Settings
    ) -> None:
        """After one sweep no Celery result, group or chord key (except the claim .c) lacks a TTL."""

        def unbounded(snap: ck.Snapshot) -> list[bytes]:
            return [
                k
                for k, (_t, pttl, _d) in snap.items()
                if pttl == -1 and (m := ck.RESULT_KEY.match(k)) and m["prefix"] == b"" and m["sfx"] != b".c"
            ]

        assert len(unbounded(loaded)) > 3000
        sweep(client, settings, dry_run=False)
        assert unbounded(ck.snapshot(client)) == []

    def test_report_counts_match_the_keyspace(
        self, keyspace: ck.Keyspace, loaded: ck.Snapshot, client: redis.Redis, settings: config.Settings
    ) -> None:
        """The report counts each deletion and TTL by kind, skips nothing real, and frees the deleted bytes."""
        oracle = Oracle.build(keyspace, loaded, settings, "redis://", b"")
        report = sweep(client, settings, dry_run=False)
        assert dict(report.deleted) == {"task": len(oracle.gone)}
        assert dict(report.ttl_applied) == oracle.ttl_by_kind
        assert (dict(report.skipped), dict(report.ttl_capped), report.raced) == ({}, {}, 0)
        assert report.bytes_deleted == sum(len(keyspace.values[k]) for k in oracle.gone)

    def test_a_second_sweep_does_nothing(
        self, keyspace: ck.Keyspace, loaded: ck.Snapshot, client: redis.Redis, settings: config.Settings
    ) -> None:
        """Once swept, the keyspace is stable: a second pass writes nothing."""
        sweep(client, settings, dry_run=False)
        between = ck.snapshot(client)
        again = sweep(client, settings, dry_run=False)
        assert counts(again) == ({}, {}, {}, {})
        assert check(between, client, Oracle(untouched=set(between))) == []


class TestDryRun:
    def test_dry_run_changes_nothing_and_predicts_the_real_run(
        self, loaded: ck.Snapshot, client: redis.Redis, settings: config.Settings
    ) -> None:
        """A dry run leaves every key byte-identical and reports exactly the counts the real run then has."""
        dry = sweep(client, settings, dry_run=True)
        assert check(loaded, client, Oracle(untouched=set(loaded))) == []
        real = sweep(client, settings, dry_run=False)
        assert counts(dry) == counts(real)
        assert sum(real.deleted.values()) > 0
        assert sum(real.ttl_applied.values()) > 0


class TestGlobalKeyprefix:
    def test_prefixed_app_is_swept_and_nothing_else(
        self, keyspace: ck.Keyspace, loaded: ck.Snapshot, client: redis.Redis, settings: config.Settings
    ) -> None:
        """With key_prefix='myapp' only myapp_ keys are treated; unprefixed and other_ keys stay byte-identical."""
        mine = prefixed(settings, "myapp")
        oracle = Oracle.build(keyspace, loaded, mine, "redis://", b"myapp_")
        assert any(k.startswith(b"other_") for k in oracle.untouched)
        assert any(k.startswith(b"celery-task-meta-") for k in oracle.untouched)
        report = sweep(client, mine, dry_run=False)
        assert check(loaded, client, oracle) == []
        assert {"gone:SUCCESS", "ttl:FAILURE", "pending:PROGRESS", "group", "chord"} <= oracle.categories
        assert dict(report.deleted) == {"task": len(oracle.gone)}


class TestSerializers:
    def test_yaml_saved_group_gets_group_ttl(
        self, keyspace: ck.Keyspace, loaded: ck.Snapshot, client: redis.Redis, settings: config.Settings
    ) -> None:
        """A group saved by a yaml-serializing app (top-level "result:", no "status:") gets group_ttl."""
        key = ck.group_key(keyspace.app("yaml", "redis://"), keyspace.groups["yaml"]["saved"])
        assert loaded[key][1] == -1
        report = sweep(client, settings, dry_run=False)
        assert abs(client.pttl(key) - settings.group_ttl * 1000) < TOLERANCE_MS
        assert dict(report.skipped) == {}
