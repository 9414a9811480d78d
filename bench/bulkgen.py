"""A fast bulk writer of a dirty Celery result keyspace, in Celery's exact formats.

Values are built from templates made once per status with
:func:`janitor.dev.demo.task_meta` and :func:`janitor.dev.demo.encode` (so field order,
separators and escaping are Celery's JSON serializer's), then only the task id
and ``date_done`` are spliced in per key. The first keys are re-encoded the slow
way and compared byte for byte, so a template drift fails loudly. Keys go to the
server as raw RESP ``MSET`` commands of 1000 pairs over one socket, pipelined,
so a million keys take seconds and the generator holds one chunk in memory.

Two keyspaces (``Spec.keyspace``):

``realistic`` (the default): what Celery 5.7 workers write, made with Celery's own backend
(``Backend._get_result_meta`` and ``encode``, as ``_store_result`` and ``_save_group`` call
them): plain results, ``result_extended`` results (name, args, kwargs, worker, retries,
queue), FAILUREs with ``exc_type``/``exc_message``/``exc_module`` and 2-8 KB tracebacks,
REVOKED, STARTED and RETRY, group and chord members, parents with children, saved groups
(``celery-taskset-meta-*``) and a few pickle results (see ``SHARES``). 30% of the ready
results are under a day old, the rest 1 to 30 days, so about two thirds are past retention
with the default TTLs. Per shape, ``VARIANTS`` templates are drawn once; each key splices
its id and ``date_done`` into one of them.

``plain``: ``janitor.dev.demo.task_meta`` results with a tiny payload (85% ready, 40% under a
day old, the rest 1 to 14 days, 20% with a naive ``date_done``, 15% not ready).

The same ``seed`` gives the same keys in the same order, and a smaller
``results`` gives a prefix of a bigger run's result keys.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import random
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.app.task import Context
from celery.exceptions import Retry, SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded
from celery.result import AsyncResult, GroupResult

from janitor.celery_model.keyspace import GROUP_PREFIX, TASK_PREFIX
from janitor.dev import demo

KEYSPACES = ("realistic", "plain")
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
    keyspace: str = "realistic"  # or "plain" (see the module's docstring)


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
    if spec.keyspace not in KEYSPACES:
        raise ValueError(f"keyspace {spec.keyspace!r}: choose from {', '.join(KEYSPACES)}")
    yield from (_realistic if spec.keyspace == "realistic" else _plain)(spec, now, stats)
    other = random.Random(spec.seed + 1)
    for i in range(int(spec.results * spec.other_ratio)):
        stats["other"] += 1
        yield f"app:session:{i}".encode(), b"x" * other.randint(10, 200)


def _plain(spec: Spec, now: dt.datetime, stats: collections.Counter[str]) -> Iterator[tuple[bytes, bytes]]:
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


# -- the realistic keyspace ------------------------------------------------------------------
# Shares of the result keys, per shape (the status counters name them).
SHARES: dict[str, float] = {
    "success": 0.50,  # a plain app's results: numbers, strings, small dicts and lists
    "extended": 0.20,  # result_extended: name, args, kwargs, worker, retries, queue
    "failure": 0.12,  # exc_type/exc_message/exc_module, a 2-8 KB traceback; a third extended
    "chord": 0.05,  # group/chord members (group_id, parent_id) and parents with children
    "group": 0.05,  # celery-taskset-meta-<gid>: a saved GroupResult
    "pending": 0.045,  # STARTED (task_track_started) and RETRY (with its traceback)
    "revoked": 0.03,  # TaskRevokedError, no traceback
    "pickle": 0.005,  # result_serializer="pickle": a few apps still write it
}
VARIANTS = 48  # templates drawn per shape
# Placeholders as long as what replaces them (a uuid; date_done with microseconds and +00:00),
# so pickle's length prefixes stay right.
_TID36 = "@@TID@@" + "@" * 29
_DONE32 = "@@DONE@@" + "@" * 24
_TASKS = (
    "billing.tasks.sync_invoice",
    "billing.tasks.charge_subscription",
    "reports.tasks.render_pdf",
    "emails.tasks.send_digest",
    "etl.tasks.load_batch",
    "search.tasks.reindex_document",
    "media.tasks.transcode_video",
    "users.tasks.export_account_data",
)
_QUEUES = ("celery", "default", "billing", "reports", "etl", "media")
_FRAMES = (
    (
        "/usr/local/lib/python3.12/site-packages/celery/app/trace.py",
        453,
        "trace_task",
        "R = retval = fun(*args, **kwargs)",
    ),
    (
        "/usr/local/lib/python3.12/site-packages/celery/app/trace.py",
        736,
        "__protected_call__",
        "return self.run(*args, **kwargs)",
    ),
    (
        "/app/src/billing/tasks.py",
        88,
        "sync_invoice",
        "invoice = client.invoices.retrieve(invoice_id, expand=['lines'])",
    ),
    (
        "/app/src/billing/client.py",
        214,
        "retrieve",
        "return self._request('GET', f'/v1/invoices/{invoice_id}', params=params)",
    ),
    (
        "/usr/local/lib/python3.12/site-packages/requests/sessions.py",
        589,
        "request",
        "resp = self.send(prep, **send_kwargs)",
    ),
    (
        "/usr/local/lib/python3.12/site-packages/requests/sessions.py",
        703,
        "send",
        "r = adapter.send(request, **kwargs)",
    ),
    (
        "/usr/local/lib/python3.12/site-packages/requests/adapters.py",
        700,
        "send",
        "raise ConnectionError(e, request=request)",
    ),
    (
        "/usr/local/lib/python3.12/site-packages/urllib3/connectionpool.py",
        843,
        "urlopen",
        "retries = retries.increment(",
    ),
    (
        "/usr/local/lib/python3.12/site-packages/sqlalchemy/engine/base.py",
        1967,
        "_exec_single_context",
        "self.dialect.do_execute(",
    ),
    (
        "/usr/local/lib/python3.12/site-packages/sqlalchemy/engine/default.py",
        941,
        "do_execute",
        "cursor.execute(statement, parameters)",
    ),
    ("/app/src/etl/loader.py", 131, "load_batch", 'rows = [self.transform(r) for r in batch if r.get("id")]'),
    ("/app/src/reports/render.py", 57, "render_pdf", "html = template.render(report=report, locale=locale)"),
    (
        "/usr/local/lib/python3.12/site-packages/jinja2/environment.py",
        1304,
        "render",
        "self.environment.handle_exception()",
    ),
    (
        "/usr/local/lib/python3.12/site-packages/kombu/connection.py",
        476,
        "_reraise_as_library_errors",
        "raise ConnectionError(str(exc)) from exc",
    ),
)
_ERRORS: tuple[Callable[[random.Random], BaseException], ...] = (
    lambda r: ConnectionError(
        "HTTPSConnectionPool(host='api.example.com', port=443): Max retries exceeded with url: "
        f"/v1/invoices/in_{r.getrandbits(40):x}"
    ),
    lambda r: ValueError(f"invalid literal for int() with base 10: 'N/A' (row {r.randint(1, 90000)})"),
    lambda r: KeyError("customer_id"),
    lambda r: TimeoutError("timed out"),
    lambda r: json.JSONDecodeError("Expecting value", '{"a": }', 6),
    lambda r: SoftTimeLimitExceeded("SoftTimeLimitExceeded()"),
    lambda r: TimeLimitExceeded(300.0),
    lambda r: RuntimeError("l\u00e4uft nicht: Verbindung abgebrochen"),
)


def _traceback(rng: random.Random, size: int, exc: BaseException) -> str:
    """A Python 3.12 traceback of about ``size`` characters, as Celery stores ``einfo.traceback``."""
    lines = ["Traceback (most recent call last):"]
    frames = list(_FRAMES[:2])
    while sum(len(f[0]) + len(f[2]) + 2 * len(f[3]) + 30 for f in frames) < size:
        frames.append(rng.choice(_FRAMES[2:]))
    for path, line, func, code in frames:
        lines.append(f'  File "{path}", line {line + rng.randint(0, 40)}, in {func}')
        lines.append(f"    {code}")
        if rng.random() < 0.6:
            lines.append("    " + " " * rng.randint(0, 8) + "^" * min(len(code), rng.randint(8, 60)))
    lines.append(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}".removeprefix("builtins."))
    return "\n".join(lines) + "\n"


def _args(rng: random.Random) -> tuple[list[Any], dict[str, Any]]:
    """What real task signatures carry: ids, flags, dates, a few floats, now and then a long id list."""
    args: list[Any] = [rng.randint(1, 10**7), str(_uuid4(rng.getrandbits(128)))]
    kwargs: dict[str, Any] = {"user_id": rng.randint(1, 10**6), "locale": rng.choice(["en_US", "de_DE", "fr_FR"])}
    if rng.random() < 0.5:
        kwargs["since"] = "2026-11-01T00:00:00+00:00"
        kwargs["ratio"] = round(rng.random(), 3)
        kwargs["options"] = {"dry_run": False, "notify": True, "tags": ["nightly", "eu"]}
    if rng.random() < 0.15:
        args.append([rng.randint(1, 10**6) for _ in range(rng.randint(50, 300))])
    return args, kwargs


class _Realistic:
    """Celery's own encoder for each shape; ``variant()`` returns the arguments of one template."""

    def __init__(self) -> None:
        # Never connects: only _get_result_meta and encode, which RedisBackend inherits, run.
        self.plain = Celery("bench", backend="redis://127.0.0.1:1/0", set_as_current=False)
        self.extended = Celery("bench", backend="redis://127.0.0.1:1/0", set_as_current=False)
        self.extended.conf.result_extended = True
        self.pickled = Celery("bench", backend="redis://127.0.0.1:1/0", set_as_current=False)
        self.pickled.conf.result_serializer = "pickle"
        self.pickled.conf.accept_content = ["json", "pickle"]
        # Children and groups as result objects (a memory backend: a GroupResult on a redis
        # backend would subscribe to its members).
        self.memory = Celery("bench-children", backend="cache+memory://", set_as_current=False)

    def variant(self, shape: str, rng: random.Random) -> dict[str, Any]:
        def uid() -> str:
            return _uuid4(rng.getrandbits(128))

        extended = shape == "extended" or (shape in {"failure", "chord", "pending"} and rng.random() < 0.4)
        args, kwargs = _args(rng)
        request: dict[str, Any] = {
            "task": rng.choice(_TASKS),
            "args": args,
            "kwargs": kwargs,
            "hostname": f"celery@worker-{rng.randint(1, 12)}.prod-{rng.getrandbits(20):05x}",
            "retries": rng.choice([0, 0, 0, 1, 2, 3]),
            "delivery_info": {"routing_key": rng.choice(_QUEUES), "exchange": "", "priority": 0},
        }
        out: dict[str, Any] = {"shape": shape, "app": "extended" if extended else "plain", "request": request}
        if shape in {"success", "extended", "pickle"}:
            out["state"], out["result"], out["tb"] = "SUCCESS", self._result(rng), None
        elif shape in {"failure", "pending"} and (shape == "failure" or rng.random() < 0.5):
            exc = rng.choice(_ERRORS)(rng)
            state = "FAILURE" if shape == "failure" else "RETRY"
            result = exc if state == "FAILURE" else Retry(f"Retry in {rng.randint(5, 600)}s: {exc!r}", exc=exc)
            out["state"], out["result"] = state, self.plain.backend.prepare_exception(result)
            out["tb"] = _traceback(rng, rng.randint(2048, 8192), exc)
        elif shape == "pending":
            out["state"], out["result"], out["tb"] = (
                "STARTED",
                {"pid": rng.randint(7, 99999), "hostname": request["hostname"]},
                None,
            )
        elif shape == "revoked":
            out["state"], out["tb"] = "REVOKED", None
            out["result"] = self.plain.backend.prepare_exception(
                TaskRevokedError(rng.choice(["revoked", "terminated", "expired"]))
            )
        elif shape == "chord":
            out["state"], out["result"], out["tb"] = "SUCCESS", self._result(rng), None
            request["group"], request["parent_id"] = uid(), uid()
            if rng.random() < 0.5:  # a parent: the group or chord it started, or single children
                if rng.random() < 0.5:
                    members = [AsyncResult(uid(), app=self.memory) for _ in range(rng.randint(2, 20))]
                    request["children"] = [GroupResult(uid(), members, app=self.memory)]
                else:
                    request["children"] = [AsyncResult(uid(), app=self.memory) for _ in range(rng.randint(1, 3))]
        elif shape == "group":
            out["members"] = [uid() for _ in range(rng.randint(2, 50))]
        if shape == "pickle":
            out["app"] = "pickle"
        return out

    @staticmethod
    def _result(rng: random.Random) -> Any:
        return rng.choice(
            [
                None,
                rng.randint(0, 10**6),
                f"s3://exports/{rng.getrandbits(32):08x}.csv",
                {"rows": rng.randint(0, 10**5), "took": round(rng.random() * 30, 3), "status": "ok"},
                [rng.randint(0, 100) for _ in range(rng.randint(1, 20))],
                {"sent": rng.randint(0, 500), "failed": [], "batch": _uuid4(rng.getrandbits(128))},
            ]
        )

    def encode(self, v: dict[str, Any], tid: str, done: str) -> bytes:
        """The bytes Celery stores for this variant under ``tid`` (a group id for groups), finished at ``done``."""
        if v["shape"] == "group":
            members = [AsyncResult(m, app=self.memory) for m in v["members"]]
            backend = self.plain.backend
            return bytes(backend.encode({"result": GroupResult(tid, members, app=self.memory).as_tuple()}).encode())
        app = {"plain": self.plain, "extended": self.extended, "pickle": self.pickled}[v["app"]]
        fields = dict(v["request"])
        children = fields.pop("children", [])
        request = Context(**fields)
        request.children.extend(children)  # as Task.apply_async appends them while the task runs
        meta = app.backend._get_result_meta(v["result"], v["state"], v["tb"], request)
        if meta["date_done"] is not None:
            meta["date_done"] = done
        meta["task_id"] = tid
        raw = app.backend.encode(meta)
        return raw if isinstance(raw, bytes) else raw.encode()


def _realistic(spec: Spec, now: dt.datetime, stats: collections.Counter[str]) -> Iterator[tuple[bytes, bytes]]:
    rng = random.Random(spec.seed)
    celery = _Realistic()
    shapes = list(SHARES)
    variants = {s: [celery.variant(s, rng) for _ in range(VARIANTS)] for s in shapes}
    templates: dict[str, list[list[bytes]]] = {}
    for s in shapes:
        templates[s] = []
        for v in variants[s]:
            templates[s].append(_pieces(celery.encode(v, _TID36, _DONE32)))
    weights = [SHARES[s] for s in shapes]
    day, now_ts, utc = 86400.0, now.timestamp(), dt.UTC
    getrandbits, rand, choices, randrange = rng.getrandbits, rng.random, rng.choices, rng.randrange
    for i in range(spec.results):
        shape = choices(shapes, weights)[0]
        which = randrange(VARIANTS)
        tid = _uuid4(getrandbits(128))
        age = rand() * day if rand() < 0.3 else day + rand() * 29 * day
        done_dt = dt.datetime.fromtimestamp(now_ts - age, utc)
        if not done_dt.microsecond:
            done_dt = done_dt.replace(microsecond=1)
        done = done_dt.isoformat()
        pieces = templates[shape][which]
        value = pieces[0]
        for sep, piece in zip(pieces[1::2], pieces[2::2], strict=True):
            value += (tid.encode() if sep == b"T" else done.encode()) + piece
        if i < _CHECKED:
            expected = celery.encode(variants[shape][which], tid, done)
            if value != expected:
                raise AssertionError(f"template drift ({shape}): {value!r} != {expected!r}")
        stats[shape] += 1
        yield (GROUP_PREFIX if shape == "group" else TASK_PREFIX) + tid.encode(), value


def _pieces(body: bytes) -> list[bytes]:
    """``body`` split at its placeholders: text, b"T" or b"D", text, ... (T: the id, D: date_done)."""
    out: list[bytes] = []
    rest = body
    while True:
        t, d = rest.find(_TID36.encode()), rest.find(_DONE32.encode())
        at = min(x for x in (t, d, len(rest)) if x >= 0)
        out.append(rest[:at])
        if at == len(rest):
            return out
        out.append(b"T" if at == t else b"D")
        rest = rest[at + (len(_TID36) if at == t else len(_DONE32)) :]


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
