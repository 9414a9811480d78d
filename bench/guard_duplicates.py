"""How often kombu's own restore runs a task twice, with and without the janitor's guards.

Two real Celery workers (``tests.broker_app``: ``acks_late``, ``task_track_started``, visibility
timeout 3 s) whose own ``restore_visible`` runs every second, and ``celery-janitor run`` with the
guard under test on or off (``JANITOR_GUARD_INTERVAL`` 0.5 s). Two workloads, each run without and
with its guard:

- eta: ``--tasks`` countdown tasks due ``--countdown`` seconds after they are sent (kombu#337);
- running: ``--tasks`` tasks that each run ``--seconds`` (celery#5935).

Counts how many times each task started; every start beyond the first is a duplicate.

    python bench/guard_duplicates.py
    python bench/guard_duplicates.py --tasks 20 --countdown 12 --seconds 12
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from janitor.dev import embedded

ROOT = Path(__file__).resolve().parent.parent
VT = 3


def worker(url: str, name: str) -> subprocess.Popen[bytes]:
    env = os.environ | {"BROKER_APP_URL": url, "BROKER_APP_VT": str(VT), "BROKER_APP_KOMBU_RESTORE": "1"}
    args = [sys.executable, "-m", "celery", "-A", "tests.broker_app", "worker", "-P", "threads", "-c", "8"]
    args += ["-n", name, "--without-mingle", "--without-gossip", "-l", "warning"]
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def janitor(url: str, port: int, guard: str, on: bool) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JANITOR_", "REDIS_URL", "PYTHONPATH"))}
    env |= {
        "PYTHONPATH": str(ROOT),
        "JANITOR_REDIS_URL": url,
        f"JANITOR_{guard.upper()}_GUARD": str(on).lower(),
        "JANITOR_GUARD_INTERVAL": "0.5",
        "JANITOR_ETA_GUARD_GRACE": "3",
        "JANITOR_VISIBILITY_TIMEOUT": str(VT),
        "JANITOR_BROKER_INTERVAL": "0.5",
        "JANITOR_METRICS_PORT": str(port),
        "JANITOR_METRICS_HOST": "127.0.0.1",
        "JANITOR_LOG_LEVEL": "warning",
    }
    return subprocess.Popen([sys.executable, "-m", "janitor", "run"], env=env, cwd=ROOT, stderr=subprocess.DEVNULL)


def sample(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return 0.0
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def wait(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not check():
        time.sleep(0.2)


def run(guard: str, on: bool, args: argparse.Namespace) -> tuple[list[int], float]:
    """One workload against a fresh server: starts per task, and the re-scores the guard made."""
    with embedded.running(embedded.available_engines()[0]) as server:
        client = redis.Redis.from_url(server.url)
        app = Celery("producer", broker=server.url, backend=server.url, set_as_current=False)
        port = embedded.free_port()
        daemon = janitor(server.url, port, guard, on)
        workers = [worker(server.url, "w1@%h"), worker(server.url, "w2@%h")]
        try:
            wait(lambda: sample(port, "celery_workers_alive") >= 2 and sample(port, "janitor_is_leader") == 1, 60)
            if guard == "eta":
                ids = [app.send_task("broker_app.work", [0.2], countdown=args.countdown).id for _ in range(args.tasks)]
            else:
                ids = [app.send_task("broker_app.work", [args.seconds]).id for _ in range(args.tasks)]
            wait(
                lambda: (
                    all(client.get(f"test:done:{i}") for i in ids)
                    and not client.hlen("unacked")
                    and not client.llen("celery")
                ),
                args.countdown + args.seconds * 4 + 60,
            )
            time.sleep(2)
            starts = [int(client.get(f"test:started:{i}") or 0) for i in ids]
            rescored = sample(port, "janitor_rescored_total")
        finally:
            for proc in workers:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(15)
            daemon.terminate()
            daemon.wait(15)
    return starts, rescored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--countdown", type=float, default=10.0, help="eta workload: seconds to each task's ETA")
    parser.add_argument("--seconds", type=float, default=10.0, help="running workload: how long each task runs")
    args = parser.parse_args()
    print(f"visibility_timeout {VT} s, kombu restore_visible every 1 s in each of 2 workers, guard every 0.5 s")
    for guard, what in (("eta", f"countdown {args.countdown:g} s"), ("running", f"tasks of {args.seconds:g} s")):
        for on in (False, True):
            starts, rescored = run(guard, on, args)
            print(
                f"{guard} guard {'on ' if on else 'off'}: {args.tasks} {what}: starts per task {starts}, "
                f"duplicate executions {sum(starts) - len(starts)}, scores raised {rescored:g}"
            )


if __name__ == "__main__":
    main()
