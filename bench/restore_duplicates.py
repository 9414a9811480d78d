"""How often a long ``acks_late`` task runs twice when the daemon restores stuck messages.

The same workload for any janitor checkout: two real Celery workers (``acks_late``,
``task_track_started``, visibility timeout 3 s, kombu's own restore off), ``--tasks`` tasks
that each run ``--seconds`` (several visibility timeouts), and ``celery-janitor run`` with
``JANITOR_RESTORE_STUCK=true`` checking the broker every second. Counts how many times each
task started. A janitor that restores by age alone hands running tasks to the second worker.

    python bench/restore_duplicates.py                            # this checkout
    python bench/restore_duplicates.py --janitor /path/to/other   # another checkout, same workload
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from celery import Celery

from janitor.dev import embedded

ROOT = Path(__file__).resolve().parent.parent


def worker(url: str, name: str) -> subprocess.Popen[bytes]:
    env = os.environ | {"BROKER_APP_URL": url, "BROKER_APP_VT": "3"}
    args = [sys.executable, "-m", "celery", "-A", "tests.broker_app", "worker", "-P", "threads", "-c", "4"]
    args += ["-n", name, "--without-mingle", "--without-gossip", "-l", "warning"]
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def janitor(url: str, checkout: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JANITOR_", "REDIS_URL", "PYTHONPATH"))}
    env |= {
        "PYTHONPATH": str(checkout),
        "JANITOR_REDIS_URL": url,
        "JANITOR_RESTORE_STUCK": "true",
        "JANITOR_VISIBILITY_TIMEOUT": "3",
        "JANITOR_BROKER_INTERVAL": "1",
        "JANITOR_METRICS_PORT": str(embedded.free_port()),
        "JANITOR_METRICS_HOST": "127.0.0.1",
        "JANITOR_LOG_LEVEL": "warning",
    }
    return subprocess.Popen([sys.executable, "-m", "janitor", "run"], env=env, cwd=checkout, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--janitor", type=Path, default=ROOT, help="checkout whose daemon runs (default: this one)")
    parser.add_argument("--tasks", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=15.0, help="how long each task runs (vt is 3 s)")
    args = parser.parse_args()
    with embedded.running(embedded.available_engines()[0]) as server:
        client = redis.Redis.from_url(server.url)
        app = Celery("producer", broker=server.url, backend=server.url, set_as_current=False)
        procs = [worker(server.url, "w1@%h"), worker(server.url, "w2@%h"), janitor(server.url, args.janitor)]
        try:
            ids = [app.send_task("broker_app.work", args=[args.seconds]).id for _ in range(args.tasks)]
            deadline = time.monotonic() + args.seconds * 4 + 30
            while time.monotonic() < deadline:
                if all(client.get(f"test:done:{i}") for i in ids) and not client.hlen("unacked"):
                    break
                time.sleep(0.5)
            time.sleep(2)
            starts = [int(client.get(f"test:started:{i}") or 0) for i in ids]
        finally:
            for proc in procs:
                with_group = proc.args[1:3] == ["-m", "celery"]  # type: ignore[index]
                if with_group:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.terminate()
                proc.wait(15)
    print(f"janitor: {args.janitor}")
    print(f"tasks: {args.tasks} x {args.seconds:.0f} s, visibility_timeout 3 s, broker check every 1 s")
    print(f"starts per task: {starts}")
    print(f"duplicate executions: {sum(starts) - len(starts)}")


if __name__ == "__main__":
    main()
