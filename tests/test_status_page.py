"""The status page: what it shows, what it never shows, who may see it, and how a real browser renders it."""

from __future__ import annotations

import datetime as dt
import http.server
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from janitor import config, embedded
from janitor.census import Census
from janitor.findings import Finding, Workers
from janitor.status_page import HEADERS, StatusState, SweepRun, authorize, render
from janitor.sweeps.broker import BrokerReport, QueueDepth, UnackedMessage
from janitor.sweeps.results import SweepReport

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)


def _state() -> StatusState:
    report = SweepReport(dry_run=False, scanned=20_000, celery_keys=18_000, completed=True, duration_s=1.5)
    report.ttl_applied["task"] = 9_000
    report.deleted["task"] = 8_000
    report.skipped["too_large"] = 2
    report.bytes_deleted = 3 * 1024 * 1024
    census = Census(total=21_000)
    census.without_ttl["task:SUCCESS"] = 12_431
    census.with_ttl["task:SUCCESS"] = 2_569
    census.sampled["task:SUCCESS"], census.sampled_bytes["task:SUCCESS"] = 10, 3000
    census.result_age["1-7d"] = 15_000
    broker = BrokerReport(now=NOW.timestamp(), visibility_timeout=3600, unacked_total=3)
    broker.queues = [QueueDepth("celery", 40, {0: 30, 9: 10}, None)]
    broker.by_state["stuck"] = 1
    broker.stuck = [
        UnackedMessage(
            "tag1",
            "app.<script>alert(1)</script>",
            "tid-1",
            "celery",
            0,
            NOW.timestamp() - 7200,
            None,
            None,
            2,
            "stuck",
        )
    ]
    return StatusState(
        generated_at=NOW,
        redis_url="redis://user:Hunter2Secret@redis.internal:6379/0",
        sweeps=[SweepRun(NOW - dt.timedelta(minutes=5), report)],
        census=census,
        census_at=NOW - dt.timedelta(minutes=10),
        findings=[
            Finding(
                "error",
                "eviction_policy_unsafe",
                "maxmemory-policy allkeys-lru can evict",
                "policy=allkeys-lru",
                "noeviction",
            ),
            Finding(
                "warning",
                "results_without_ttl",
                "12,431 result keys have no TTL (83%)",
                "12,431 of 15,000",
                "set `result_expires`",
            ),
        ],
        broker=broker,
        broker_at=NOW - dt.timedelta(seconds=30),
        workers=Workers({"w1@host": NOW.timestamp()}, 5.0),
    )


def _settings(**env: str) -> config.Settings:
    return config.load({"JANITOR_REDIS_URL": "redis://127.0.0.1:6379/0", **env})


class TestRender:
    def test_shows_sweeps_census_findings_queues_stuck(self) -> None:
        """The page carries the last sweep, census rows, findings, queue depths and stuck messages."""
        page = render(_state()).decode()
        for needle in (
            "Last sweeps",
            "18,000",
            "8,000",
            "3.0 MiB",
            "task:SUCCESS",
            "12,431",
            "1-7d",
            "15,000",
            "12,431 result keys have no TTL (83%)",
            "maxmemory-policy allkeys-lru can evict",
            "celery",
            "p0: 30, p9: 10",
            "tid-1",
            "w1@host",
        ):
            assert needle in page, needle

    def test_no_secret_and_everything_escaped(self) -> None:
        """The Redis password never appears, and stored data cannot inject markup."""
        page = render(_state()).decode()
        assert "Hunter2Secret" not in page
        assert "redis://user:***@redis.internal:6379/0" in page
        assert "<script>" not in page
        assert "&lt;script&gt;" in page

    def test_no_script_no_external_assets(self) -> None:
        """No JavaScript and nothing loaded from elsewhere; CSP forbids both."""
        page = render(_state()).decode().lower()
        assert "<script" not in page
        assert "src=" not in page
        assert "href=" not in page
        assert "default-src 'none'" in HEADERS["Content-Security-Policy"]

    def test_empty_state(self) -> None:
        """Before any job ran the page still renders and says so."""
        page = render(StatusState(generated_at=NOW)).decode()
        assert "No sweep has finished yet" in page
        assert "No census yet" in page
        assert "No findings" in page


class TestAuthorize:
    def test_open_without_token(self) -> None:
        """With no token set, anyone reaching the port sees the page."""
        assert authorize(_settings(), {}, "")

    def test_turned_off(self) -> None:
        """JANITOR_STATUS_PAGE=false turns the page off."""
        assert not authorize(_settings(JANITOR_STATUS_PAGE="false"), {}, "")

    def test_token_by_query_or_bearer(self) -> None:
        """With a token: ?token= or Authorization: Bearer must match exactly."""
        s = _settings(JANITOR_STATUS_TOKEN="s3cr3t-token")
        assert authorize(s, {}, "token=s3cr3t-token")
        assert authorize(s, {"authorization": "Bearer s3cr3t-token"}, "")
        assert authorize(s, {"Authorization": "bearer s3cr3t-token"}, {})
        assert not authorize(s, {}, "")
        assert not authorize(s, {}, "token=s3cr3t")
        assert not authorize(s, {"Authorization": "Basic s3cr3t-token"}, "")

    def test_token_never_printed(self) -> None:
        """The token is not in the settings' repr or dump (what `celery-janitor config` prints)."""
        s = _settings(JANITOR_STATUS_TOKEN="s3cr3t-token")
        assert "s3cr3t-token" not in repr(s)
        assert "s3cr3t-token" not in str(s.model_dump())


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(name="served")
def _served() -> Iterator[str]:
    """The rendered page on a local http.server, sent with the page's headers."""
    body = render(_state())

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


class TestInABrowser:
    def test_headless_chromium_renders_the_page(self, served: str) -> None:
        """A real headless browser shows the content (DOM dump) and a screenshot is kept in artifacts/."""
        exe = _chromium()
        if exe is None:
            pytest.skip("chromium not installed (Debian: apt-get install -y chromium)")
        with tempfile.TemporaryDirectory(prefix="janitor-chromium-") as profile:
            flags = [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                f"--user-data-dir={profile}",
            ]
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
