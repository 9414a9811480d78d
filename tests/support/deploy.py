"""Helpers for the deploy tests: start a daemon process from any command, read what it exports."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from janitor.dev import embedded
from tests.support import ROOT, daemons, wait_for
from tests.support.daemons import Janitor

DEPLOY = ROOT / "deploy"


def daemon_env(server: embedded.Server, port: int, **extra: str) -> dict[str, str]:
    """The test daemons' environment on ``server``, broker checks every half second."""
    return daemons.daemon_env(port, **({"JANITOR_REDIS_URL": server.url, "JANITOR_BROKER_INTERVAL": "0.5"} | extra))


@contextmanager
def running_daemon(argv: Sequence[str], env: dict[str, str], port: int, log_path: Path, cwd: Path) -> Iterator[Janitor]:
    """Start ``argv`` (a ``celery-janitor run``), wait for /livez; SIGTERM (then kill) at the end."""
    with log_path.open("ab") as err:
        proc = subprocess.Popen(list(argv), env=env, stderr=err, cwd=cwd)
    janitor = Janitor(proc, port, log_path)
    try:
        wait_for(lambda: janitor.get("/livez")[0] == 200 or proc.poll() is not None, 20, f"/livez on port {port}")
        assert proc.poll() is None, f"daemon exited with {proc.returncode}:\n{log_path.read_text()}"
        yield janitor
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def exported_names(exposition: str) -> set[str]:
    """Every series name a /metrics text can carry: the TYPE names, plus the histogram suffixes."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
            elif kind == "summary":
                names.update(f"{name}{suffix}" for suffix in ("_sum", "_count"))
    return names
