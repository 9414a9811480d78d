"""Results too large to read whole, on real servers: judged from STRLEN and the GETRANGE of their
head and tail, written by Celery's own encoder (``Backend.store_result``) and by a real worker,
with results crafted to hold a fake tail right where the tail window starts.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import pickle
import subprocess
import sys
import uuid
from typing import Any

import pytest
import redis
from celery import Celery
from celery.app.task import Context
from kombu.utils.json import dumps

from janitor import config
from janitor.celery_model import payload
from janitor.celery_model.keyspace import Kind
from janitor.operations.rules import Action, decide
from janitor.operations.sweep import SweepReport, sweep
from janitor.redis_io import scripts
from janitor.redis_io.lease import FENCE_NONE
from tests import big_app
from tests.support import ROOT
from tests.support.big_values import FAKES, NOW, TID

MB = 1024 * 1024


# -- real servers ------------------------------------------------------------------------
def _app(url: str, *, extended: bool = False, serializer: str = "json", compression: str | None = None) -> Celery:
    app = Celery("big", backend=url, set_as_current=False)
    app.conf.update(
        result_extended=extended,
        result_serializer=serializer,
        result_compression=compression,
        result_expires=None,
        result_accept_content=["json", "pickle"],
    )
    return app


def _store(app: Celery, result: Any, state: str, *, when: dt.datetime | None = None, **request: Any) -> str:
    """Celery's own Backend.store_result, as a worker calls it; ``when`` stands in for app.now()."""
    tid = str(uuid.uuid4())
    if when is not None:
        app.now = lambda: when  # type: ignore[method-assign]  # what apps that replace app.now do
    ctx = Context(id=tid, task="app.big", args=[1], kwargs={"k": "v"}, hostname="w1@host", retries=0)
    ctx.delivery_info = {"routing_key": "celery"}
    for name, value in request.items():
        setattr(ctx, name, value)
    app.backend.store_result(tid, result, state, request=ctx)
    return tid


def _big(n: int, fake: str = FAKES[0]) -> str:
    """A result string of about ``n`` bytes ending in text that mimics Celery's own tail."""
    return "r" * (n - len(fake)) + fake


@pytest.fixture(name="reply_bytes")
def _reply_bytes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes of every script reply the sweep receives: what crossed the network."""
    seen: list[int] = []
    run = scripts.Tally.run

    def counting(self: scripts.Tally, client: Any, script: scripts.Script, keys: list[bytes], args: list[Any]) -> Any:
        reply = run(self, client, script, keys, args)
        seen.append(_size(reply))
        return reply

    send = scripts.Tally.send

    def sending(self: scripts.Tally, client: Any, script: scripts.Script, keys: list[bytes], *rest: Any) -> Any:
        args, parse = rest

        def parse_counted(reply: Any) -> Any:
            seen.append(_size(reply))
            return parse(reply)

        return send(self, client, script, keys, args, parse_counted)

    monkeypatch.setattr(scripts.Tally, "run", counting)
    monkeypatch.setattr(scripts.Tally, "send", sending)
    return seen


def _size(reply: Any) -> int:
    if isinstance(reply, bytes | str):
        return len(reply)
    if isinstance(reply, list):
        return sum(_size(r) for r in reply)
    return 8


class TestLargeResultsOnRealServers:
    def test_celery_written_big_results_get_the_rules(
        self, client: redis.Redis, settings: config.Settings, reply_bytes: list[int]
    ) -> None:
        """10 MB results as Celery writes them (plain and result_extended, chord members, a result
        crafted to end like Celery's own tail): stale ones deleted, fresh ones and STARTED given
        their TTL, pickle and compressed ones skipped with their bytes; no value crosses the network."""
        url = settings.redis_url
        now = dt.datetime.now(dt.UTC)  # the sweep reads the real clock
        old, fresh = now - dt.timedelta(days=3), now - dt.timedelta(hours=1)
        plain, extended = _app(url), _app(url, extended=True)
        stale = [
            _store(plain, _big(10 * MB), "SUCCESS", when=old),
            _store(extended, _big(10 * MB), "SUCCESS", when=old, group="g1", parent_id="p1"),
            _store(_app(url), _big(3 * MB, FAKES[2]), "SUCCESS", when=old.replace(tzinfo=None)),
        ]
        kept = {
            _store(_app(url), _big(10 * MB), "SUCCESS", when=fresh): settings.result_ttl - 3600,
            _store(_app(url), _big(2 * MB), "FAILURE", when=old): settings.failure_ttl - 3 * 86400,
            _store(_app(url, extended=True), {"pid": 1, "log": _big(2 * MB)}, "STARTED"): settings.pending_ttl,
        }
        unreadable = [
            _store(_app(url, serializer="pickle"), _big(10 * MB), "SUCCESS", when=old),
            _store(_app(url, compression="gzip"), os.urandom(5 * MB).hex(), "SUCCESS", when=old),
        ]
        gc.collect()
        key = plain.backend.get_key_for_task
        sizes = {tid: client.strlen(key(tid)) for tid in unreadable}
        report = sweep(client, settings)
        assert report.completed
        assert report.deleted == {"task": len(stale)}
        assert all(not client.exists(key(tid)) for tid in stale)
        for tid, ttl in kept.items():
            assert client.exists(key(tid))
            assert abs(client.ttl(key(tid)) - ttl) < 120, tid
        assert all(client.ttl(key(tid)) == -1 for tid in unreadable)
        assert report.skipped == {"too_large": 2}
        assert report.skipped_bytes == {"too_large": sum(sizes.values())}
        # Edges only: all replies together hold no more than a head and a tail per key.
        assert sum(reply_bytes) < 8 * 2 * payload.EDGE_BYTES + 8192
        again = sweep(client, settings)
        assert (again.deleted, again.ttl_applied, again.skipped) == ({}, {}, {"too_large": 2})

    def test_a_rewrite_between_read_and_delete_is_not_deleted(self, client: redis.Redis) -> None:
        """The delete guard is the length plus the digest of head and tail: a rewrite changing either is
        left alone; one changing neither keeps the status, date_done and task_id the decision read."""
        meta = {"status": "SUCCESS", "result": "q" * (2 * MB), "traceback": None, "children": []}
        meta |= {"date_done": "2020-01-01T00:00:00", "task_id": TID}
        value = dumps(meta).encode()
        key = f"celery-task-meta-{TID}".encode()
        edges = payload.Edges(len(value), value[:4096], value[-4096:])
        action = decide(Kind.TASK, TID.encode(), "string", -1, edges, now=NOW, settings=config.load({}))
        assert isinstance(action, Action)
        assert action.deletes
        write = [scripts.Write(key, action.op, 0, action.guard)]
        for changed in (value[:-3] + b'1"}', value + b" ", value[:10] + b"Z" + value[11:]):
            client.set(key, changed)
            assert scripts.act(scripts.Tally(), client, fence=FENCE_NONE, token="", writes=write) == [False]
            assert client.exists(key)
        client.set(key, value[: 3 * MB // 2] + b"w" + value[3 * MB // 2 + 1 :])  # the middle only
        assert scripts.act(scripts.Tally(), client, fence=FENCE_NONE, token="", writes=write) == [True]
        assert not client.exists(key)

    @pytest.mark.parametrize("mb", [10, 100])
    def test_huge_values_are_swept_and_cleaned(
        self, client: redis.Redis, settings: config.Settings, reply_bytes: list[int], mb: int
    ) -> None:
        """A stale and a fresh result of 10 and 100 MB, and a pickle of that size: deleted, TTL'd, counted."""
        stale_id, fresh_id, pickled_id = (str(uuid.uuid4()) for _ in range(3))
        body = "h" * (mb * MB)
        for tid, when in ((stale_id, NOW - dt.timedelta(days=30)), (fresh_id, dt.datetime.now(dt.UTC))):
            meta = {"status": "SUCCESS", "result": body, "traceback": None, "children": []}
            client.set(f"celery-task-meta-{tid}", dumps(meta | {"date_done": when.isoformat(), "task_id": tid}))
        client.set(f"celery-task-meta-{pickled_id}", pickle.dumps({"status": "SUCCESS", "result": body}, protocol=4))
        del body
        gc.collect()
        pickled = client.strlen(f"celery-task-meta-{pickled_id}")
        report = sweep(client, settings)
        assert report.deleted == {"task": 1}
        assert report.bytes_deleted > mb * MB
        assert report.ttl_applied == {"task": 1}
        assert report.skipped_bytes == {"too_large": pickled}
        assert not client.exists(f"celery-task-meta-{stale_id}")
        assert 0 < client.ttl(f"celery-task-meta-{fresh_id}") <= settings.result_ttl
        assert sum(reply_bytes) < 3 * 2 * payload.EDGE_BYTES + 8192
        client.flushall()


def test_dry_run_counts_large_results_like_the_real_run(client: redis.Redis, settings: config.Settings) -> None:
    """What a dry run says about big values is what the real run then does."""
    url = settings.redis_url
    old = NOW - dt.timedelta(days=3)
    for _ in range(3):
        _store(_app(url), _big(2 * MB), "SUCCESS", when=old)
        _store(_app(url), _big(2 * MB), "SUCCESS", when=dt.datetime.now(dt.UTC))
        _store(_app(url, serializer="pickle"), _big(2 * MB), "SUCCESS", when=old)

    def counts(r: SweepReport) -> tuple[object, ...]:
        return r.deleted, r.ttl_applied, r.skipped, r.skipped_bytes, r.bytes_deleted

    dry = sweep(client, settings, dry_run=True)
    real = sweep(client, settings)
    assert counts(dry) == counts(real)
    assert real.deleted == {"task": 3}


def test_reply_budget_and_cap_mode(client: redis.Redis, settings: config.Settings) -> None:
    """Edges count against the reply budget (the rest go to INSPECT, which returns edges too), and
    cap mode judges big values that have a TTL the same way: stale ones deleted, long TTLs shortened."""
    now = dt.datetime.now(dt.UTC)
    body = "b" * (MB + 10)
    keys = {}
    for i in range(12):
        tid = str(uuid.uuid4())
        when = now - dt.timedelta(days=3 if i % 2 else 0)
        meta = {"status": "SUCCESS", "result": body, "traceback": None, "children": []}
        keys[tid] = f"celery-task-meta-{tid}"
        client.set(keys[tid], dumps(meta | {"date_done": when.isoformat(), "task_id": tid}))
    tight = settings.model_copy(update={"batch_bytes": 64 * 1024})  # room for 8 pairs of edges per reply
    report = sweep(client, tight)
    assert (report.deleted, report.ttl_applied) == ({"task": 6}, {"task": 6})
    for tid in list(keys)[:4]:  # give fresh ones a long TTL, bring stale ones back with one
        meta = {"status": "SUCCESS", "result": body, "traceback": None, "children": []}
        when = now - dt.timedelta(days=3) if client.exists(keys[tid]) == 0 else now
        client.set(keys[tid], dumps(meta | {"date_done": when.isoformat(), "task_id": tid}), ex=30 * 86400)
    capped = sweep(client, tight.model_copy(update={"cap_ttl": True}))
    stale = [tid for tid in list(keys)[:4] if list(keys).index(tid) % 2]
    assert capped.deleted == {"task": len(stale)}
    assert capped.ttl_capped == {"task": 4 - len(stale)}
    assert sweep(client, tight.model_copy(update={"cap_ttl": True})).ttl_capped == {}


@pytest.mark.parametrize("extended", [False, True])
def test_results_of_a_real_worker(
    client: redis.Redis, settings: config.Settings, reply_bytes: list[int], extended: bool
) -> None:
    """10 MB results written by a real `celery worker` (with and without result_extended), one ending in
    text that mimics Celery's own tail: fresh ones get their TTL; once backdated in place (SETRANGE on
    the date_done digits, the rest of Celery's bytes untouched) they are deleted."""
    app = big_app.make_app(settings.redis_url, extended=extended)
    env = os.environ | {"BIG_APP_URL": settings.redis_url, "BIG_APP_EXTENDED": "1" if extended else ""}
    args = [sys.executable, "-m", "celery", "-A", "tests.big_app", "worker", "-P", "solo", "-Q", big_app.QUEUE]
    args += ["-l", "warning", "--without-mingle", "--without-gossip", "--without-heartbeat"]
    worker = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        results = [app.send_task("big.report", (10,)), app.send_task("big.report", (10, FAKES[0]))]
        assert [r.get(timeout=120) is not None for r in results] == [True, True]
    finally:
        worker.terminate()
        worker.wait(30)
    keys = [app.backend.get_key_for_task(r.id) for r in results]
    report = sweep(client, settings)
    assert report.ttl_applied == {"task": 2}
    assert all(settings.result_ttl - 120 < client.ttl(k) <= settings.result_ttl for k in keys)
    for key in keys:
        client.persist(key)
        tail = client.getrange(key, -4096, -1)
        at = tail.rindex(b'"date_done": "') + len(b'"date_done": "')
        client.setrange(key, client.strlen(key) - len(tail) + at, b"2020")  # the year: four digits, same length
    report = sweep(client, settings)
    assert report.deleted == {"task": 2}
    assert client.exists(*keys) == 0
    assert sum(reply_bytes) < 8 * 2 * payload.EDGE_BYTES + 8192
