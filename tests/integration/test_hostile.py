"""Hostile keyspaces on real servers: the janitor deletes and expires exactly what the rules name.

Hypothesis draws the mix; each example writes a few thousand keys, each built
with a known ground truth (delete / give a TTL / leave alone) that does not
come from the janitor's own rules, then checks a real sweep against it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pickle
import random
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
import redis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from janitor import config
from janitor.dev.demo import encode, task_meta
from janitor.operations.sweep import sweep

KEYS_PER_EXAMPLE = 2500
EXAMPLES = 20
DAY = 86400
TOLERANCE_MS = 10_000
GENERATED = {"keys": 0}
BOMB = b"\x00celery-compressed\x00application/x-gzip\x00" + zlib.compress(b"{" + b" " * (8 << 20))
HUGE = b"x" * (1024 * 1024 + 10)  # over max_value_bytes
DEEP = b"[" * 50_000 + b"]" * 50_000
DEEP_YAML = b"status: SUCCESS\nresult: " + b"[" * 5_000 + b"]" * 5_000


@dataclass
class Expect:
    """What may happen to a key: 'delete', 'ttl' (to about ttl_ms), or 'keep'."""

    fate: str
    ttl_ms: int = 0


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _date(rng: random.Random, when: dt.datetime) -> str:
    """date_done in one of Celery's historical formats."""
    style = rng.randrange(4)
    if style == 0:
        return when.replace(tzinfo=None).isoformat()
    if style == 1:
        return when.isoformat()
    offset = dt.timezone(dt.timedelta(minutes=rng.choice([-300, 60, 330, 840])))
    return when.astimezone(offset).isoformat()


def _valid_result(rng: random.Random, now: dt.datetime, marker: Path) -> tuple[bytes, bytes, Expect]:
    tid = str(uuid.UUID(int=rng.getrandbits(128)))
    key = f"celery-task-meta-{tid}".encode()
    status = rng.choice(["SUCCESS", "FAILURE", "REVOKED", "STARTED", "RETRY", "PROGRESS", "PENDING", "ABORTED"])
    if status not in {"SUCCESS", "FAILURE", "REVOKED"}:
        meta = task_meta(tid, status, None)
        expect = Expect("ttl", 7 * DAY * 1000)
    else:
        retention = 7 * DAY if status == "FAILURE" else DAY
        age = rng.choice([rng.uniform(60, retention - 120), rng.uniform(retention + 120, 60 * DAY)])
        meta = task_meta(tid, status, None)
        meta["date_done"] = _date(rng, now - dt.timedelta(seconds=age))
        expect = Expect("delete") if age > retention else Expect("ttl", int((retention - age) * 1000))
    if rng.random() < 0.3:
        del meta["task_id"]  # Celery < 4 did not store it
    serializer = rng.choice(["json", "json", "pickle", "msgpack", "yaml", "gzip"])
    if serializer == "pickle" and rng.random() < 0.5:
        meta["result"] = _Evil(marker)  # would run a command if ever unpickled
    return key, encode(meta, serializer), expect


def _odd_string(rng: random.Random, now: dt.datetime) -> tuple[bytes, bytes]:
    """A value under a valid result name that the janitor must not act on."""
    tid = str(uuid.uuid4())
    key = f"celery-task-meta-{tid}".encode()
    good = json.dumps(task_meta(tid, "SUCCESS", now - dt.timedelta(days=30))).encode()
    choice = rng.randrange(12)
    values = [
        good[: rng.randrange(1, len(good) - 1)],  # truncated JSON
        json.dumps(task_meta(tid, "SUCCESS", now + dt.timedelta(days=3))).encode(),  # date_done in the future
        good.replace(b'"date_done": "', b'"date_done": "nonsense'),
        json.dumps({**task_meta(tid, "SUCCESS", None), "date_done": 1700000000}).encode(),
        json.dumps(task_meta("someone-else", "SUCCESS", now - dt.timedelta(days=30))).encode(),  # id mismatch
        json.dumps({**task_meta(tid, "SUCCESS", now - dt.timedelta(days=30)), "status": "DELETE ME"}).encode(),
        b"!!python/object/apply:os.system ['true']\nstatus: SUCCESS\n",
        BOMB,
        HUGE,
        rng.randbytes(rng.randrange(1, 200)),
        rng.choice([DEEP, DEEP_YAML]),
        msgpack.packb({"status": "SUCCESS"}),
    ]
    return key, values[choice]


def _odd_name(rng: random.Random) -> bytes:
    tail = rng.choice([b"", b"*", b"a?b", b"[x]", b"a\nb", b"\xff\xfe", b"\x00", b"x" * 300, b"celery-task-meta-"])
    return rng.choice([b"celery-task-meta-", b"celery-taskset-meta-", b"app:celery-task-meta-"]) + tail


def build(rng: random.Random, client: redis.Redis, now: dt.datetime, marker: Path) -> dict[bytes, Expect]:
    """Write KEYS_PER_EXAMPLE keys and return each key's ground truth."""
    truth: dict[bytes, Expect] = {}
    pipe = client.pipeline(transaction=False)
    while len(truth) < KEYS_PER_EXAMPLE:
        roll = rng.random()
        if roll < 0.45:
            key, value, expect = _valid_result(rng, now, marker)
            if rng.random() < 0.15:
                pipe.set(key, value, px=rng.randrange(60_000, 30 * DAY * 1000))
                expect = Expect("keep")  # already expiring: never touched (cap mode off)
            else:
                pipe.set(key, value)
        elif roll < 0.60:
            key, value = _odd_string(rng, now)
            pipe.set(key, value)
            expect = Expect("keep")
        elif roll < 0.70:
            key, expect = _odd_name(rng), Expect("keep")
            pipe.set(key, b'{"status": "SUCCESS", "result": 1, "date_done": "2001-01-01T00:00:00"}')
        elif roll < 0.80:
            tid = uuid.uuid4().hex.encode()
            key, expect = rng.choice([b"celery-task-meta-", b"celery-taskset-meta-"]) + tid, Expect("keep")
            getattr(pipe, rng.choice(["rpush", "sadd"]))(key, b"x")  # wrong type under a result/group name
        elif roll < 0.88:
            gid = str(uuid.uuid4()).encode()
            suffix = rng.choice([b".j", b".d", b".s", b".c", b""])
            key = b"celery-taskset-meta-" + gid + suffix
            if suffix == b".j":
                pipe.zadd(key, {b"[1]": 0})
            elif suffix == b".d":
                pipe.sadd(key, b"t:0")
            elif suffix == b".s":
                pipe.set(key, b"3")
            elif suffix == b".c":
                pipe.set(key, b"done")
            else:
                pipe.set(key, json.dumps({"result": [[["a", None], None]]}))
            expect = Expect("keep") if suffix == b".c" else Expect("ttl", DAY * 1000)
        else:
            key, expect = (
                rng.choice([b"celery", b"unacked", b"_kombu.binding.celery", b"user:"]) + os.urandom(6),
                Expect("keep"),
            )
            pipe.set(key, pickle.dumps({"status": "SUCCESS"}))
        if key in truth:
            continue
        truth[key] = expect
    pipe.execute()
    return truth


class TestHostileKeyspaces:
    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
        # a seed has no structure to shrink; re-running the failing seed is the repro
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
    )
    @given(seed=st.integers(0, 2**32 - 1), scan_count=st.sampled_from([10, 97, 1000]), erratic=st.booleans())
    def test_only_what_the_rules_name_changes(
        self,
        client: redis.Redis,
        settings: config.Settings,
        tmp_path: Path,
        *,
        seed: int,
        scan_count: int,
        erratic: bool,
    ) -> None:
        """Across generated hostile keyspaces nothing outside the rules is deleted, expired or rewritten,
        and everything they name is done. ``erratic``: calls seem to take anything from 0.1 to 50 ms,
        so batch sizes jump between their floor and ceiling from one call to the next."""
        client.flushall()
        marker = tmp_path / f"pwned-{seed}"
        now = dt.datetime.now(dt.UTC)
        rng = random.Random(seed)
        truth = build(rng, client, now, marker)
        GENERATED["keys"] += len(truth)
        before = {k: (client.dump(k), client.pttl(k)) for k in truth}
        timer = _erratic(rng) if erratic else time.perf_counter
        report = sweep(client, settings.model_copy(update={"scan_count": scan_count}), timer=timer)
        assert report.completed
        assert not marker.exists(), "a pickle was executed"
        for key, expect in truth.items():
            dump, pttl = client.dump(key), client.pttl(key)
            if expect.fate == "delete":
                assert dump is None, key
            elif expect.fate == "ttl":
                assert dump == before[key][0], key
                assert abs(pttl - expect.ttl_ms) < TOLERANCE_MS, (key, pttl, expect)
            else:
                assert dump == before[key][0], key
                old = before[key][1]
                assert (pttl == -1) if old == -1 else (0 <= old - pttl < TOLERANCE_MS), (key, old, pttl)
        deleted = sum(1 for e in truth.values() if e.fate == "delete")
        assert sum(report.deleted.values()) == deleted
        assert report.raced == 0


def _erratic(rng: random.Random) -> Callable[[], float]:
    """A timer by which each call takes 0.1, 2 or 50 ms, at random."""
    now = [0.0]

    def timer() -> float:
        now[0] += rng.choice([0.0001, 0.002, 0.05]) / 2
        return now[0]

    return timer


@pytest.fixture(scope="module", autouse=True)
def _report_count(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print how many generated keys this run tried, in the run's own output (CI's log)."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capman is not None:
        with capman.global_and_fixture_disabled():
            reporter.write_line(f"\nhostile keyspaces: {GENERATED['keys']:,} generated keys swept")
