"""Peak RSS of `celery-janitor sweep` over a keyspace of 10 MB and 100 MB results.

    python bench/big_results_rss.py                  # both engines, about a minute each
    python bench/big_results_rss.py --engine valkey --large 2 --medium 10

Starts a private server, writes big results without a TTL in Celery's JSON (kombu's
encoder, Celery's key order; half of them past retention) and as pickles (which the
janitor cannot judge from their edges), then runs the real CLI under ``/usr/bin/time -v``:
once on a keyspace of small results only (the baseline), once with the big ones. The
janitor reads a big value's length and first and last 4 KiB only, so its peak RSS stays
at the baseline whatever the values weigh. Prints one row per run; the server is stopped
and its data removed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pickle
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import redis
from kombu.utils.json import dumps

from janitor.dev import demo, embedded

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
JANITOR = ROOT / ".venv" / "bin" / "celery-janitor"


def write_big(client: redis.Redis, sizes_mb: list[int], now: dt.datetime) -> int:
    """One JSON result per size, alternately stale (30 days) and fresh, plus a pickle of every
    third size; returns the value bytes written."""
    total = 0
    for i, mb in enumerate(sizes_mb):
        tid = str(uuid.uuid4())
        body = "r" * (mb * MB)
        if i % 3 == 2:
            value = pickle.dumps({"status": "SUCCESS", "result": body, "task_id": tid}, protocol=4)
        else:
            when = now - dt.timedelta(days=30 if i % 2 == 0 else 0)
            meta: dict[str, object] = {"status": "SUCCESS", "result": body, "traceback": None, "children": []}
            value = dumps(meta | {"date_done": when.isoformat(), "task_id": tid}).encode()  # type: ignore[no-untyped-call]
        client.set(f"celery-task-meta-{tid}", value)
        total += len(value)
        del body, value
    return total


COMMAND = "/usr/bin/time -v .venv/bin/celery-janitor sweep --json"


def sweep_rss(url: str) -> tuple[int, dict[str, Any]]:
    """Peak RSS (KiB) of one `celery-janitor sweep --json` (COMMAND), and its report."""
    cmd = ["/usr/bin/time", "-v", str(JANITOR), "sweep", "--json"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JANITOR_") and not k.endswith("REDIS_URL")}
    env |= {"JANITOR_REDIS_URL": url, "JANITOR_LOG_FORMAT": "json"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"sweep failed ({proc.returncode}): {proc.stderr[-2000:]}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    assert peak is not None, proc.stderr
    return int(peak.group(1)), json.loads(proc.stdout)


def run(engine: str, large: int, medium: int, small: int) -> None:
    with embedded.running(engine) as server:
        client = server.client()
        now = dt.datetime.now(dt.UTC)
        demo.fill(client, results=small)
        base_rss, base = sweep_rss(server.url)
        client.flushall()
        demo.fill(client, results=small)
        written = write_big(client, [100] * large + [10] * medium, now)
        used = int(client.info("memory")["used_memory"])
        rss, report = sweep_rss(server.url)
        big_deleted = report["deleted"].get("task", 0) - base["deleted"].get("task", 0)
        big_ttl = report["ttl_applied"].get("task", 0) - base["ttl_applied"].get("task", 0)
        print(f"[{engine}] command: JANITOR_REDIS_URL=<private server> {COMMAND}")
        print(f"[{engine}] baseline ({small:,} small results): peak RSS {base_rss / 1024:.1f} MiB")
        print(
            f"[{engine}] plus {large} x 100 MB + {medium} x 10 MB results ({written / MB:,.0f} MiB of values, "
            f"server used_memory {used / MB:,.0f} MiB): peak RSS {rss / 1024:.1f} MiB; big results deleted "
            f"{big_deleted} ({(report['bytes_deleted'] - base['bytes_deleted']) / MB:,.0f} MiB), given a TTL "
            f"{big_ttl}, skipped {report['skipped']} ({report['skipped_bytes']} bytes); "
            f"sweep {report['duration_s']} s, commands {report['commands']}"
        )
        assert base["completed"]
        assert report["completed"]
        client.flushall()
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=embedded.available_engines(), action="append")
    parser.add_argument("--large", type=int, default=3, help="100 MB results (default 3)")
    parser.add_argument("--medium", type=int, default=10, help="10 MB results (default 10)")
    parser.add_argument("--small", type=int, default=2000, help="small results around them (default 2000)")
    args = parser.parse_args()
    for engine in args.engine or embedded.available_engines():
        run(engine, args.large, args.medium, args.small)


if __name__ == "__main__":
    main()
