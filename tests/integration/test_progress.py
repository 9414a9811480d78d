"""The progress bar: on a terminal's stderr only, never in pipes or logs."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import redis

from janitor.dev import demo, embedded


def _env(url: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.endswith("REDIS_URL") and not k.startswith("JANITOR_")}
    return base | {"JANITOR_REDIS_URL": url, "JANITOR_LOG_FORMAT": "json"}


def _run_on_pty(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal; return (exit code, everything it drew)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        return proc.wait(30), b"".join(chunks).decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


class TestProgressInCommands:
    def test_no_bar_in_pipes(self, server: embedded.Server, client: redis.Redis) -> None:
        """diagnose and sweep with piped output print no bar and no carriage returns."""
        demo.fill(client, results=300)
        for args in (["diagnose", "--listen", "0"], ["sweep", "--dry-run"]):
            proc = subprocess.run(
                [sys.executable, "-m", "janitor", *args],
                env=_env(server.url),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert proc.returncode in (0, 1), proc.stderr
            assert "\r" not in proc.stderr + proc.stdout
            assert "keys/s" not in proc.stderr

    def test_bar_on_a_terminal(self, server: embedded.Server, client: redis.Redis) -> None:
        """On a terminal, diagnose draws the census bar and sweep its bar and final table."""
        demo.fill(client, results=300)
        code, drawn = _run_on_pty([sys.executable, "-m", "janitor", "diagnose", "--listen", "0"], _env(server.url))
        assert code in (0, 1), drawn
        assert "\rcensus [" in drawn
        assert "keys/s" in drawn
        assert "Findings" in drawn
        code, drawn = _run_on_pty([sys.executable, "-m", "janitor", "sweep", "--dry-run"], _env(server.url))
        assert code == 0, drawn
        assert "\rsweeping (" in drawn
        assert "kind / reason" in drawn
        assert "would delete" in drawn
