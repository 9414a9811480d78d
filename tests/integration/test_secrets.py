"""Secrets stay secret, and the HTTP port changes nothing.

Every verb runs with a password in the URL at every log level, right and wrong,
reachable and not; the daemon runs at debug level. The password (raw or
URL-encoded) must appear in no output, log line, metric, status page or error.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from janitor.dev import demo, embedded
from tests.support import ROOT, wait_for
from tests.support.daemons import launch, stop_all
from tests.support.servers import ENGINES

PASSWORD = "s3cr3t:p@ss/w%rd"
WRONG = "wr0ng:p@ss/w%rd"
VERBS = [
    ["sweep"],
    ["sweep", "--dry-run", "--json"],
    ["diagnose", "--listen", "0"],
    ["diagnose", "--json", "--listen", "0"],
    ["restore", "--dry-run", "--wait", "0"],
    ["config"],
]
LEVELS = ["debug", "info", "warning", "error"]


def secrets_in(text: str) -> list[str]:
    return [s for s in (PASSWORD, quote(PASSWORD, safe=""), WRONG, quote(WRONG, safe="")) if s in text]


@pytest.fixture(name="locked", scope="module", params=ENGINES)
def _locked(request: pytest.FixtureRequest) -> Iterator[embedded.Server]:
    """A server with a password and a dirty keyspace."""
    with embedded.running(request.param, "--requirepass", PASSWORD) as server:
        demo.fill(_client(server), results=300)
        yield server


def _client(server: embedded.Server) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, password=PASSWORD)


def _url(server: embedded.Server, password: str, port: int | None = None) -> str:
    return f"redis://:{quote(password, safe='')}@127.0.0.1:{port or server.port}/0"


def _run(args: list[str], url: str, level: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JANITOR_", "REDIS_URL"))}
    env |= {
        "JANITOR_REDIS_URL": url,
        "JANITOR_LOG_LEVEL": level,
        "JANITOR_SOCKET_TIMEOUT": "2",
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-m", "janitor", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    return f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"


def test_no_verb_prints_the_password(locked: embedded.Server) -> None:
    """Every verb at every log level with the right password; at debug (which prints the most) with a
    wrong one and against a closed port."""
    runs = [(args, _url(locked, PASSWORD), level) for args in VERBS for level in LEVELS]
    runs += [(args, _url(locked, WRONG), "debug") for args in VERBS]
    runs += [(args, _url(locked, PASSWORD, embedded.free_port()), "debug") for args in VERBS]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda run: _run(*run), runs))
    for (args, url, level), out in zip(runs, outs, strict=True):
        assert secrets_in(out) == [], (args, level, out)
        if not out.startswith("exit 0"):
            assert "***" in out, (args, url.rsplit("@", 1)[1], out)  # the failure names the masked URL


def test_daemon_exports_and_logs_no_password(locked: embedded.Server, tmp_path: Path) -> None:
    """A debug-level daemon: /metrics, /, /readyz, /livez and its log carry no password."""
    janitor = launch(tmp_path / "daemon.log", JANITOR_REDIS_URL=_url(locked, PASSWORD), JANITOR_LOG_LEVEL="debug")
    try:
        wait_for(lambda: "janitor_sweep_last_success" in janitor.get("/metrics")[1], 20, "a sweep")
        pages = {path: janitor.get(path) for path in ("/metrics", "/", "/readyz", "/livez")}
        assert {path: status for path, (status, _) in pages.items()} == dict.fromkeys(pages, 200)
        for path, (_, body) in pages.items():
            assert secrets_in(body) == [], path
        assert "redis://:***@" in pages["/"][1]
    finally:
        stop_all([janitor])
    assert secrets_in(janitor.log()) == []


def test_no_endpoint_writes_or_acts(locked: embedded.Server, tmp_path: Path) -> None:
    """Every method but GET is refused on every path; nothing a request sends changes Redis."""
    client = _client(locked)
    janitor = launch(
        tmp_path / "daemon.log",
        JANITOR_REDIS_URL=_url(locked, PASSWORD),
        JANITOR_DRY_RUN="true",  # so any change to the keyspace could only come from a request
    )
    try:
        wait_for(lambda: "janitor_sweep_last_success" in janitor.get("/metrics")[1], 20, "a dry sweep")

        def data() -> dict[bytes, bytes | None]:  # all but the lease the daemon renews
            return {k: client.dump(k) for k in client.scan_iter(count=1000) if b"celery-janitor:" not in k}

        before = data()
        for path in ("/", "/metrics", "/livez", "/readyz", "/sweep", "/restore", "/?run=1"):
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                request = urllib.request.Request(f"http://127.0.0.1:{janitor.port}{path}", data=b"{}", method=method)
                with pytest.raises(urllib.error.HTTPError) as refused:
                    urllib.request.urlopen(request, timeout=2)
                assert refused.value.code in {404, 405}, (method, path)
        assert janitor.get("/sweep")[0] == 404
        assert data() == before
    finally:
        stop_all([janitor])
