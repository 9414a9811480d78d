"""A real Prometheus scraping a real daemon, with the shipped scrape config and alert rules.

Prometheus (Debian's `prometheus`, installed by `make test`) runs on a loopback port with
deploy/prometheus/prometheus.yml, changed only where a test must: 1 s scrape and rule
intervals, the daemon's port as target, and every `for:` of alerts.yml shortened to 2 s
(the shipped 5-30 min would not fit a test). The daemon first runs with JANITOR_DRY_RUN
(it counts, writes nothing): the "result keys without TTL" alert fires. Then the same
port is served by a daemon that sweeps: the keys get their TTL and the alert resolves.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from janitor.dev import demo, embedded
from tests.support import wait_for
from tests.support.deploy import DEPLOY, ROOT, daemon_env, running_daemon
from tests.support.servers import ENGINES

ALERT = "CeleryResultKeysWithoutTTL"
pytestmark = pytest.mark.slow


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as reply:
            body = json.loads(reply.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]  # type: ignore[no-any-return]

    def alert_state(self, name: str) -> str:
        states = [a["state"] for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name]
        return states[0] if states else "inactive"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False


@pytest.fixture(name="prometheus")
def _prometheus(tmp_path: Path) -> Iterator[tuple[Prometheus, int]]:
    """A Prometheus scraping 127.0.0.1:<target port>, with the test copy of alerts.yml; yields (api, target port)."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: `make test` installs it (scripts/system-deps.sh)"
    target = embedded.free_port()
    rules = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    rules, shortened = re.subn(r"(?m)^(\s+for:) \S+$", r"\1 2s", rules)
    assert shortened == rules.count("- alert:")  # every rule waits 2 s here
    (tmp_path / "alerts.yml").write_text(rules)
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (job,) = cfg["scrape_configs"]
    job.update(scrape_interval="1s", scrape_timeout="1s")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{target}"]}]
    cfg["rule_files"] = [str(tmp_path / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    port = embedded.free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    api = Prometheus(port)
    try:
        wait_for(lambda: api.ready() or proc.poll() is not None, 30, "prometheus /-/ready")
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
        yield api, target
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.mark.parametrize("engine_server", ENGINES[:1], indirect=True)
def test_keys_without_ttl_alert_fires_then_resolves(
    prometheus: tuple[Prometheus, int], server: embedded.Server, client: redis.Redis, tmp_path: Path
) -> None:
    started = time.monotonic()
    prom, port = prometheus
    written = demo.fill(client, results=2000)
    assert written
    command = [sys.executable, "-m", "janitor", "run"]

    # 1. A dry run counts the keys without TTL and leaves them: the alert fires.
    env = daemon_env(server, port, JANITOR_DRY_RUN="true", JANITOR_SWEEP_INTERVAL="600")
    with running_daemon(command, env, port, tmp_path / "dry.log", ROOT) as dry:
        wait_for(lambda: prom.query('up{job="celery-janitor"} == 1'), 15, "the daemon scraped")
        wait_for(lambda: prom.alert_state(ALERT) == "firing", 30, f"{ALERT} firing")
        (without_ttl,) = prom.query('sum(janitor_result_keys{ttl="false"})')
        assert float(without_ttl["value"][1]) > 1000
        assert prom.query('janitor_sweep_last_success_timestamp_seconds{sweep="results"}')
        assert prom.query("janitor_dry_run == 1")
        assert dry.sample("janitor_is_leader") == 1
    assert sum(client.ttl(key) == -1 for key in client.scan_iter("celery-task-meta-*", count=1000)) > 1000

    # 2. The same target, now sweeping: every result key gets a TTL and the alert resolves.
    env = daemon_env(server, port, JANITOR_SWEEP_INTERVAL="600")
    with running_daemon(command, env, port, tmp_path / "sweep.log", ROOT):
        wait_for(lambda: prom.query("janitor_dry_run == 0"), 15, "the sweeping daemon scraped")
        wait_for(lambda: prom.alert_state(ALERT) == "inactive", 30, f"{ALERT} resolved")
        assert not prom.query(f'ALERTS{{alertname="{ALERT}"}}')
        assert prom.query('janitor_keys_ttl_applied_total{kind="task"} > 0')
    assert all(client.ttl(key) != -1 for key in client.scan_iter("celery-task-meta-*", count=1000))
    assert time.monotonic() - started < 60
