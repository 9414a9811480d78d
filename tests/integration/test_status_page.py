"""The status page in a real headless Chromium: the rendered page, and a real daemon whose password is refused."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from janitor.dev import embedded
from janitor.service.status_page import HEADERS, render
from tests.support import ROOT, wait_for
from tests.support.daemons import launch, stop_all
from tests.support.reports import status_state

ARTIFACTS = ROOT / "artifacts"


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(name="served")
def _served() -> Iterator[str]:
    """The rendered page on a local http.server, sent with the page's headers."""
    body = render(status_state())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            for k, v in HEADERS.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    port = embedded.free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _browser(exe: str, profile: str) -> list[str]:
    """Headless chromium that talks to nothing but the page's own server."""
    return [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ]


def _readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError):
        return 0, ""


class TestInABrowser:
    def test_headless_chromium_renders_the_page(self, served: str) -> None:
        """A real headless browser shows the content (DOM dump) and a screenshot is kept in artifacts/."""
        exe = _chromium()
        if exe is None:
            pytest.skip("chromium not installed (Debian: apt-get install -y chromium)")
        with tempfile.TemporaryDirectory(prefix="janitor-chromium-") as profile:
            flags = _browser(exe, profile)
            dom = subprocess.run(
                [*flags, "--dump-dom", served], capture_output=True, text=True, timeout=60, check=False
            )
            assert "12,431 result keys have no TTL (83%)" in dom.stdout, dom.stderr[-2000:]
            assert "Stuck messages" in dom.stdout
            assert "Hunter2Secret" not in dom.stdout
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "status-page.png"
            shot.unlink(missing_ok=True)
            subprocess.run(
                [*flags, f"--screenshot={shot}", "--window-size=1280,1600", served],
                capture_output=True,
                timeout=60,
                check=False,
            )
            assert shot.exists()
            assert shot.stat().st_size > 10_000

    def test_a_daemon_with_a_wrong_password_says_so_first(self, tmp_path: Path) -> None:
        """A real daemon whose password is refused: /readyz and the top of / both say authentication failed.

        The screenshot (artifacts/status-redis-down.png) is what an operator sees.
        """
        exe = _chromium()
        if exe is None:
            pytest.skip("chromium not installed (Debian: apt-get install -y chromium)")
        with embedded.running("", "--requirepass", "right-one") as srv:
            url = f"redis://janitor:WrongPass99@127.0.0.1:{srv.port}/0"
            janitor = launch(tmp_path / "janitor.log", JANITOR_REDIS_URL=url)
            try:
                wait_for(lambda: "authentication failed" in _readyz(janitor.port)[1], 30, "/readyz never said auth")
                assert _readyz(janitor.port)[0] == 503
                page_url = f"http://127.0.0.1:{janitor.port}/"
                with tempfile.TemporaryDirectory(prefix="janitor-chromium-") as profile:
                    flags = _browser(exe, profile)
                    dom = subprocess.run(
                        [*flags, "--dump-dom", page_url], capture_output=True, text=True, timeout=60, check=False
                    ).stdout
                    ARTIFACTS.mkdir(exist_ok=True)
                    shot = ARTIFACTS / "status-redis-down.png"
                    shot.unlink(missing_ok=True)
                    subprocess.run(
                        [*flags, f"--screenshot={shot}", "--window-size=1200,900", page_url],
                        capture_output=True,
                        timeout=60,
                        check=False,
                    )
            finally:
                stop_all([janitor])
        assert "Redis is down: authentication failed" in dom, dom[-3000:]
        assert dom.index("Redis is down") < dom.index("Findings") < dom.index("Last sweeps")
        assert "down since " in dom
        assert "503 redis unavailable: authentication failed" in dom
        assert "not checked: Redis is down (authentication failed" in dom
        assert "WrongPass99" not in dom
        assert "redis://janitor:***@127.0.0.1" in dom
        assert shot.exists()
        assert shot.stat().st_size > 10_000
