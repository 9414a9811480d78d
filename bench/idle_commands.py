"""What an idle `celery-janitor run` sends to Redis, counted by the server.

Starts a private server, writes a clean Celery keyspace (``--results`` results that
already have their TTL, as after a first sweep, and the queue kombu binds, with nothing
waiting and nothing unacked: no broker traffic), starts the daemon with its defaults
(plus any ``--env NAME=VALUE``), and records every command the daemon's connections send with ``MONITOR``. Commands run
inside scripts are not counted: only what crosses the wire, which is what a
pay-per-command provider bills. The first ``--warmup`` seconds (start-up: script
loads, the first pass, the first census) are shown apart; the rest is extrapolated
to a day.

Hourly and daily runs (the census, the broker check's refresh, the safety pass) do not fit
a short window: ``--compress K`` divides every default interval (the lease's TTL included)
by K, so a window of 1440/K minutes holds a whole day's schedule; its count is the day's.

    python bench/idle_commands.py                       # 10 minutes of real time
    python bench/idle_commands.py --compress 60 --minutes 24   # a whole day, 60 times faster
    python bench/idle_commands.py --minutes 30 --env JANITOR_DAILY_COMMAND_BUDGET=1000
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import kombu
import redis

from janitor import config
from janitor.dev import demo, embedded

ROOT = Path(__file__).resolve().parent.parent


def clean_keyspace(client: redis.Redis, url: str, results: int) -> None:
    """``results`` results, each already with its TTL (a day from its date_done), and an idle broker:
    the queue ``celery`` bound by kombu itself, nothing waiting, nothing unacked."""
    now = dt.datetime.now(dt.UTC)
    pipe = client.pipeline(transaction=False)
    for i in range(results):
        done = now - dt.timedelta(seconds=i * 30 % 80000)
        meta = demo.task_meta(f"idle-{i:08d}", "SUCCESS", done, result=i)
        ttl = 86400 - int((now - done).total_seconds())
        pipe.set(f"celery-task-meta-idle-{i:08d}", demo.encode(meta, "json"), ex=max(ttl, 60))
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    k: Any = kombu  # untyped
    with k.Connection(url) as conn:
        k.Queue("celery", k.Exchange("celery", type="direct"), routing_key="celery")(conn.default_channel).declare()


class Monitor(threading.Thread):
    """MONITOR in a thread: (time, client address, command) for every top-level command."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.seen: list[tuple[float, str, str]] = []
        self.ready = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        monitor = self.client.monitor()  # type: ignore[no-untyped-call]
        with monitor as m, contextlib.suppress(redis.ConnectionError):  # the server stops first
            self.ready.set()
            for event in m.listen():
                if self.stop.is_set():
                    return
                if event["client_type"] == "lua":
                    continue
                self.seen.append((time.monotonic(), str(event["client_address"]), str(event["command"])))


def _name(command: str) -> str:
    """MONITOR's command line to the command's name (SCRIPT LOAD and CLIENT SETINFO keep their subcommand)."""
    words = command.split(" ")
    name = words[0]
    return f"{name} {words[1].upper()}" if name in {"SCRIPT", "CLIENT", "CONFIG"} and len(words) > 1 else name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=60, help="seconds of start-up shown apart (default 60)")
    parser.add_argument("--results", type=int, default=5000)
    parser.add_argument("--engine", default="")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the daemon, repeatable")
    parser.add_argument("--trace", action="store_true", help="also list every steady-state command")
    parser.add_argument("--compress", type=float, default=1, help="divide every default interval by this")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    if args.compress != 1:
        fields = config.Settings.model_fields
        names = ("sweep", "info", "broker", "census", "safety_sweep")
        for name in names:
            extra.setdefault(
                f"JANITOR_{name.upper()}_INTERVAL", str(fields[f"{name}_interval"].default / args.compress)
            )
        extra.setdefault("JANITOR_LEASE_TTL", str(fields["lease_ttl"].default / args.compress))

    with embedded.running(args.engine) as server:
        client = server.client()
        clean_keyspace(client, server.url, args.results)
        print(
            f"{server.engine}: {client.dbsize():,} keys, {args.results:,} results with a TTL; daemon env {extra or '-'}"
        )
        monitor = Monitor(redis.Redis.from_url(server.url, socket_timeout=None))
        monitor.start()
        monitor.ready.wait(5)
        time.sleep(0.2)
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "JANITOR_REDIS_URL": server.url,
            "JANITOR_METRICS_PORT": str(embedded.free_port()),
            "JANITOR_LOG_FORMAT": "json",
            **extra,
        }
        log_path = Path(f"/tmp/idle_commands-{os.getpid()}.log")
        with log_path.open("wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "janitor", "run"], env=env, stderr=err)
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < args.minutes * 60:
                time.sleep(1)
                if proc.poll() is not None:
                    print(f"daemon exited with {proc.returncode}; see {log_path}")
                    return 1
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            monitor.stop.set()
        window = time.monotonic() - t0
        warm = collections.Counter(_name(cmd) for t, _, cmd in monitor.seen if t - t0 < args.warmup)
        steady = collections.Counter(_name(cmd) for t, _, cmd in monitor.seen if args.warmup <= t - t0 <= window)
        per_day = 86400 / args.compress / max(window - args.warmup, 1)
        print(f"log: {log_path}; window {window / 60:.1f} min, steady state after {args.warmup:.0f} s")
        print(f"{'command':<16} {'start-up':>9} {'steady':>7} {'per day':>8}")
        for cmd in sorted(set(warm) | set(steady), key=lambda c: -steady[c]):
            print(f"{cmd:<16} {warm[cmd]:>9} {steady[cmd]:>7} {steady[cmd] * per_day:>8.0f}")
        total = sum(steady.values())
        print(f"{'total':<16} {sum(warm.values()):>9} {total:>7} {total * per_day:>8.0f}")
        print(f"command line: python bench/idle_commands.py {shlex.join(sys.argv[1:])}")
        if args.trace:
            for t, address, cmd in monitor.seen:
                if t - t0 >= args.warmup:
                    print(f"  {t - t0:8.1f} s  {address:<22} {cmd[:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
