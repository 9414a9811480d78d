"""Watch mode under load: time from a result's write to its TTL, commands per new result, Redis CPU added.

A private server with ``notify-keyspace-events E$g``; a writer creates Celery-format
results (``janitor.dev.demo.task_meta``, JSON, no TTL, as Celery writes them with
``result_expires=None``) at ``--rate`` per second for ``--seconds``, twice in one run:

1. without the janitor (the writer and the bench's own subscriber alone);
2. with ``celery-janitor run`` (a subprocess, default settings, JANITOR_WATCH=auto) watching.

A separate connection SUBSCRIBEs to the ``set`` and ``expire`` keyevents of db 0: a key's lag
is the time between its two notifications, both taken on that connection's clock. Commands
are the server's INFO commandstats deltas over phase 2, without the writer's SETs and the
bench's own commands; top-level commands (what a pay-per-command plan bills) are split from
those its Lua scripts call (the janitor's own count of what it sent is checked against the
server's). Redis CPU is INFO used_cpu_user + used_cpu_sys, phase 2 minus phase 1.

    python bench/watch_bench.py                      # 1,000 results/s for 60 s
    python bench/watch_bench.py --rate 500 --seconds 20 --engine valkey
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import redis

from janitor.dev import demo, embedded

ROOT = Path(__file__).resolve().parent.parent
# Commands no script can call: the janitor's count of them must equal the server's.
CLIENT_ONLY = ("evalsha", "evalsha_ro", "script|load", "config|get", "config|set", "subscribe", "info")


class Listener:
    """The bench's own subscriber: when each key's ``set`` and first ``expire`` notification arrived."""

    def __init__(self, client: redis.Redis) -> None:
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe("__keyevent@0__:set", "__keyevent@0__:expire")
        self.set_at: dict[bytes, float] = {}
        self.expire_at: dict[bytes, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self.pubsub.get_message(timeout=0.2)
            if message is None:
                continue
            now = time.monotonic()
            key = message["data"]
            if message["channel"].endswith(b":set"):
                self.set_at.setdefault(key, now)
            else:
                self.expire_at.setdefault(key, now)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.pubsub.close()


def write(client: redis.Redis, rate: float, seconds: float, tag: str) -> list[bytes]:
    """Celery-format results at ``rate`` per second, in small pipelines that catch up when behind."""
    keys: list[bytes] = []
    started = time.monotonic()
    total = int(rate * seconds)
    while len(keys) < total:
        due = min(total, int((time.monotonic() - started) * rate) + 1)
        if due <= len(keys):
            time.sleep(max(0.0, started + len(keys) / rate - time.monotonic()))
            continue
        pipe = client.pipeline(transaction=False)
        now = dt.datetime.now(dt.UTC)
        for _ in range(due - len(keys)):
            tid = f"{tag}-{uuid.uuid4()}"
            key = f"celery-task-meta-{tid}".encode()
            pipe.set(key, json.dumps(demo.task_meta(tid, "SUCCESS", now)))
            keys.append(key)
        pipe.execute()
    return keys


def stats(client: redis.Redis) -> tuple[dict[str, int], float]:
    """Calls per command (INFO commandstats) and Redis CPU seconds (INFO cpu), read in one call."""
    info = client.info("all")
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items() if k.startswith("cmdstat_")}
    return calls, float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)}


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())
    except OSError:
        return ""


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def commands(after: str, before: str) -> dict[str, float]:
    """janitor_redis_commands_total by command, ``after`` minus ``before`` (two /metrics scrapes)."""
    out: dict[str, float] = {}
    for text, sign in ((after, 1), (before, -1)):
        for line in text.splitlines():
            if line.startswith("janitor_redis_commands_total{"):
                name = line.split('command="', 1)[1].split('"', 1)[0]
                out[name] = out.get(name, 0.0) + sign * float(line.rsplit(" ", 1)[1])
    return out


def _stat_name(command: str) -> str:
    """``SCRIPT LOAD`` -> ``script|load``, as INFO commandstats names it."""
    return command.lower().replace(" ", "|")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def phase(client: redis.Redis, listener: Listener, rate: float, seconds: float, tag: str) -> dict[str, Any]:
    calls0, cpu0 = stats(client)
    started = time.monotonic()
    keys = write(client, rate, seconds, tag)
    took = time.monotonic() - started
    if tag == "watch":  # let the last batches land
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(k in listener.expire_at for k in keys[-100:]):
            time.sleep(0.1)
    calls1, cpu1 = stats(client)
    return {"keys": keys, "calls": delta(calls1, calls0), "cpu_s": cpu1 - cpu0, "wrote_s": took}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000, help="results written per second (default 1000)")
    parser.add_argument("--seconds", type=float, default=60, help="seconds each phase writes (default 60)")
    parser.add_argument("--engine", default="", help="redis or valkey (default: first available)")
    parser.add_argument("--out", default="", help="also write the report here (e.g. bench/results/watch.txt)")
    args = parser.parse_args()

    with embedded.running(args.engine) as server:
        client = server.client()
        client.config_set("notify-keyspace-events", "E$g")
        version = client.info("server")
        listener = Listener(server.client())

        # Phase 1: the writer alone.
        base = phase(client, listener, args.rate, args.seconds, "base")
        client.flushall()

        # Phase 2: the daemon watching.
        port = embedded.free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JANITOR_", "REDIS_URL", "PORT"))}
        env |= {
            "JANITOR_REDIS_URL": server.url,
            "JANITOR_METRICS_PORT": str(port),
            "JANITOR_METRICS_HOST": "127.0.0.1",
            "JANITOR_LOG_FORMAT": "json",
            "PYTHONPATH": str(ROOT),
        }
        log_path = Path("/tmp") / f"watch-bench-{port}.log"
        with log_path.open("wb") as log:
            daemon = subprocess.Popen([sys.executable, "-m", "janitor", "run"], env=env, stderr=log, cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                text = scrape(port)
                if metric(text, "janitor_watch_active") == 1 and "janitor_sweep_last_success_timestamp" in text:
                    break
                time.sleep(0.2)
            else:
                print(f"the daemon did not start watching; its log: {log_path}", file=sys.stderr)
                return 1
            before = scrape(port)
            watch = phase(client, listener, args.rate, args.seconds, "watch")
            after = scrape(port)
        finally:
            daemon.terminate()
            daemon.wait(30)
        listener.stop()

    keys = watch["keys"]
    seen = [k for k in keys if k in listener.expire_at and k in listener.set_at]
    lags = [listener.expire_at[k] - listener.set_at[k] for k in seen]
    missed = sum(1 for k in keys if k not in listener.expire_at)
    calls = dict(watch["calls"])
    calls["set"] = calls.get("set", 0) - len(keys)  # the writer's
    calls["info"] = calls.get("info", 0) - 1  # the bench's own reading of the stats
    calls = {k: n for k, n in calls.items() if n}
    # What the janitor sent (its own tally), named as commandstats names them; the rest of the
    # server's count was called from inside its scripts.
    sent = {_stat_name(k): int(v) for k, v in commands(after, before).items() if v}
    inside = {k: n - sent.get(k, 0) for k, n in calls.items() if n - sent.get(k, 0)}
    checked = {k: (sent.get(k, 0), calls.get(k, 0)) for k in CLIENT_ONLY if sent.get(k) or calls.get(k)}
    n = len(keys)
    server_name = (
        f"Valkey {version['valkey_version']}" if "valkey_version" in version else f"Redis {version['redis_version']}"
    )
    cpu_added = watch["cpu_s"] - base["cpu_s"]
    p50, p99 = percentile(lags, 0.5) * 1000, percentile(lags, 0.99) * 1000
    lines = [
        f"watch_bench: {server_name}, {args.rate:g} results/s for {args.seconds:g} s per phase "
        f"(writes took {base['wrote_s']:.1f} s / {watch['wrote_s']:.1f} s), notify-keyspace-events E$g",
        f"  results written          {n:,} with the janitor, {len(base['keys']):,} without",
        f"  write -> TTL lag         p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {max(lags, default=0) * 1000:.0f} ms "
        f"over {len(lags):,} results; {missed:,} without a TTL",
        f"  commands per new result  {sum(sent.values()) / n:.4f} sent by the janitor "
        f"({', '.join(f'{k} {v:,}' for k, v in sorted(sent.items()))})",
        f"                           {sum(inside.values()) / n:.4f} called inside its scripts "
        f"({', '.join(f'{k} {v:,}' for k, v in sorted(inside.items()))})",
        "  server count check       "
        + ", ".join(f"{k}: janitor {a:,} / INFO commandstats {b:,}" for k, (a, b) in sorted(checked.items())),
        f"  Redis CPU                {base['cpu_s']:.2f} s writer alone, {watch['cpu_s']:.2f} s with the janitor: "
        f"{cpu_added:+.2f} s added ({cpu_added / args.seconds * 100:+.1f}% of one core, "
        f"{cpu_added / n * 1e6:+.0f} us per result)",
        "  target                   p99 <= 1 s, <= 0.05 commands sent per new result",
    ]
    report = "\n".join(lines) + "\n"
    print(report, end="")
    if args.out:
        Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
