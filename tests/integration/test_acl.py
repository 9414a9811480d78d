"""Least privilege: the janitor works as the ACL users docs/acl.md defines, and never asks for more.

The ACL lines are read from docs/acl.md itself, so the document cannot drift
from what is tested. After each scenario ``ACL LOG`` must be empty: no command,
key or channel outside the grant was even attempted.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from janitor.dev import demo, embedded
from tests.support import acl_audit

PASSWORD = acl_audit.PASSWORD


@pytest.fixture(name="acl_client")
def _acl_client(client: redis.Redis) -> redis.Redis:
    """The documented users exist on the test server and the ACL log is empty."""
    for user, rules in acl_audit.acl_lines().items():
        client.acl_deluser(user)
        client.execute_command("ACL", "SETUSER", user, *rules)
    client.execute_command("ACL", "LOG", "RESET")
    return client


def _url(server: embedded.Server, user: str) -> str:
    return f"redis://{user}:{PASSWORD}@127.0.0.1:{server.port}/0"


def _run(*args: str, url: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("REDIS_URL") and not k.startswith("JANITOR_")}
    env |= {"JANITOR_REDIS_URL": url, **(extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "janitor", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _restored(scrape: str) -> float:
    found = re.search(r'^janitor_restored_total\{queue="celery"\} (\S+)$', scrape, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _denials(client: redis.Redis) -> list[str]:
    return [f"{e.get('reason')}:{e.get('object')}" for e in client.acl_log()]


class TestDocumentedAcl:
    def test_sweep_as_janitor(self, acl_client: redis.Redis, server: embedded.Server) -> None:
        """A full sweep of a dirty keyspace works as the documented janitor user, with no denial logged."""
        demo.fill(acl_client, results=1000)
        proc = _run("sweep", "--json", url=_url(server, "janitor"))
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["deleted"]["task"] > 0
        assert _denials(acl_client) == []

    def test_restore_as_janitor(self, acl_client: redis.Redis, server: embedded.Server) -> None:
        """Broker checks and restore work as the janitor user (demo's unacked entries are hours old)."""
        demo.fill(acl_client, results=100)
        proc = _run(
            "restore",
            "--json",
            "--wait",
            "0.2",
            url=_url(server, "janitor"),
            extra={"JANITOR_VISIBILITY_TIMEOUT": "60"},
        )
        assert proc.returncode == 0, proc.stderr
        assert _denials(acl_client) == []

    def test_diagnose_read_only(self, acl_client: redis.Redis, server: embedded.Server) -> None:
        """diagnose works as the read-only user: it needs no write permission at all."""
        demo.fill(acl_client, results=500)
        proc = _run("diagnose", "--json", "--listen", "0.5", url=_url(server, "janitor-ro"))
        assert proc.returncode in {0, 1}, proc.stderr
        assert json.loads(proc.stdout)["keyspace"]["total"] > 0
        # The one documented refusal: CONFIG GET notify-keyspace-events, which the grant leaves out.
        assert _denials(acl_client) == ["command:config|get"]

    def test_daemon_as_janitor(self, acl_client: redis.Redis, server: embedded.Server, tmp_path: Path) -> None:
        """The daemon (lease, sweeps, census, INFO, broker, heartbeats) runs as the janitor user, nothing denied."""
        demo.fill(acl_client, results=500)
        port = embedded.free_port()
        env = {k: v for k, v in os.environ.items() if not k.endswith("REDIS_URL") and not k.startswith("JANITOR_")}
        env |= {
            "JANITOR_REDIS_URL": _url(server, "janitor"),
            "JANITOR_METRICS_PORT": str(port),
            "JANITOR_METRICS_HOST": "127.0.0.1",
            "JANITOR_SWEEP_INTERVAL": "1",
            "JANITOR_CENSUS_INTERVAL": "1",
            "JANITOR_BROKER_INTERVAL": "1",
            "JANITOR_INFO_INTERVAL": "0.5",
            "JANITOR_LEASE_TTL": "2",
            "JANITOR_RESTORE_STUCK": "true",
            "JANITOR_VISIBILITY_TIMEOUT": "60",
        }
        log = (tmp_path / "daemon.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "janitor", "run"], env=env, stderr=log)
        try:
            deadline = time.monotonic() + 30
            text = ""
            while time.monotonic() < deadline:
                try:
                    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                except OSError:
                    text = ""
                if _restored(text) > 0 and "janitor_result_keys{" in text:
                    break
                time.sleep(0.3)
            assert _restored(text) > 0, "no restore ran as the janitor user"
            assert "janitor_redis_up 1.0" in text
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
            log.close()
        assert proc.returncode == 0
        # Asked once, then watch mode goes by its probe: the documented optional CONFIG GET.
        assert _denials(acl_client) == ["command:config|get"]
