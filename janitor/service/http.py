"""HTTP: ``/metrics``, ``/livez``, ``/readyz``, the worker probes under ``/workers``; every other path is a 404.

prometheus_client's own WSGI app answers on any path, so a small dispatcher
sits in front of it. Served by wsgiref in daemon threads: a scrape never
waits for a sweep, and a stuck client never keeps the process alive.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

Readiness = Callable[[], tuple[bool, str]]  # (ready, one-line reason)
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
# environ -> (status line, headers, body); None when the page is turned off.
StatusPage = Callable[[dict[str, Any]], tuple[str, list[tuple[str, str]], bytes]]
# environ -> the answer under /workers (janitor.service.probes), or None for a path that is not a probe's.
WorkerProbes = Callable[[dict[str, Any]], tuple[str, list[tuple[str, str]], bytes] | None]


def make_app(
    registry: CollectorRegistry, ready: Readiness, status: StatusPage | None = None, probes: WorkerProbes | None = None
) -> WSGIApp:
    """The dispatcher. ``/livez`` never touches Redis: a Redis outage must not get the pod restarted.

    ``/`` is the human status page when ``status`` is given; it only reads
    what the jobs already collected, so a page view costs Redis nothing.
    """
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD", "GET") not in {"GET", "HEAD"}:
            return _reply(start_response, "405 Method Not Allowed", "use GET\n")
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/livez":
            return _reply(start_response, "200 OK", "ok\n")
        if path == "/readyz":
            ok, reason = ready()
            return _reply(start_response, "200 OK" if ok else "503 Service Unavailable", reason + "\n")
        if path == "/" and status is not None:
            line, headers, body = status(environ)
            start_response(line, [*headers, ("Content-Length", str(len(body)))])
            return [body]
        probe = probes(environ) if probes is not None and path.startswith("/workers") else None
        if probe is not None:
            line, headers, body = probe
            start_response(line, [*headers, ("Content-Length", str(len(body)))])
            return [body]
        return _reply(start_response, "404 Not Found", "not found: try /metrics, /livez or /readyz\n")

    return app


def _reply(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))])
    return [data]


class _Quiet(WSGIRequestHandler):
    """No access log: a scrape every 15 s would drown the janitor's own lines."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _V6Server(_ThreadingServer):
    address_family = socket.AF_INET6


class _DualStackServer(_V6Server):
    def server_bind(self) -> None:
        # IPv4 clients too (Linux default, but not every platform's): Railway's
        # legacy private network is IPv6-only, most others are IPv4.
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def serve(app: WSGIApp, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Start serving in a daemon thread. ``host=""``: all interfaces, IPv6 and IPv4 when possible."""
    server: WSGIServer
    if host:
        cls = _DualStackServer if host == "::" else _V6Server if ":" in host else _ThreadingServer
        server = make_server(host, port, app, server_class=cls, handler_class=_Quiet)
    else:
        try:
            server = make_server("::", port, app, server_class=_DualStackServer, handler_class=_Quiet)
        except OSError:  # no IPv6 in this container
            server = make_server("0.0.0.0", port, app, server_class=_ThreadingServer, handler_class=_Quiet)  # noqa: S104
    thread = threading.Thread(target=server.serve_forever, name="janitor-http", daemon=True)
    thread.start()
    return server, thread
