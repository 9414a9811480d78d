"""The status page: what it shows, what it never shows, who may see it (a real browser: integration tier)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import redis
from prometheus_client import CollectorRegistry

from janitor import config
from janitor.reports.findings import MemoryInfo
from janitor.service.health import RedisHealth
from janitor.service.metrics import Metrics
from janitor.service.status_book import Live, StatusBook
from janitor.service.status_page import HEADERS, Banner, RedisState, StatusState, authorize, render
from tests.support.reports import NOW, status_state


def _settings(**env: str) -> config.Settings:
    return config.load({"JANITOR_REDIS_URL": "redis://127.0.0.1:6379/0", **env})


class TestRender:
    def test_shows_sweeps_census_findings_queues_stuck(self) -> None:
        """The page carries the last sweep, census rows, findings, queue depths and stuck messages."""
        page = render(status_state()).decode()
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
        page = render(status_state()).decode()
        assert "Hunter2Secret" not in page
        assert "redis://user:***@redis.internal:6379/0" in page
        assert "<script>" not in page
        assert "&lt;script&gt;" in page

    def test_broker_elsewhere_is_shown_masked(self) -> None:
        """With the broker on another server, both URLs are on the page, neither with its password."""
        state = dataclasses.replace(status_state(), broker_url="redis://:BrokerSecret@broker.internal:6379/0")
        page = render(state).decode()
        assert "broker redis://:***@broker.internal:6379/0" in page
        assert "BrokerSecret" not in page
        assert "broker redis" not in render(status_state()).decode()

    def test_no_script_no_external_assets(self) -> None:
        """No JavaScript and nothing loaded from elsewhere; CSP forbids both."""
        page = render(status_state()).decode().lower()
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


AUTH_FAILED = "authentication failed: check the password in the URL (WRONGPASS)"


def _memory(used: int, maxmemory: int, policy: str = "noeviction") -> MemoryInfo:
    return MemoryInfo(used=used, peak=used, maxmemory=maxmemory, fragmentation=1.1, policy=policy, evicted_keys=7)


def _banner_of(page: str) -> str:
    start = page.index("<div class='banner")
    return page[start : page.index("</div>", start)]


class TestBanner:
    def test_redis_down_comes_first_with_reason_and_since(self) -> None:
        """With Redis down the first thing on the page is that, why, and since when; not a 'not checked yet'."""
        state = status_state()
        state.banner = Banner(
            RedisState(False, AUTH_FAILED, NOW - dt.timedelta(minutes=3)),
            ready=(False, f"redis unavailable: {AUTH_FAILED}"),
            leader=False,
            next_sweep=NOW + dt.timedelta(seconds=20),
        )
        page = render(state).decode()
        banner = _banner_of(page)
        assert page.index("Redis is down") < page.index("Findings") < page.index("Last sweeps")
        assert "banner bad" in banner
        assert f"Redis is down: {AUTH_FAILED}" in banner
        assert "down since 2025-06-01 11:57:00 UTC (3 min)" in banner
        assert f"503 redis unavailable: {AUTH_FAILED}" in banner
        assert "not leader: the lease lives in Redis, which cannot be reached" in banner
        assert "once Redis answers and this janitor holds the lease" in banner

    def test_leader_memory_and_sweeps_when_all_is_well(self) -> None:
        """Up: since when, leader, memory of maxmemory with its policy, the last sweep and when the next one runs."""
        state = status_state()
        state.banner = Banner(
            RedisState(True, "", NOW - dt.timedelta(hours=2)),
            ready=(True, "ok"),
            leader=True,
            memory=_memory(3 * 2**29, 2**31, "volatile-lru"),
            info_at=NOW - dt.timedelta(seconds=10),
            next_sweep=NOW + dt.timedelta(minutes=4),
        )
        banner = _banner_of(render(state).decode())
        assert "banner good" in banner
        assert "Redis is up; ready" in banner
        assert "up since 2025-06-01 10:00:00 UTC (2.0 h)" in banner
        assert "leader: this janitor holds the lease and sweeps" in banner
        assert "1.5 GiB of 2.0 GiB maxmemory (75%); policy volatile-lru; 7 keys evicted (INFO read 10 s ago)" in banner
        assert "5 min ago (2025-06-01 11:55:00 UTC), live: 8,000 deleted, 9,000 TTLs set, 2 skipped" in banner
        assert "in 4 min (2025-06-01 12:04:00 UTC)" in banner

    def test_a_failed_sweep_is_the_headline(self) -> None:
        """Redis up but /readyz failing (the last sweep failed): the headline says why, in red."""
        state = StatusState(
            generated_at=NOW,
            banner=Banner(RedisState(True, "", NOW), ready=(False, "last sweep failed: response: OOM"), leader=True),
        )
        banner = _banner_of(render(state).decode())
        assert "banner bad" in banner
        assert "Not ready: last sweep failed: response: OOM" in banner
        assert "none finished yet" in banner
        assert "Memory</th><td>not read yet" in banner

    def test_follower_and_no_memory_limit(self) -> None:
        """A follower says who sweeps; no maxmemory is said plainly (no percentage of zero)."""
        state = StatusState(
            generated_at=NOW,
            banner=Banner(
                RedisState(True, "", NOW),
                ready=(True, "ok"),
                leader=False,
                memory=_memory(10 * 2**20, 0),
                info_at=NOW,
            ),
        )
        banner = _banner_of(render(state).decode())
        assert "follower: another janitor holds the lease and sweeps" in banner
        assert "on the leader; this janitor sweeps as soon as it takes the lease" in banner
        assert "10.0 MiB, no maxmemory limit; policy noeviction" in banner

    def test_not_checked_yet_and_escaped(self) -> None:
        """Before the first check the banner says so; a reason is escaped like every other value."""
        page = render(StatusState(generated_at=NOW, banner=Banner(RedisState(None)))).decode()
        assert "banner warn" in page
        assert "Redis not checked yet" in page
        down = Banner(RedisState(False, "<b>odd</b>", NOW))
        page = render(StatusState(generated_at=NOW, banner=down)).decode()
        assert "&lt;b&gt;odd&lt;/b&gt;" in page
        assert "<b>" not in page


class TestBook:
    def test_the_daemons_health_reaches_the_page(self) -> None:
        """The book shows RedisHealth's state and when it last flipped; a new reason while down keeps the time."""
        now = [1_748_779_200.0]  # 2025-06-01 12:00:00 UTC
        health = RedisHealth(Metrics(CollectorRegistry()), "redis://h:6379/0", lambda: None, clock=lambda: now[0])
        live = Live(health.snapshot, lambda: False, lambda: (False, "redis unavailable"), lambda: None)
        book = StatusBook(_settings(), live=live)
        assert book.state().banner == Banner(RedisState(None, "not checked yet"), (False, "redis unavailable"), False)
        health.failed(redis.AuthenticationError("WRONGPASS invalid username-password pair"))
        now[0] += 60
        health.failed(redis.ConnectionError("Error 111 connecting to h:6379. Connection refused."))
        state = book.state()
        assert state.banner is not None
        assert state.banner.redis.up is False
        assert "cannot reach Redis" in state.banner.redis.reason
        assert state.banner.redis.since == dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
        # the broker finding says why it was not checked, instead of "not checked yet"
        broker = next(f for f in state.findings if f.code == "broker_unavailable")
        assert broker.evidence.startswith("not checked: Redis is down (cannot reach Redis")
        now[0] += 60
        health.ok()
        up = book.state().banner
        assert up is not None
        assert up.redis == RedisState(True, "", dt.datetime(2025, 6, 1, 12, 2, tzinfo=dt.UTC))

    def test_info_feeds_the_memory_line(self) -> None:
        """The last INFO read gives the memory line and its time."""
        live = Live(lambda: RedisState(True, "", NOW), lambda: True, lambda: (True, "ok"), lambda: None)
        book = StatusBook(_settings(), live=live)
        book.read_info({"used_memory": 2**20, "maxmemory": 2**22, "maxmemory_policy": "noeviction"})
        banner = book.state().banner
        assert banner is not None
        assert banner.memory is not None
        assert (banner.memory.used, banner.memory.maxmemory, banner.memory.policy) == (2**20, 2**22, "noeviction")
        assert banner.info_at is not None

    def test_no_live_daemon_no_banner(self) -> None:
        """A book without a daemon behind it (tools, tests) renders the page without a banner."""
        assert StatusBook(_settings()).state().banner is None
        assert "class='banner" not in render(StatusBook(_settings()).state()).decode()


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
