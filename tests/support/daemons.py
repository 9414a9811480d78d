"""The daemon as a process: `python -m janitor run` of this checkout, read through its HTTP port and JSON log."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

from janitor.dev import demo, embedded
from tests.support import ROOT, wait_for

LEASE_TTL = 2.0


@dataclass
class Janitor:
    """One daemon process; its stderr (JSON log lines) goes to a file."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except (urllib.error.URLError, OSError):
            return 0, ""

    def sample(self, name: str, **labels: str) -> float | None:
        status, text = self.get("/metrics")
        if status != 200:
            return None
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return float(s.value)
        return None

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == name:
                    out.append(event)
        return out

    def log(self) -> str:
        return self.log_path.read_text()


def daemon_env(port: int, **env: str) -> dict[str, str]:
    """A daemon's environment: short intervals, JSON logs, metrics on loopback ``port``; nothing inherited
    that would pick its server or its Python path."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("JANITOR_", "REDIS_URL", "PORT", "PYTHON"))},
        "JANITOR_METRICS_PORT": str(port),
        "JANITOR_METRICS_HOST": "127.0.0.1",
        "JANITOR_LOG_FORMAT": "json",
        "JANITOR_SWEEP_INTERVAL": "1",
        "JANITOR_CENSUS_INTERVAL": "1",
        "JANITOR_INFO_INTERVAL": "0.5",
        "JANITOR_LEASE_TTL": str(LEASE_TTL),
        "JANITOR_SOCKET_TIMEOUT": "1",
        "JANITOR_SHUTDOWN_TIMEOUT": "5",
        **env,
    }


def launch(log_path: Path, **env: str) -> Janitor:
    """Start one daemon of this checkout, its JSON log in ``log_path``; returns once it serves /livez."""
    port = embedded.free_port()
    full = daemon_env(port, PYTHONPATH=str(ROOT), **env)
    with log_path.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "janitor", "run"], env=full, stderr=err, cwd=ROOT)
    janitor = Janitor(proc, port, log_path)
    try:
        wait_for(lambda: janitor.get("/livez")[0] == 200, 15, f"daemon on port {port} did not serve /livez")
    except AssertionError:
        proc.kill()
        raise
    return janitor


def stop_all(janitors: list[Janitor]) -> None:
    for janitor in janitors:
        if janitor.process.poll() is None:
            os.kill(janitor.process.pid, signal.SIGCONT)
            janitor.process.kill()
            janitor.process.wait(10)


def old_results(client: redis.Redis, n: int, tag: str, age_days: float = 3) -> list[bytes]:
    """`n` SUCCESS results past the 1-day retention: every sweep batch has deletes to do."""
    done = dt.datetime.now(dt.UTC) - dt.timedelta(days=age_days)
    pipe = client.pipeline(transaction=False)
    keys = []
    for i in range(n):
        tid = f"{tag}-{i:07d}"
        keys.append(f"celery-task-meta-{tid}".encode())
        pipe.set(keys[-1], json.dumps(demo.task_meta(tid, "SUCCESS", done)))
        if len(pipe) >= 5000:
            pipe.execute()
    pipe.execute()
    return keys
