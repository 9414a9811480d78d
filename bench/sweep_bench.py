"""What one result sweep costs, next to the physical limit and to what users write today.

One process, one private server (janitor.dev.embedded), synthetic keyspaces in
Celery's exact formats (bench.bulkgen): ``--keys`` result keys, no TTL, plus 20%
non-Celery keys. ``--keyspace realistic`` (the default) is what Celery 5.7 workers
write: result_extended results, FAILUREs with 2-8 KB tracebacks, groups and chords,
a few pickles, two thirds past retention; ``plain`` is tiny JSON results with
date_done spread over 14 days; ``realistic,plain`` prints one table for each. Each
keyspace is written once, saved to an RDB file, and every row starts from FLUSHALL +
DEBUG RELOAD of that file, so each row sees the same bytes. All rows decide with the
same fixed "now" (the time of generation).

Rows:
  scan        ceiling A: bare SCAN MATCH '*celery*' COUNT 1000, nothing else
  lua         ceiling B: one hand-written Lua call per SCAN page (SCAN inside the
              script, cjson.decode, date_done parsed in Lua, PEXPIRE/UNLINK; task
              results and saved groups, no certainty checks)
  lua_paced   ceiling B with its COUNT sized by the janitor's pacer: the latency guard's
              price alone (not a target; the targets are against ceiling B)
  janitor1    janitor.operations.sweep.sweep, default settings, dirty keyspace
  janitor2    the same again on the now-clean keyspace
  pipeline    same decisions (rules.decide) with one non-transactional pipeline per
              page: TYPE/PTTL/GET per key, then PEXPIRE/UNLINK per key
  naive_keys  KEYS celery-task-meta-*, then GET, TTL, EXPIRE|DEL per key (round trips)
  naive_scan  SCAN MATCH celery-task-meta-*, then the same per-key round trips
The naive rows run on ``--naive-keys`` result keys (default: a fifth of ``--keys``,
at most 100000; they do three round trips per key); their wall time for the full
size is extrapolated per key and marked with '~'.

Columns: keys/s (Celery keys scanned per wall second), Redis CPU seconds per 1M
keys (INFO used_cpu_user+used_cpu_sys delta, all server threads), commands per
key sent by the client (janitor: report.tally; the others: counted here), server
commands per key from INFO commandstats (includes calls made inside Lua; the
client counts are cross-checked against it: 'xchk'), peak RSS of this process
during the row (sampled every 5 ms), p99/max latency of a GET every 1 ms from a
separate process, and the longest command in SLOWLOG during the row.

    python bench/sweep_bench.py --keys 100000
    python bench/sweep_bench.py                      # 1M keys, about 6 minutes
    python bench/sweep_bench.py --keys 1000000 --rows lua,janitor1,janitor2 --keyspace realistic,plain
    python bench/sweep_bench.py --engine valkey --rows lua,janitor1,janitor2 --json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import datetime as dt
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

if not __package__:  # run as a script: make `janitor` and `bench` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bulkgen
from janitor import config
from janitor.celery_model import payload
from janitor.celery_model.keyspace import SCAN_MATCH, TASK_PREFIX, Kind, Layout
from janitor.config import Settings
from janitor.dev import embedded
from janitor.operations import sweep as results
from janitor.operations.rules import Action, decide
from janitor.redis_io import scripts
from janitor.redis_io.pacing import Pacer
from janitor.redis_io.scripts import Op

ROWS = ("scan", "lua", "lua_paced", "janitor1", "janitor2", "pipeline", "naive_keys", "naive_scan")
NAIVE = ("naive_keys", "naive_scan")
LABELS = {
    "scan": "A  bare SCAN (ceiling A)",
    "lua": "B  Lua per page (ceiling B)",
    "lua_paced": "B' ceiling B, janitor pacing",
    "janitor1": "janitor 1st pass (dirty)",
    "janitor2": "janitor 2nd pass (clean)",
    "pipeline": "pipeline per page (alt)",
    "naive_keys": "naive KEYS + per-key RTT",
    "naive_scan": "naive SCAN + per-key RTT",
}
# Commands the harness itself sends (INFO, SLOWLOG, CONFIG, client handshakes):
# left out of the server-side command count.
HARNESS = {"info", "slowlog", "config", "client", "hello", "ping", "debug", "flushall", "save", "dbsize"}
PROBE_KEY = b"bench:probe"

# Ceiling B: one hand-written Lua call per SCAN page (its KEYS, ARGV and reply at the top of the file).
CEILING_B = scripts.Script("ceiling_b", (Path(__file__).resolve().parent / "ceiling_b.lua").read_text(encoding="utf-8"))


@dataclass
class Work:
    """What a row did: Celery keys scanned, client commands sent, decisions applied."""

    scanned: int = 0
    commands: collections.Counter[str] = field(default_factory=collections.Counter)
    deleted: int = 0
    ttl_set: int = 0
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    name: str
    label: str
    keys: int  # Celery keys in the keyspace the row ran on
    scanned: int
    wall_s: float
    keys_per_s: float
    redis_cpu_s: float
    cpu_s_per_1m: float
    client_cmds: int
    cmds_per_key: float
    server_cmds: int
    server_cmds_per_key: float
    xchk: bool
    rss_peak_mb: float
    rss_delta_mb: float
    probe_p99_ms: float
    probe_max_ms: float
    probe_gets: int
    slow_max_ms: float
    slow_over_guard: int
    deleted: int
    ttl_set: int
    dbsize_after: int
    load1: float
    extrapolated_wall_s: float | None = None
    commands: dict[str, int] = field(default_factory=dict)
    server_commands: dict[str, int] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


# --- the latency probe: a separate process, its own connection, one GET per ms ---


def probe_main(port: int) -> int:
    client = redis.Redis(host="127.0.0.1", port=port)
    client.set(PROBE_KEY, b"x")
    stop = threading.Event()

    def wait_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_eof, daemon=True).start()
    lat = array("d")
    clock = time.perf_counter
    print("ready", flush=True)
    due = clock()
    while not stop.is_set():
        t0 = clock()
        client.get(PROBE_KEY)
        t1 = clock()
        lat.append(t1 - t0)
        due += 0.001
        if due > t1:
            time.sleep(due - t1)
        else:
            due = t1
    ordered = sorted(lat)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0
    print(json.dumps({"gets": len(ordered), "p99_ms": p99 * 1000, "max_ms": (ordered[-1] if ordered else 0) * 1000}))
    return 0


@contextlib.contextmanager
def probe(port: int, out: dict[str, float]) -> Iterator[None]:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--probe", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("latency probe did not start")
        yield
    finally:
        proc.stdin.close()
        line = proc.stdout.read()
        proc.wait(30)
    out.update(json.loads(line))


# --- peak RSS of this process, sampled by a thread ---


class RssPeak:
    PAGE = os.sysconf("SC_PAGE_SIZE")

    def __init__(self, every: float = 0.005) -> None:
        self.every = every
        self.start = self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self.PAGE / 1e6

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


# --- the rows ---


def _bytes(key: bytes | str) -> bytes:
    return key if isinstance(key, bytes) else key.encode()


def scan(client: redis.Redis, cursor: int, match: str, count: int) -> tuple[int, list[bytes]]:
    next_cursor, keys = client.scan(cursor, match=match, count=count)
    return int(next_cursor), [_bytes(k) for k in keys]


def row_scan(client: redis.Redis, settings: Settings, now: dt.datetime) -> Work:
    work = Work()
    cursor = 0
    while True:
        cursor, keys = client.scan(cursor, match=SCAN_MATCH, count=1000)
        work.commands["SCAN"] += 1
        work.scanned += len(keys)
        if cursor == 0:
            return work


def row_lua(client: redis.Redis, settings: Settings, now: dt.datetime, *, paced: bool = False) -> Work:
    """Ceiling B: SCAN COUNT 1000 per call; ``paced``, COUNT sized by the janitor's own pacer
    (janitor.pacing) so each call aims at the same time as the janitor's: the price of the
    latency guard alone, with none of the janitor's certainty checks."""
    work = Work()
    pacer = Pacer(settings.max_batch_ms, settings.scan_count)
    args: list[int | str] = [
        f"{now.timestamp() * 1000:.3f}",
        settings.result_ttl * 1000,
        settings.failure_ttl * 1000,
        settings.pending_ttl * 1000,
        settings.future_tolerance * 1000,
        settings.max_value_bytes,
        settings.group_ttl * 1000,
    ]
    cursor: bytes | int = 0
    while True:
        count = pacer.size if paced else 1000
        started = time.perf_counter()
        cursor, scanned, deleted, expired = client.evalsha(CEILING_B.sha, 0, cursor, count, *args)
        pacer.observe(count, time.perf_counter() - started)
        work.commands["EVALSHA"] += 1
        work.scanned += int(scanned)
        work.deleted += int(deleted)
        work.ttl_set += int(expired)
        if int(cursor) == 0:
            return work


def row_janitor(client: redis.Redis, settings: Settings, now: dt.datetime) -> Work:
    report = results.sweep(client, settings, clock=lambda: now)
    assert report.completed
    return Work(
        scanned=report.scanned,
        commands=collections.Counter(report.tally.commands),
        deleted=sum(report.deleted.values()),
        ttl_set=sum(report.ttl_applied.values()) + sum(report.ttl_capped.values()),
        notes={
            "batches": report.batches,
            "skipped": dict(report.skipped),
            "raced": report.raced,
            "duration_s": round(report.duration_s, 3),
        },
    )


def row_pipeline(client: redis.Redis, settings: Settings, now: dt.datetime) -> Work:
    """The janitor's decisions with plain pipelines: no Lua, no atomic re-check."""
    work = Work()
    layout = Layout.for_prefixes(settings.key_prefix, settings.broker_key_prefix)
    cursor = 0
    while True:
        cursor, keys = scan(client, cursor, SCAN_MATCH, settings.scan_count)
        work.commands["SCAN"] += 1
        work.scanned += len(keys)
        candidates = [(key, *layout.classify(key)) for key in keys]
        candidates = [c for c in candidates if c[1] is not Kind.OTHER]
        if candidates:
            pipe = client.pipeline(transaction=False)
            for key, _, _ in candidates:
                pipe.type(key)
                pipe.pttl(key)
                pipe.get(key)
            replies = pipe.execute(raise_on_error=False)
            for name in ("TYPE", "PTTL", "GET"):
                work.commands[name] += len(candidates)
            act = client.pipeline(transaction=False)
            for i, (key, kind, ident) in enumerate(candidates):
                decision = decide(
                    kind, ident, *_inspected(replies[3 * i : 3 * i + 3], settings), now=now, settings=settings
                )
                if isinstance(decision, Action):
                    _apply(act, key, decision, work)
            if len(act):
                act.execute(raise_on_error=False)
        if cursor == 0:
            return work


def _inspected(reply: list[Any], settings: Settings) -> tuple[str, int, bytes | payload.Edges | None]:
    """TYPE/PTTL/GET replies as INSPECT would have returned them."""
    rtype, pttl, value = reply
    rtype = rtype.decode() if isinstance(rtype, bytes) else str(rtype)
    pttl = int(pttl)
    if pttl != -1 or not isinstance(value, bytes):
        value = None
    elif len(value) > settings.max_value_bytes:
        return rtype, pttl, payload.Edges(len(value), value[: payload.EDGE_BYTES], value[-payload.EDGE_BYTES :])
    return rtype, pttl, value


def _apply(pipe: Any, key: bytes, action: Action, work: Work) -> None:
    if action.deletes:
        pipe.unlink(key)
        work.commands["UNLINK"] += 1
        work.deleted += 1
    else:  # NX / LT keep 'x' and 'c' from overriding a TTL set since the read
        pipe.pexpire(key, action.ms, nx=action.op is Op.SET_TTL, lt=action.op is Op.CAP_TTL)
        work.commands["PEXPIRE"] += 1
        work.ttl_set += 1


def _naive_one(client: redis.Redis, key: bytes, settings: Settings, now: dt.datetime, work: Work) -> None:
    """What a hand-written cleanup does per key: GET, TTL, then EXPIRE or DEL, one round trip each."""
    got = client.get(key)
    value = got.encode() if isinstance(got, str) else got
    ttl = int(client.ttl(key))
    work.commands["GET"] += 1
    work.commands["TTL"] += 1
    pttl = ttl * 1000 if ttl >= 0 else ttl
    rtype = "string" if value is not None else "none"
    decision = decide(Kind.TASK, key[len(TASK_PREFIX) :], rtype, pttl, value, now=now, settings=settings)
    if not isinstance(decision, Action):
        return
    if decision.deletes:
        client.delete(key)
        work.commands["DEL"] += 1
        work.deleted += 1
    else:
        client.expire(key, max(1, decision.ms // 1000))
        work.commands["EXPIRE"] += 1
        work.ttl_set += 1


def row_naive_keys(client: redis.Redis, settings: Settings, now: dt.datetime) -> Work:
    work = Work()
    keys = [_bytes(k) for k in client.keys(TASK_PREFIX.decode() + "*")]
    work.commands["KEYS"] += 1
    work.scanned = len(keys)
    for key in keys:
        _naive_one(client, key, settings, now, work)
    return work


def row_naive_scan(client: redis.Redis, settings: Settings, now: dt.datetime) -> Work:
    work = Work()
    cursor = 0
    while True:
        cursor, keys = scan(client, cursor, TASK_PREFIX.decode() + "*", 1000)
        work.commands["SCAN"] += 1
        work.scanned += len(keys)
        for key in keys:
            _naive_one(client, key, settings, now, work)
        if cursor == 0:
            return work


RUNNERS: dict[str, Callable[[redis.Redis, Settings, dt.datetime], Work]] = {
    "scan": row_scan,
    "lua": row_lua,
    "lua_paced": lambda client, settings, now: row_lua(client, settings, now, paced=True),
    "janitor1": row_janitor,
    "janitor2": row_janitor,
    "pipeline": row_pipeline,
    "naive_keys": row_naive_keys,
    "naive_scan": row_naive_scan,
}


# --- measuring ---


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def pin(client: redis.Redis) -> str:
    """Give the server a CPU of its own and this process (the janitor, the probe it starts) the
    others. SLOWLOG times a call by the wall clock, so a server preempted by the bench's own
    processes would count their time against the call it was running."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "not pinned (one CPU)"
    pid = client.info("server")["process_id"]
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpus[-1]} if int(task.name) == pid else set(cpus[:-1]))
    os.sched_setaffinity(0, set(cpus[:-1]))
    return f"server on CPU {cpus[-1]}, the bench and the janitor on {','.join(map(str, cpus[:-1]))}"


def preemptions(client: redis.Redis) -> int:
    """Times the OS took the CPU from the server's main thread (a call's wall time includes them)."""
    pid = client.info("server")["process_id"]
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("nonvoluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def command_calls(client: redis.Redis) -> collections.Counter[str]:
    """Calls per command since start, harness commands left out."""
    out: collections.Counter[str] = collections.Counter()
    for name, stats in client.info("commandstats").items():
        cmd = name.removeprefix("cmdstat_")
        if cmd.split("|")[0] not in HARNESS:
            out[cmd] = int(stats["calls"])
    return out


def measure(
    name: str, client: redis.Redis, *, port: int, settings: Settings, now: dt.datetime, keys: int, slow_guard_us: int
) -> Row:
    latency: dict[str, float] = {}
    calls0 = command_calls(client)  # before the probe starts: its SET and every GET are subtracted below
    with probe(port, latency):
        client.slowlog_reset()
        cpu0, preempted0 = redis_cpu(client), preemptions(client)
        with RssPeak() as rss:
            t0 = time.perf_counter()
            work = RUNNERS[name](client, settings, now)
            wall = time.perf_counter() - t0
        cpu = redis_cpu(client) - cpu0
        preempted = preemptions(client) - preempted0
    calls = command_calls(client) - calls0
    calls["get"] -= int(latency["gets"])
    calls["set"] -= 1
    server = {k: v for k, v in calls.items() if v > 0}
    slow = client.slowlog_get(10_000)
    slow_us = [int(e["duration"]) for e in slow if _slow_cmd(e) not in HARNESS]
    over = [e for e in slow if _slow_cmd(e) not in HARNESS and int(e["duration"]) > slow_guard_us]
    work.notes["over_guard"] = [(round(int(e["duration"]) / 1000, 2), _slow_args(e)) for e in over[:20]]
    work.notes["server_preempted"] = preempted
    work.notes["over_slowlog_threshold"] = len(slow_us)
    client_cmds = sum(work.commands.values())
    xchk = all(server.get(cmd.lower().replace(" ", "|"), 0) == n for cmd, n in work.commands.items())
    scanned = max(work.scanned, 1)
    return Row(
        name=name,
        label=LABELS[name],
        keys=keys,
        scanned=work.scanned,
        wall_s=wall,
        keys_per_s=work.scanned / wall,
        redis_cpu_s=cpu,
        cpu_s_per_1m=cpu / scanned * 1e6,
        client_cmds=client_cmds,
        cmds_per_key=client_cmds / scanned,
        server_cmds=sum(server.values()),
        server_cmds_per_key=sum(server.values()) / scanned,
        xchk=xchk,
        rss_peak_mb=rss.peak,
        rss_delta_mb=rss.peak - rss.start,
        probe_p99_ms=latency["p99_ms"],
        probe_max_ms=latency["max_ms"],
        probe_gets=int(latency["gets"]),
        slow_max_ms=max(slow_us, default=0) / 1000,
        slow_over_guard=sum(1 for us in slow_us if us > slow_guard_us),
        deleted=work.deleted,
        ttl_set=work.ttl_set,
        dbsize_after=int(client.dbsize()),
        load1=os.getloadavg()[0],
        commands=dict(work.commands),
        server_commands=server,
        notes=work.notes,
    )


def _slow_args(entry: dict[str, Any]) -> str:
    """A slow command without its script digest and key names: EVALSHA's cursor and COUNT show the batch."""
    command = entry.get("command", b"")
    words = (command.decode(errors="replace") if isinstance(command, bytes) else str(command)).split(" ")
    return " ".join(w if len(w) < 24 else "…" for w in words[:6])


def _slow_cmd(entry: dict[str, Any]) -> str:
    command = entry.get("command", b"")
    text = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
    return text.split(" ", 1)[0].lower()


class Keyspaces:
    """Each keyspace is written once and saved to an RDB file; every row starts
    from FLUSHALL + DEBUG RELOAD of that file, the first one included."""

    def __init__(
        self, server: embedded.Server, now: dt.datetime, log: Callable[[str], None], other_ratio: float
    ) -> None:
        self.server, self.now, self.log, self.other_ratio = server, now, log, other_ratio
        # SAVE and DEBUG RELOAD of millions of keys outlast any ordinary socket timeout.
        self.client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=None)
        self.saved: dict[tuple[str, int], Path] = {}
        self.written: dict[tuple[str, int], dict[str, int]] = {}

    def load(self, keyspace: str, results_n: int) -> None:
        rdb = self.server.workdir / "dump.rdb"
        which = (keyspace, results_n)
        if which not in self.saved:
            self.client.flushall()
            t0 = time.perf_counter()
            spec = bulkgen.Spec(results_n, other_ratio=self.other_ratio, keyspace=keyspace)
            stats = bulkgen.write(self.server.port, spec, self.now)
            self.written[which] = dict(stats)
            gen = time.perf_counter() - t0
            self.client.save()
            snap = self.server.workdir / f"keyspace-{keyspace}-{results_n}.rdb"
            shutil.copyfile(rdb, snap)
            self.saved[which] = snap
            self.log(
                f"  wrote {sum(stats.values()):,} keys ({results_n:,} {keyspace} results) in {gen:.1f} s, "
                f"saved to {snap.name}"
            )
        t0 = time.perf_counter()
        self.client.flushall()
        shutil.copyfile(self.saved[which], rdb)
        self.client.execute_command("DEBUG", "RELOAD", "NOSAVE")  # type: ignore[no-untyped-call]
        self.log(f"  restored {self.client.dbsize():,} keys in {time.perf_counter() - t0:.1f} s")


def run(args: argparse.Namespace, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """One document per keyspace, all measured on one server."""
    settings = config.load({})
    guard_us = int(settings.max_batch_ms * 1000)
    slow_us = args.slowlog_us if args.slowlog_us is not None else guard_us
    rows = [r.strip() for r in args.rows.split(",") if r.strip()] if args.rows else list(ROWS)
    unknown = set(rows) - set(ROWS)
    if unknown:
        raise SystemExit(f"unknown rows: {', '.join(sorted(unknown))}; choose from {', '.join(ROWS)}")
    keyspaces = [k.strip() for k in args.keyspace.split(",") if k.strip()]
    if not keyspaces or set(keyspaces) - set(bulkgen.KEYSPACES):
        raise SystemExit(f"--keyspace: choose from {', '.join(bulkgen.KEYSPACES)}")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    docs: list[dict[str, Any]] = []
    with embedded.running(args.engine) as server:
        client = server.client()
        version = client.info("server")
        pinned = pin(client) if args.pin else "not pinned (--no-pin)"
        client.config_set("slowlog-log-slower-than", slow_us)
        client.config_set("slowlog-max-len", 10_000)
        client.script_load(CEILING_B.source)
        spaces = Keyspaces(server, now, log, args.other_ratio)
        for keyspace in keyspaces:
            started = time.perf_counter()
            load_start = os.getloadavg()
            log(
                f"{server.engine} {version.get('valkey_version') or version.get('redis_version')} on port "
                f"{server.port}; {args.keys:,} {keyspace} result keys; "
                f"loadavg {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}"
            )
            docs.append(
                _rows(
                    args,
                    log,
                    client=client,
                    server=server,
                    spaces=spaces,
                    keyspace=keyspace,
                    rows=rows,
                    settings=settings,
                    now=now,
                    slow_us=slow_us,
                    guard_us=guard_us,
                )
            )
            docs[-1]["loadavg_start"] = load_start
            docs[-1]["pinned"] = pinned
            docs[-1]["total_s"] = round(time.perf_counter() - started, 1)
    return docs


def _rows(
    args: argparse.Namespace,
    log: Callable[[str], None],
    *,
    client: redis.Redis,
    server: embedded.Server,
    spaces: Keyspaces,
    keyspace: str,
    rows: list[str],
    settings: Settings,
    now: dt.datetime,
    slow_us: int,
    guard_us: int,
) -> dict[str, Any]:
    version = client.info("server")
    measured: list[Row] = []
    for name in rows:
        size = min(args.keys, args.naive_keys) if name in NAIVE else args.keys
        if name != "janitor2":
            spaces.load(keyspace, size)
        elif not measured or measured[-1].name != "janitor1":
            log("janitor2 needs a first pass on the same keyspace: running janitor1 unmeasured")
            spaces.load(keyspace, size)
            RUNNERS["janitor1"](client, settings, now)
        log(f"{LABELS[name]} on {size:,} result keys ...")
        profiler = cProfile.Profile() if args.profile == name else None
        if profiler:
            profiler.enable()
        row = measure(name, client, port=server.port, settings=settings, now=now, keys=size, slow_guard_us=guard_us)
        if profiler:
            profiler.disable()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
            log(text.getvalue())
        if size < args.keys:
            row.extrapolated_wall_s = args.keys / row.keys_per_s
        log(f"  {row.wall_s:.2f} s, {row.keys_per_s:,.0f} keys/s, load1 {row.load1:.2f}")
        measured.append(row)
    return {
        "keyspace": keyspace,
        "engine": server.engine,
        "server_version": version.get("valkey_version") or version.get("redis_version"),
        "result_keys": args.keys,
        "other_keys": int(args.keys * args.other_ratio),
        "naive_keys": min(args.keys, args.naive_keys),
        "written": {str(n): v for (ks, n), v in spaces.written.items() if ks == keyspace},
        "now": now.isoformat(),
        "settings": {
            "scan_count": settings.scan_count,
            "max_batch_ms": settings.max_batch_ms,
            "result_ttl": settings.result_ttl,
            "failure_ttl": settings.failure_ttl,
            "pending_ttl": settings.pending_ttl,
        },
        "slowlog_threshold_us": slow_us,
        "guard_us": guard_us,
        "loadavg_end": os.getloadavg(),
        "cpus": os.cpu_count(),
        "rows": [asdict(r) for r in measured],
        "ratios": ratios(measured),
    }


def ratios(rows: list[Row]) -> dict[str, Any]:
    by = {r.name: r for r in rows}
    out: dict[str, Any] = {}
    base = by.get("lua")
    if base:
        out["vs_ceiling_b"] = {
            r.name: {
                "keys_per_s": r.keys_per_s / base.keys_per_s,
                "cpu": r.cpu_s_per_1m / base.cpu_s_per_1m if base.cpu_s_per_1m else None,
            }
            for r in rows
        }
    first, second = by.get("janitor1"), by.get("janitor2")
    if first and second and first.redis_cpu_s:
        out["second_pass_cpu_fraction"] = second.redis_cpu_s / first.redis_cpu_s
    checks: dict[str, Any] = {}
    if first and base:
        checks["first_pass_keys_per_s >= 0.8x ceiling B"] = first.keys_per_s >= 0.8 * base.keys_per_s
        checks["first_pass_cpu <= 1.2x ceiling B"] = first.cpu_s_per_1m <= 1.2 * base.cpu_s_per_1m
    if "second_pass_cpu_fraction" in out:
        checks["second_pass_cpu <= 0.3x first"] = out["second_pass_cpu_fraction"] <= 0.3
    bare = by.get("scan")
    for r in (first, second):
        if r:
            checks[f"{r.name} commands/key <= 0.01"] = r.cmds_per_key <= 0.01
            checks[f"{r.name} no command over the guard"] = r.slow_over_guard == 0
            if bare:
                checks[f"{r.name} added p99 <= 2 ms (vs bare SCAN)"] = r.probe_p99_ms - bare.probe_p99_ms <= 2.0
            checks[f"{r.name} RSS < 100 MB"] = r.rss_peak_mb < 100
    pipe = by.get("pipeline")
    if first and pipe:
        out["pipeline_vs_janitor1"] = {
            "keys_per_s": pipe.keys_per_s / first.keys_per_s,
            "cpu": pipe.cpu_s_per_1m / first.cpu_s_per_1m if first.cpu_s_per_1m else None,
            "commands_per_key": pipe.cmds_per_key / first.cmds_per_key if first.cmds_per_key else None,
        }
    out["checks"] = checks
    return out


def table(doc: dict[str, Any]) -> str:
    lines = [
        f"celery-janitor sweep bench: {doc['engine']} {doc['server_version']}, {doc['result_keys']:,} "
        f"{doc['keyspace']} result keys (+{doc['other_keys']:,} non-Celery), {doc['cpus']} CPUs, "
        f"total {doc['total_s']} s",
        "written: " + ", ".join(f"{k} {v:,}" for k, v in doc["written"].get(str(doc["result_keys"]), {}).items()),
        "loadavg start {:.2f} {:.2f} {:.2f}, end {:.2f} {:.2f} {:.2f}".format(
            *doc["loadavg_start"], *doc["loadavg_end"]
        ),
        f"slowlog threshold {doc['slowlog_threshold_us']} us; janitor guard (max_batch_ms) {doc['guard_us']} us; "
        f"{doc.get('pinned', 'not pinned')}",
        "",
    ]
    head = (
        f"{'row':<27} {'keys':>9} {'wall s':>8} {'keys/s':>9} {'CPU s/1M':>8} {'cmd/key':>8} {'srv/key':>7} "
        f"{'xchk':>4} {'RSS MB':>7} {'+RSS':>5} {'p99 ms':>6} {'max ms':>7} {'slow ms':>7} {'>guard':>6} "
        f"{'deleted':>8} {'ttl set':>8} {'dbsize':>9} {'load1':>5}"
    )
    lines += [head, "-" * len(head)]
    for r in doc["rows"]:
        wall = f"{r['wall_s']:.2f}" if r["extrapolated_wall_s"] is None else f"~{r['extrapolated_wall_s']:.1f}"
        lines.append(
            f"{r['label']:<27} {r['keys']:>9,} {wall:>8} {r['keys_per_s']:>9,.0f} {r['cpu_s_per_1m']:>8.2f} "
            f"{r['cmds_per_key']:>8.4f} {r['server_cmds_per_key']:>7.2f} {'ok' if r['xchk'] else 'BAD':>4} "
            f"{r['rss_peak_mb']:>7.1f} {r['rss_delta_mb']:>5.1f} {r['probe_p99_ms']:>6.2f} {r['probe_max_ms']:>7.2f} "
            f"{r['slow_max_ms']:>7.2f} {r['slow_over_guard']:>6} {r['deleted']:>8,} {r['ttl_set']:>8,} "
            f"{r['dbsize_after']:>9,} {r['load1']:>5.2f}"
        )
    rat = doc["ratios"]
    if "vs_ceiling_b" in rat:
        lines += ["", "vs ceiling B        keys/s ratio   CPU ratio"]
        for r in doc["rows"]:
            v = rat["vs_ceiling_b"][r["name"]]
            cpu = f"{v['cpu']:.2f}" if v["cpu"] is not None else "-"
            lines.append(f"  {r['name']:<18} {v['keys_per_s']:>11.2f}x {cpu:>10}x")
    if "second_pass_cpu_fraction" in rat:
        lines.append(f"\nsecond pass Redis CPU / first pass: {rat['second_pass_cpu_fraction']:.3f}")
    if "pipeline_vs_janitor1" in rat:
        p = rat["pipeline_vs_janitor1"]
        lines.append(
            f"pipeline / janitor 1st pass: keys/s {p['keys_per_s']:.2f}x, Redis CPU {p['cpu']:.2f}x, "
            f"commands/key {p['commands_per_key']:.0f}x"
        )
    for r in doc["rows"]:
        if r["name"].startswith("janitor") and r["notes"].get("batches"):
            n = r["notes"]
            lines.append(
                f"{r['name']}: {n['batches']} batches, {r['scanned'] / n['batches']:.0f} keys per batch "
                f"(scan_count {doc['settings']['scan_count']}), skipped {n['skipped']}, raced {n['raced']}, "
                f"server preempted {n.get('server_preempted', 0)} times, "
                f"{n.get('over_slowlog_threshold', 0)} calls over {doc['slowlog_threshold_us']} us"
            )
            for ms, command in n.get("over_guard", []):
                lines.append(f"  over the guard: {ms} ms  {command}")
    for name, ok in rat["checks"].items():
        lines.append(f"check {name}: {'PASS' if ok else 'FAIL'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000, help="Celery result keys (default 1000000; +20%% other)")
    parser.add_argument(
        "--other-ratio", type=float, default=0.2, help="non-Celery keys per result key (default 0.2; 20 = sparse)"
    )
    parser.add_argument("--engine", choices=embedded.ENGINES, default="redis")
    parser.add_argument(
        "--keyspace",
        default="realistic",
        help=f"comma-separated keyspaces, each its own table: {','.join(bulkgen.KEYSPACES)} (default realistic)",
    )
    parser.add_argument("--rows", default="", help=f"comma-separated subset of {','.join(ROWS)}")
    parser.add_argument(
        "--naive-keys", type=int, default=0, help="result keys for the naive rows (default: keys/5, at most 100000)"
    )
    parser.add_argument(
        "--pin", action=argparse.BooleanOptionalAction, default=True, help="give the server a CPU of its own"
    )
    parser.add_argument("--slowlog-us", type=int, default=None, help="slowlog threshold (default: the janitor guard)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("--profile", choices=ROWS, help="cProfile one row (to stderr)")
    parser.add_argument("--probe", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        return probe_main(args.probe)
    args.naive_keys = args.naive_keys or min(100_000, max(1000, args.keys // 5))

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    docs = run(args, log)
    print(json.dumps(docs if len(docs) > 1 else docs[0], indent=2) if args.json else "\n\n".join(map(table, docs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
