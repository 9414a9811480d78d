"""What `celery-janitor run` costs while it sits there: CPU seconds per minute and RSS.

Starts a private server, fills it with a dirty Celery keyspace (janitor.dev.demo.fill),
starts the daemon with its default intervals, and samples the daemon's
/proc/<pid> every few seconds. The first minute holds the first sweep of the
dirty keyspace; later minutes are the steady state (INFO every 2 min, lease
renewals, a sweep every 5 min that is skipped while nothing is written, a census
every hour). What it sends to Redis is measured by bench/idle_commands.py.
Also saves a /metrics scrape taken after that first sweep.

    python bench/daemon_idle.py                   # 10 minutes, 1M keys
    python bench/daemon_idle.py --minutes 3 --keys 200000
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import redis

from janitor.dev import demo, embedded

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 1e6


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def sample(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--keys", type=int, default=1_000_000, help="approximate total keys (default 1000000)")
    parser.add_argument("--engine", default="", help="redis or valkey (default: first available)")
    parser.add_argument("--every", type=float, default=5, help="seconds between samples")
    parser.add_argument("--scrape-out", default=str(ROOT / "bench/results/metrics-scrape.txt"))
    args = parser.parse_args()

    with embedded.running(args.engine) as server:
        client = server.client()
        started = time.monotonic()
        # fill() writes ~1.25 keys per result (groups, chords, replies, 20% non-Celery keys).
        written = demo.fill(client, results=int(args.keys / 1.25))
        print(
            f"{server.engine}: {client.dbsize():,} keys ({sum(written.values()):,} written) "
            f"in {time.monotonic() - started:.1f} s; used_memory {client.info('memory')['used_memory'] / 1e6:.0f} MB"
        )
        port = embedded.free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "JANITOR_REDIS_URL": server.url,
            "JANITOR_METRICS_PORT": str(port),
            "JANITOR_LOG_FORMAT": "json",
        }
        log_path = Path(f"/tmp/daemon_idle-{os.getpid()}.log")
        with log_path.open("wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "janitor", "run"], env=env, stderr=err)
        try:
            return _watch(proc, port, client, args, log_path)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _watch(proc: subprocess.Popen[bytes], port: int, client: redis.Redis, args: argparse.Namespace, log: Path) -> int:
    t0 = time.monotonic()
    redis_cpu0 = _redis_cpu(client)
    scraped = False
    minute_start_cpu, minute_start_redis, minute = 0.0, redis_cpu0, 1
    minute_rss: list[float] = []
    print(f"daemon pid {proc.pid}, log {log}")
    print(f"{'minute':>6} {'cpu_s':>7} {'rss_mb(min/max)':>16} {'redis_cpu_s':>11} {'sweeps':>6} {'keys_scanned':>12}")
    while time.monotonic() - t0 < args.minutes * 60:
        time.sleep(args.every)
        if proc.poll() is not None:
            print(f"daemon exited with {proc.returncode}; see {log}")
            return 1
        minute_rss.append(rss_mb(proc.pid))
        if not scraped:
            try:
                text = scrape(port)
            except OSError:
                continue
            if sample(text, 'janitor_sweep_last_success_timestamp_seconds{sweep="results"}') > 0:
                time.sleep(1)  # let INFO and the census land too
                Path(args.scrape_out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.scrape_out).write_text(scrape(port))
                scraped = True
                print(f"  (first sweep done after {time.monotonic() - t0:.1f} s; scrape saved to {args.scrape_out})")
        if time.monotonic() - t0 >= minute * 60:
            cpu, rcpu, text = cpu_seconds(proc.pid), _redis_cpu(client), scrape(port)
            sweeps = sample(text, 'janitor_sweep_duration_seconds_count{sweep="results"}')
            scanned = sample(text, 'janitor_keys_scanned_total{sweep="results"}')
            rss = f"{min(minute_rss):.1f}/{max(minute_rss):.1f}"
            print(
                f"{minute:>6} {cpu - minute_start_cpu:>7.2f} {rss:>16} {rcpu - minute_start_redis:>11.2f} "
                f"{sweeps:>6.0f} {scanned:>12,.0f}",
                flush=True,
            )
            minute_start_cpu, minute_start_redis, minute_rss, minute = cpu, rcpu, [], minute + 1
    total = cpu_seconds(proc.pid)
    print(
        f"total daemon CPU {total:.2f} s over {(time.monotonic() - t0) / 60:.1f} min; RSS now {rss_mb(proc.pid):.1f} MB"
    )
    return 0


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


if __name__ == "__main__":
    sys.exit(main())
