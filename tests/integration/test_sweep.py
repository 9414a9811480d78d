"""Sweep mechanics on real servers: batching, guards, fencing, stopping, command counts."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from unittest import mock

import msgpack
import pytest
import redis

from janitor import config
from janitor.dev import demo
from janitor.operations.sweep import SweepReport, _Pass, sweep
from janitor.redis_io import scripts
from janitor.redis_io.lease import LEASE_SUFFIX as LEASE
from janitor.redis_io.lease import Fence

NOW = dt.datetime.now(dt.UTC)


class _Interrupted(BaseException):
    """What ends a pass without being an error of it (as KeyboardInterrupt does)."""


def _result(client: redis.Redis, tid: str, status: str = "SUCCESS", age_days: float = 3) -> bytes:
    key = f"celery-task-meta-{tid}".encode()
    client.set(key, json.dumps(demo.task_meta(tid, status, NOW - dt.timedelta(days=age_days))))
    return key


def _snapshot(client: redis.Redis) -> dict[bytes, tuple[bytes, bytes | None, int]]:
    return {k: (client.type(k), client.dump(k), client.pttl(k)) for k in client.scan_iter(count=1000)}


def _act(client: redis.Redis, write: scripts.Write) -> list[bool]:
    """ACT on one key, unfenced: whether it applied."""
    return scripts.act(scripts.Tally(), client, fence=Fence().key, token="", writes=[write])


def _assert_unchanged(before: dict[bytes, tuple[bytes, bytes | None, int]], client: redis.Redis) -> None:
    """Same keys, types and bytes; TTLs unchanged (-1 stays -1, running TTLs only counted down)."""
    after = _snapshot(client)
    assert after.keys() == before.keys()
    for key, (rtype, dump, pttl) in before.items():
        assert after[key][:2] == (rtype, dump), key
        assert (after[key][2] == -1) if pttl == -1 else (0 <= pttl - after[key][2] < 10_000), key


class TestDryRun:
    def test_writes_nothing_and_predicts_the_real_run(self, client: redis.Redis, settings: config.Settings) -> None:
        """A dry run leaves every key byte-identical and reports exactly what the real run then does."""
        demo.fill(client, results=3000)
        before = _snapshot(client)
        dry = sweep(client, settings, dry_run=True)
        _assert_unchanged(before, client)
        real = sweep(client, settings, dry_run=False)
        assert (dry.ttl_applied, dry.deleted, dry.skipped) == (real.ttl_applied, real.deleted, real.skipped)
        assert sum(real.deleted.values()) > 0
        assert sum(real.ttl_applied.values()) > 0


class TestCapMode:
    def test_a_second_pass_changes_nothing_and_dry_runs_predict(
        self, client: redis.Redis, settings: config.Settings
    ) -> None:
        """Cap mode shortens long TTLs once: a second pass over the unchanged keyspace shortens none,
        and a dry run before each pass counts exactly what the real pass then does.

        A TTL computed from date_done lands as late as ACT runs after the clock was read; the
        first pass's clock here reads 50 ms behind, as on a loaded machine, which the next pass
        must not take for a TTL longer than the rule's."""
        for i in range(400):
            status = "FAILURE" if i % 2 else "SUCCESS"
            key = _result(client, f"c{i}", status, age_days=(i % 40) / 4)  # 0 to 9.75 days: some past retention
            client.pexpire(key, 30 * 86400 * 1000 + i)
        capped = settings.model_copy(update={"cap_ttl": True})

        def lagging() -> dt.datetime:
            return dt.datetime.now(dt.UTC) - dt.timedelta(milliseconds=50)

        def counts(report: SweepReport) -> tuple[object, ...]:
            return report.ttl_capped, report.ttl_applied, report.deleted, report.skipped, report.raced

        dry = sweep(client, capped, dry_run=True, clock=lagging)
        first = sweep(client, capped, clock=lagging)
        assert counts(dry) == counts(first)
        assert first.ttl_capped["task"] > 0
        assert first.deleted["task"] > 0
        assert first.raced == 0
        before = _snapshot(client)
        dry_again = sweep(client, capped, dry_run=True)
        second = sweep(client, capped)
        assert counts(dry_again) == counts(second) == ({}, {}, {}, {}, 0)
        _assert_unchanged(before, client)


class TestGuards:
    def test_a_result_rewritten_after_inspection_is_not_deleted(self, client: redis.Redis) -> None:
        """ACT re-checks the value: a key Celery rewrote since INSPECT read it is left alone."""
        key = _result(client, "t1", age_days=5)
        seen = client.get(key)
        assert seen is not None
        client.set(key, json.dumps(demo.task_meta("t1", "SUCCESS", NOW)))
        guard = f"S{len(seen)}:{scripts.sha1(seen)}"
        applied = _act(client, scripts.Write(key, scripts.Op.DELETE, 0, guard))
        assert applied == [False]
        assert client.exists(key)

    def test_a_key_that_got_a_ttl_meanwhile_keeps_it(self, client: redis.Redis) -> None:
        """'x' only applies to a key that still has no TTL."""
        key = _result(client, "t2")
        value = client.get(key)
        assert value is not None
        client.expire(key, 50)
        applied = _act(client, scripts.Write(key, scripts.Op.SET_TTL, 999_000, f"L{len(value)}"))
        assert applied == [False]
        assert 0 < client.ttl(key) <= 50

    def test_a_started_result_that_finished_meanwhile_gets_no_pending_ttl(self, client: redis.Redis) -> None:
        """A TTL decided on a STARTED value is not applied once the worker rewrote it as SUCCESS."""
        key = b"celery-task-meta-t3"
        started = json.dumps(demo.task_meta("t3", "STARTED", None)).encode()
        client.set(key, started)
        client.set(key, json.dumps(demo.task_meta("t3", "SUCCESS", NOW)))
        applied = _act(client, scripts.Write(key, scripts.Op.SET_TTL, 999_000, f"L{len(started)}"))
        assert applied == [False]
        assert client.ttl(key) == -1

    def test_fenced_batch_writes_nothing(self, client: redis.Redis, settings: config.Settings) -> None:
        """When the lease token changed (another janitor leads now), the whole batch is refused."""
        keys = [_result(client, f"t{i}", age_days=5) for i in range(20)]
        client.set(LEASE, "someone-else")
        with pytest.raises(redis.ResponseError, match="FENCED"):
            sweep(client, settings, fence=lambda: Fence(LEASE, "me"))
        assert client.exists(*keys) == 20
        assert all(client.ttl(k) == -1 for k in keys)

    def test_script_cache_flush_is_survived(self, client: redis.Redis, settings: config.Settings) -> None:
        """After SCRIPT FLUSH (failover, restart) the scripts are loaded again once, transparently."""
        for i in range(300):
            _result(client, f"t{i}", age_days=0.5)
        small = settings.model_copy(update={"scan_count": 10})
        report = sweep(client, small, on_batch=lambda _r: client.script_flush())
        assert report.completed
        assert report.batches >= 2
        assert sum(report.ttl_applied.values()) == 300
        assert all(client.ttl(k) > 0 for k in client.scan_iter(count=1000))
        # Once per flush at most: the next page's call may have run before the flush reached Redis.
        assert 1 <= report.tally.commands["SCRIPT LOAD"] <= report.batches


class TestBatches:
    def test_stop_between_batches_leaves_whole_batches(self, client: redis.Redis, settings: config.Settings) -> None:
        """A stop request ends the pass after the current batch, and after the next page's DECIDE that
        was already running in Redis, which it waits for and counts: every key is either fully handled
        or untouched, and the report says which."""
        for i in range(500):
            _result(client, f"t{i}", age_days=0.5)
        small = settings.model_copy(update={"scan_count": 50})
        report = sweep(client, small, should_stop=lambda: True)
        assert not report.completed
        assert report.batches == 2
        with_ttl = sum(1 for k in client.scan_iter(count=1000) if client.ttl(k) > 0)
        assert 0 < with_ttl == sum(report.ttl_applied.values()) == report.celery_keys < 500

    def test_a_stop_waits_for_a_running_call_the_fence_refuses(
        self, client: redis.Redis, settings: config.Settings
    ) -> None:
        """The lease passed to another janitor before the next page's DECIDE ran: the stopping pass
        says FENCED, as any refused batch does, and that call wrote nothing."""
        keys = [_result(client, f"t{i}", age_days=0.5) for i in range(500)]
        client.set(LEASE, "me")
        tokens = iter(["me", "stale"])
        batches: list[SweepReport] = []
        with pytest.raises(redis.ResponseError, match="FENCED"):
            sweep(
                client,
                settings,
                fence=lambda: Fence(LEASE, next(tokens)),
                should_stop=lambda: True,
                on_batch=batches.append,
            )
        assert batches[-1].batches == 1
        with_ttl = sum(1 for k in keys if client.ttl(k) > 0)
        assert 0 < with_ttl == sum(batches[-1].ttl_applied.values()) < 500

    def test_a_refused_call_mid_pass_leaves_no_write_uncounted(
        self, client: redis.Redis, settings: config.Settings
    ) -> None:
        """A call refused while the next page's DECIDE runs (FENCED: the lease moved) ends the pass
        with the error; every write before it, that DECIDE's included, has reached on_batch."""
        keys = [_result(client, f"t{i}", age_days=0.5) for i in range(2000)]
        client.set(LEASE, "me")
        judged = [0]
        judge = _Pass._judge

        def refused_third(self: _Pass, reply: scripts.Decided, now: dt.datetime) -> None:
            judged[0] += 1
            if judged[0] == 3:
                raise redis.ResponseError("FENCED lease lost before this batch")
            judge(self, reply, now)

        seen: list[SweepReport] = []
        with (
            mock.patch.object(_Pass, "_judge", refused_third),
            pytest.raises(redis.ResponseError, match="FENCED"),
        ):
            sweep(client, settings, fence=lambda: Fence(LEASE, "me"), on_batch=seen.append)
        with_ttl = sum(1 for k in keys if client.ttl(k) > 0)
        assert 0 < with_ttl == sum(seen[-1].ttl_applied.values()) < len(keys)
        assert seen[-1].batches == 3

    @pytest.mark.parametrize("error", [RuntimeError, _Interrupted], ids=["error", "interrupted"])
    def test_an_error_mid_pass_leaves_no_reply_behind(
        self, client: redis.Redis, settings: config.Settings, error: type[BaseException]
    ) -> None:
        """A pass that fails while the next page's DECIDE is on its way reads that call's reply; one
        interrupted closes that call's connection instead. Either way no later command on the client
        reads that reply as its own, and the next pass does the rest."""
        keys = [_result(client, f"t{i}", age_days=0.5) for i in range(500)]
        with (
            mock.patch.object(_Pass, "_judge", side_effect=error("judging failed")),
            pytest.raises(error, match="judging failed"),
        ):
            sweep(client, settings)
        assert not client.connection_pool._in_use_connections  # every connection back in the pool
        for key in keys[:20]:  # each reply is the command's own: the pool hands back the last connection first
            assert client.ping() is True
            assert client.get(key) == client.get(key)
            assert client.type(key) == b"string"
        report = sweep(client, settings)
        assert report.completed
        assert all(client.ttl(k) > 0 for k in keys)

    def test_what_python_decides_waits_for_a_full_act_call(
        self, client: redis.Redis, settings: config.Settings
    ) -> None:
        """Results only Python reads (msgpack), a few per page: their writes go in ACT calls across pages,
        not one call per page; a pass stopped before sending them leaves those keys as they were."""
        for i in range(300):
            _result(client, f"t{i}", age_days=0.5)
        for i in range(30):
            meta = demo.task_meta(f"m{i}", "SUCCESS", NOW - dt.timedelta(days=0.5))
            client.set(f"celery-task-meta-m{i}", msgpack.packb(meta))
        small = settings.model_copy(update={"scan_count": 20})
        stopped = sweep(client, small, should_stop=lambda: True, timer=_ticks(0.0001))
        assert sum(1 for k in client.scan_iter(count=1000) if client.ttl(k) > 0) == sum(stopped.ttl_applied.values())
        with mock.patch.object(scripts, "act", wraps=scripts.act) as act:
            report = sweep(client, small, timer=_ticks(0.0001))
        assert report.completed
        assert all(client.ttl(k) > 0 for k in client.scan_iter(count=1000))
        assert 1 <= act.call_count <= 3  # 30 writes, 20 per call (ACT's size at scan_count 20)
        assert report.tally.commands["EVALSHA"] - act.call_count > 10  # the DECIDE calls they came from

    def test_inspect_replies_are_bounded(self, client: redis.Redis, settings: config.Settings) -> None:
        """A page of large values is read in several INSPECT calls, each under the byte budget."""
        big = "x" * 200_000
        for i in range(40):  # msgpack: decided in Python, so INSPECT ships the values
            client.set(f"celery-task-meta-b{i}", msgpack.packb(demo.task_meta(f"b{i}", "STARTED", None, pad=big)))
        tight = settings.model_copy(update={"batch_bytes": 1_000_000})
        report = sweep(client, tight)
        assert sum(report.ttl_applied.values()) == 40
        assert report.tally.commands["EVALSHA"] >= 1 + 40 * 200_000 // 1_000_000

    def test_keys_past_a_pages_limit_are_all_decided_while_batches_shrink(
        self, client: redis.Redis, settings: config.Settings
    ) -> None:
        """A page holding more keys than one call may read hands the rest back, to be decided by name in
        pacer-sized calls; every one is decided though the pacer shrinks the calls as they turn out slow."""
        for i in range(60):
            _result(client, f"o{i}", age_days=0.5)
        reads = [0]

        def slowing() -> float:  # the page's call is fast; every call after it takes 50 ms
            reads[0] += 1
            return 0.0001 * min(reads[0], 2) + 0.025 * max(reads[0] - 2, 0)

        paged = settings.model_copy(update={"scan_count": 15})  # a call reads 30 keys at most
        with mock.patch.object(scripts, "decide", wraps=scripts.decide) as decide:
            report = sweep(client, paged, timer=slowing)
        by_name = [len(call.kwargs["keys"]) for call in decide.call_args_list if not call.kwargs["cursor"]]
        assert report.completed
        assert report.scanned == 60
        assert sum(report.ttl_applied.values()) == 60
        assert all(client.ttl(k) > 0 for k in client.scan_iter(count=1000))
        assert by_name[0] > by_name[1]  # the calls did shrink: the first by-name call took 50 ms

    def test_cap_mode_batches_grow_with_inspect(self, client: redis.Redis, settings: config.Settings) -> None:
        """In cap mode INSPECT is each batch's main call: its timings size the batches, which grow
        past the pacer's first 100 keys while calls are fast and stay small while they are slow.
        Call durations come from a fake timer, so the figures do not depend on this machine."""
        demo.fill(client, results=20000)
        capped = settings.model_copy(update={"cap_ttl": True, "dry_run": True})
        fast = sweep(client, capped, timer=_ticks(0.0001))  # every call 0.1 ms: well under the target
        slow = sweep(client, capped, timer=_ticks(0.05))  # every call 50 ms: ten times the guard
        assert fast.completed
        assert slow.completed
        assert fast.scanned == slow.scanned >= 20000
        assert fast.scanned / fast.batches > 300
        assert fast.commands / fast.scanned < 0.01
        assert slow.scanned / slow.batches < 15  # shrunk to the pacer's floor of 10 keys

    def test_clean_pass_costs_one_call_per_batch(self, client: redis.Redis, settings: config.Settings) -> None:
        """On an already clean keyspace a pass is SCAN + one script call per batch, and no writes.

        (Commands per key at scale, where the pacer's ramp from 100 keys does not show, are in bench/;
        here every call seems fast, so the batch sizes do not depend on this machine.)
        """
        demo.fill(client, results=5000)
        sweep(client, settings)
        clean = sweep(client, settings, timer=_ticks(0.0001))
        assert clean.completed
        assert not clean.ttl_applied
        assert not clean.deleted
        assert clean.tally.commands["EVALSHA"] == clean.batches
        assert clean.commands / clean.scanned < 0.02

    def test_key_prefix_is_respected(self, client: redis.Redis, settings: config.Settings) -> None:
        """With JANITOR_KEY_PREFIX, results of another app sharing the DB are not touched."""
        ours = b"myapp_celery-task-meta-a"
        client.set(ours, json.dumps(demo.task_meta("a", "SUCCESS", NOW - dt.timedelta(days=3))))
        theirs = _result(client, "b", age_days=3)
        report = sweep(client, settings.model_copy(update={"key_prefix": "myapp"}))
        assert report.deleted == {"task": 1}
        assert not client.exists(ours)
        assert client.exists(theirs)
        assert client.ttl(theirs) == -1


def _ticks(step: float) -> Callable[[], float]:
    """A timer that advances ``step`` seconds each time it is read: every call seems to take ``step``."""
    now = [0.0]

    def timer() -> float:
        now[0] += step / 2
        return now[0]

    return timer
