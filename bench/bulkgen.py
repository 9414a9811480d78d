"""A fast bulk writer of a dirty Celery result keyspace, in Celery's exact formats.

Values are built from templates made once per status with
:func:`janitor.dev.demo.task_meta` and :func:`janitor.dev.demo.encode` (so field order,
separators and escaping are Celery's JSON serializer's), then only the task id
and ``date_done`` are spliced in per key. The first keys are re-encoded the slow
way and compared byte for byte, so a template drift fails loudly. Keys go to the
server as raw RESP ``MSET`` commands of 1000 pairs over one socket, pipelined,
so a million keys take seconds and the generator holds one chunk in memory.

The same ``seed`` gives the same keys in the same order, and a smaller
``results`` gives a prefix of a bigger run's result keys.
"""

from __future__ import annotations

import collections
import datetime as dt
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from janitor.celery_model.keyspace import TASK_PREFIX
from janitor.dev import demo

READY = demo.READY  # SUCCESS x4, FAILURE, REVOKED: what demo.fill uses
NOT_READY = ("STARTED", "RETRY", "PROGRESS")
_TID = "@@TID@@"
_DONE = "@@DONE@@"
_CHECKED = 500  # keys re-encoded with demo.encode and compared byte for byte


@dataclass(frozen=True)
class Spec:
    """What to write. Ages: ``fresh_ratio`` of the ready results are under a day
    old, the rest spread evenly over 1..``max_age_days`` days, so with Celery's
    defaults (1 day for results, 7 for failures) about half the result keys are
    due for deletion and the rest get a TTL."""

    results: int
    other_ratio: float = 0.2
    ready_ratio: float = 0.85
    fresh_ratio: float = 0.4
    naive_ratio: float = 0.2  # celery <= 5.3 wrote date_done without a UTC offset
    max_age_days: float = 14.0
    seed: int = 7


def _templates() -> dict[str, tuple[bytes, ...]]:
    out: dict[str, tuple[bytes, ...]] = {}
    for status in (*READY, *NOT_READY):
        meta = demo.task_meta(_TID, status, None)
        if status in READY:
            meta["date_done"] = _DONE
        body = demo.encode(meta, "json")
        if status in READY:
            head, rest = body.split(_DONE.encode())
            mid, tail = rest.split(_TID.encode())
            out[status] = (head, mid, tail)
        else:
            head, tail = body.split(_TID.encode())
            out[status] = (head, tail)
    return out


def _uuid4(bits: int) -> str:
    """``str(uuid.UUID(int=bits, version=4))`` without building a UUID object."""
    bits &= ~(0xC000 << 48)
    bits |= 0x8000 << 48
    bits &= ~(0xF000 << 64)
    bits |= 4 << 76
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def pairs(spec: Spec, now: dt.datetime, stats: collections.Counter[str]) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of the keyspace: the result keys, then the non-Celery keys."""
    rng = random.Random(spec.seed)
    templates = _templates()
    day = 86400.0
    span = (spec.max_age_days - 1) * day
    now_ts = now.timestamp()
    utc = dt.UTC
    getrandbits, rand, choice = rng.getrandbits, rng.random, rng.choice
    for i in range(spec.results):
        tid = _uuid4(getrandbits(128))
        key = TASK_PREFIX + tid.encode()
        if rand() < spec.ready_ratio:
            status = choice(READY)
            age = rand() * day if rand() < spec.fresh_ratio else day + rand() * span
            done = dt.datetime.fromtimestamp(now_ts - age, utc)
            naive = rand() < spec.naive_ratio
            iso = (done.replace(tzinfo=None) if naive else done).isoformat().encode()
            head, mid, tail = templates[status]
            value = head + iso + mid + tid.encode() + tail
            if i < _CHECKED:
                _check(value, demo.task_meta(tid, status, done, naive=naive))
        else:
            status = choice(NOT_READY)
            head, tail = templates[status]
            value = head + tid.encode() + tail
            if i < _CHECKED:
                _check(value, demo.task_meta(tid, status, None))
        stats[status] += 1
        yield key, value
    other = random.Random(spec.seed + 1)
    for i in range(int(spec.results * spec.other_ratio)):
        stats["other"] += 1
        yield f"app:session:{i}".encode(), b"x" * other.randint(10, 200)


def _check(value: bytes, meta: dict[str, object]) -> None:
    expected = demo.encode(meta, "json")
    if value != expected:
        raise AssertionError(f"template drift: {value!r} != {expected!r}")


def write(port: int, spec: Spec, now: dt.datetime, *, host: str = "127.0.0.1") -> collections.Counter[str]:
    """Write the keyspace with pipelined raw MSETs; returns keys written per status (and 'other')."""
    stats: collections.Counter[str] = collections.Counter()
    chunk, pending = 1000, 0
    with socket.create_connection((host, port)) as sock:
        parts: list[bytes] = []
        n = 0

        def flush() -> None:
            nonlocal parts, n, pending
            if n:
                sock.sendall(b"*%d\r\n$4\r\nMSET\r\n%b" % (2 * n + 1, b"".join(parts)))
                parts, n, pending = [], 0, pending + 1
            if pending >= 16:
                _drain(sock, pending)
                pending = 0

        for key, value in pairs(spec, now, stats):
            parts.append(b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(key), key, len(value), value))
            n += 1
            if n >= chunk:
                flush()
        flush()
        _drain(sock, pending)
    return stats


def _drain(sock: socket.socket, replies: int) -> None:
    want = b"+OK\r\n" * replies
    got = b""
    while len(got) < len(want):
        data = sock.recv(len(want) - len(got))
        if not data:
            raise ConnectionError("server closed the connection during the bulk write")
        got += data
    if got != want:
        raise RuntimeError(f"bulk write failed: {got[:200]!r}")
