"""The HTTP surface: three paths, 404 elsewhere, readiness from a callback, real sockets."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge

from janitor.dev import embedded
from janitor.service import http


def _get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(name="served")
def _served() -> Any:
    registry = CollectorRegistry()
    Gauge("janitor_test_value", "A value.", registry=registry).set(3)
    state = {"ready": (False, "redis unavailable: cannot reach Redis")}
    port = embedded.free_port()
    httpd, thread = http.serve(http.make_app(registry, lambda: state["ready"]), "", port)
    yield port, state
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


class TestPaths:
    def test_metrics_livez_and_404(self, served: Any) -> None:
        """/metrics serves the registry, /livez is always 200, any other path is a 404."""
        port, _ = served
        status, body = _get(port, "/metrics")
        assert status == 200
        assert "janitor_test_value 3.0" in body
        assert _get(port, "/livez") == (200, "ok\n")
        for path in ("/", "/metrics/x", "/favicon.ico", "/readyz/"):
            assert _get(port, path)[0] == 404, path

    def test_readyz_follows_the_callback(self, served: Any) -> None:
        """503 with the reason while not ready, 200 once it is."""
        port, state = served
        assert _get(port, "/readyz") == (503, "redis unavailable: cannot reach Redis\n")
        state["ready"] = (True, "ok")
        assert _get(port, "/readyz") == (200, "ok\n")

    def test_ipv4_and_ipv6_clients(self, served: Any) -> None:
        """The default bind ('::' dual-stack, else 0.0.0.0) answers IPv4 clients, and IPv6 ones when bound to '::'."""
        port, _ = served
        assert _get(port, "/livez", "127.0.0.1")[0] == 200
        try:
            status = _get(port, "/livez", "[::1]")[0]
        except urllib.error.URLError:
            pytest.skip("no IPv6 loopback here")
        assert status == 200


def test_explicit_host() -> None:
    """JANITOR_METRICS_HOST=127.0.0.1 binds there only."""
    port = embedded.free_port()
    httpd, thread = http.serve(http.make_app(CollectorRegistry(), lambda: (True, "ok")), "127.0.0.1", port)
    try:
        assert httpd.server_address[0] == "127.0.0.1"
        assert _get(port, "/readyz") == (200, "ok\n")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
