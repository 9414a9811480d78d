"""`celery-janitor run` as real processes against a real server.

Each daemon is `python -m janitor run` with short intervals and its own
metrics port; tests read what it does through /metrics, /readyz, its JSON log
and the keys left in Redis.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable

import pytest
import redis

from janitor.dev import demo, embedded
from tests.support import wait_for
from tests.support.daemons import LEASE_TTL, Janitor, old_results


def _leaders(janitors: list[Janitor]) -> list[Janitor]:
    return [j for j in janitors if j.sample("janitor_is_leader") == 1]


class TestOneActiveSweeper:
    def test_one_leader_failover_and_a_paused_leader_steps_down(
        self, spawn: Callable[..., Janitor], client: redis.Redis
    ) -> None:
        """Of three, one sweeps; SIGKILL it and another leads within the TTL; SIGSTOP that one
        past its lease and, once resumed, it is a follower again next to the new leader."""
        demo.fill(client, results=2000)
        janitors = [spawn(), spawn(), spawn()]
        wait_for(lambda: len(_leaders(janitors)) == 1, 10, "one leader")
        leader = _leaders(janitors)[0]
        wait_for(lambda: (leader.sample("janitor_keys_scanned_total", sweep="results") or 0) > 0, 10, "a sweep")
        time.sleep(1.5)  # several sweep intervals: followers would have swept by now
        followers = [j for j in janitors if j is not leader]
        assert [j.sample("janitor_keys_scanned_total", sweep="results") for j in followers] == [None, None]
        assert all(j.sample("janitor_redis_up") == 1 for j in janitors)
        assert all(j.get("/readyz")[0] == 200 for j in janitors)

        leader.process.send_signal(signal.SIGKILL)
        # How soon a follower polls after the lease lapses is tested with the lease alone (test_lease.py);
        # here, only that one takes over, with room for a loaded machine.
        wait_for(lambda: len(_leaders(followers)) == 1, LEASE_TTL + 10, "takeover")
        second = _leaders(followers)[0]
        third = next(j for j in followers if j is not second)

        wait_for(lambda: "janitor_result_keys{" in second.get("/metrics")[1], 10, "the new leader's census")
        second.process.send_signal(signal.SIGSTOP)
        wait_for(lambda: third.sample("janitor_is_leader") == 1, LEASE_TTL + 3, "takeover from a paused leader")
        second.process.send_signal(signal.SIGCONT)
        wait_for(lambda: second.sample("janitor_is_leader") == 0, 5, "the resumed leader steps down")
        # Its census is stale now: only the leader exports one.
        wait_for(lambda: "janitor_result_keys{" not in second.get("/metrics")[1], 5, "the ex-leader's census to go")
        time.sleep(LEASE_TTL)
        assert [j.sample("janitor_is_leader") for j in (second, third)] == [0, 1]
        assert second.events("lease.lost") or second.events("sweep.fenced")

    def test_a_paused_leader_cannot_write(self, spawn: Callable[..., Janitor], client: redis.Redis) -> None:
        """A leader paused mid-sweep past its lease resumes into a FENCED batch: nothing written
        while it was stopped, or after, is touched by it."""
        old_results(client, 3000, "old")
        janitor = spawn(JANITOR_MAX_KEYS_PER_SECOND="150", JANITOR_SWEEP_INTERVAL="60")
        wait_for(
            lambda: (janitor.sample("janitor_keys_deleted_total", kind="task", reason="retention") or 0) > 0,
            10,
            "first deletes",
        )
        janitor.process.send_signal(signal.SIGSTOP)
        time.sleep(LEASE_TTL + 0.5)
        lease_key = b"celery-janitor:lease"
        assert client.get(lease_key) is None  # expired while the leader was stopped
        client.set(lease_key, "99:another-janitor", px=60_000)  # what the next leader would write
        fresh = old_results(client, 200, "written-while-stopped")
        before = {k: client.pttl(k) for k in client.scan_iter(match="celery-task-meta-*", count=1000)}
        assert set(fresh) <= set(before)

        janitor.process.send_signal(signal.SIGCONT)
        wait_for(lambda: janitor.events("sweep.fenced"), 10, "a FENCED batch")
        time.sleep(0.5)
        after = {k: client.pttl(k) for k in client.scan_iter(match="celery-task-meta-*", count=1000)}
        assert after == before
        assert "FENCED" in janitor.events("sweep.fenced")[0]["detail"]
        assert janitor.sample("janitor_sweep_errors_total", sweep="results", error="fenced") == 1
        assert janitor.sample("janitor_is_leader") == 0
        assert client.get(lease_key) == b"99:another-janitor"


class TestRedisOutage:
    def test_survives_a_redis_restart(self, spawn: Callable[..., Janitor], server: embedded.Server) -> None:
        """Redis killed mid-run: /readyz 503, janitor_redis_up 0, one log line; back: 200 and sweeps resume."""
        janitor = spawn()
        wait_for(lambda: janitor.get("/readyz")[0] == 200, 10, "ready")
        wait_for(lambda: janitor.sample("janitor_sweep_last_success_timestamp_seconds", sweep="results"), 10, "a sweep")
        server.stop()
        wait_for(lambda: janitor.get("/readyz")[0] == 503, 5, "/readyz 503 while Redis is down")
        assert janitor.sample("janitor_redis_up") == 0
        time.sleep(2)  # several failed attempts
        server.restart()
        restarted = time.time()
        wait_for(lambda: janitor.get("/readyz")[0] == 200, 15, "/readyz 200 after Redis is back")
        wait_for(
            lambda: (janitor.sample("janitor_sweep_last_success_timestamp_seconds", sweep="results") or 0) > restarted,
            10,
            "a sweep after the restart",
        )
        assert janitor.process.poll() is None
        assert (janitor.sample("janitor_redis_errors_total", error="connection") or 0) >= 1
        assert janitor.sample("janitor_redis_up") == 1
        assert len(janitor.events("redis.down")) == 1  # one line per change of state, not per retry
        assert [e["recovered"] for e in janitor.events("redis.up")] == [False, True]
        assert "cannot reach Redis" in janitor.events("redis.down")[0]["detail"]


class TestShutdown:
    def test_sigterm_mid_sweep_exits_clean_between_batches(
        self, spawn: Callable[..., Janitor], client: redis.Redis
    ) -> None:
        """SIGTERM during a long sweep: exit 0 within the timeout, and Redis shows exactly the
        batches the janitor reported, no more (no half-done batch)."""
        n = 60_000
        keys = old_results(client, n, "big")
        janitor = spawn(JANITOR_MAX_KEYS_PER_SECOND="15000", JANITOR_SWEEP_INTERVAL="60", JANITOR_CENSUS_INTERVAL="600")
        wait_for(lambda: (janitor.sample("janitor_keys_scanned_total", sweep="results") or 0) > 5000, 15, "mid-sweep")
        janitor.process.send_signal(signal.SIGTERM)
        rc = janitor.process.wait(30)
        assert rc == 0  # 0: every batch finished within JANITOR_SHUTDOWN_TIMEOUT; 1 would say it was cut short
        stopped = janitor.events("sweep.stopped")
        assert len(stopped) == 1
        assert not stopped[0]["completed"]
        assert stopped[0]["stopping"]
        remaining = sum(client.exists(*keys[i : i + 5000]) for i in range(0, n, 5000))
        assert 0 < stopped[0]["deleted"]["task"] == n - remaining
        assert janitor.events("daemon.stopped")[0]["lease_released"]
        assert client.get(b"celery-janitor:lease") is None


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_live_scrape_passes_promtool(spawn: Callable[..., Janitor], client: redis.Redis) -> None:
    """After a sweep, census and INFO read of a dirty keyspace, `promtool check metrics` reports nothing."""
    demo.fill(client, results=2000)
    janitor = spawn()
    wait_for(lambda: janitor.sample("janitor_result_oldest_age_seconds") is not None, 10, "a census")
    wait_for(lambda: janitor.sample("janitor_redis_memory_used_bytes") is not None, 10, "INFO gauges")
    status, text = janitor.get("/metrics")
    assert status == 200
    assert "janitor_keys_deleted_total" in text
    assert "_created" not in text
    lint = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True, check=False)
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, b"")


class TestBrokerAndStatusPage:
    def test_broker_gauges_and_status_page(self, spawn: Callable[..., Janitor], client: redis.Redis) -> None:
        """The daemon checks the broker on its own schedule and shows it all on `/`, without secrets."""
        demo.fill(client, results=300)  # 40 queued messages, 10 unacked, leaked reply lists
        janitor = spawn(JANITOR_BROKER_INTERVAL="0.5")
        wait_for(lambda: janitor.sample("celery_queue_length", queue_name="celery") == 40, 20, "no queue gauge")
        unacked = sum(janitor.sample("janitor_unacked_messages", state=s) or 0 for s in ("stuck", "active", "held"))
        assert unacked == 10
        wait_for(lambda: "No sweep has finished yet" not in janitor.get("/")[1], 20, "no sweep on the page")
        status, page = janitor.get("/")
        assert status == 200
        assert "celery" in page
        assert "<script" not in page

    def test_status_page_token(self, spawn: Callable[..., Janitor], server: embedded.Server) -> None:
        """With JANITOR_STATUS_TOKEN the page needs the token; the password never shows."""
        url = server.url  # a password in the URL must be masked on the page
        janitor = spawn(JANITOR_STATUS_TOKEN="s3cret-token", JANITOR_REDIS_URL=url.replace("//", "//user:Hunter2@"))
        assert janitor.get("/")[0] == 401
        status, page = janitor.get("/?token=s3cret-token")
        assert status == 200
        assert "Hunter2" not in page
        assert "s3cret-token" not in page

    def test_status_page_off(self, spawn: Callable[..., Janitor]) -> None:
        """JANITOR_STATUS_PAGE=false turns `/` into a 404."""
        janitor = spawn(JANITOR_STATUS_PAGE="false")
        assert janitor.get("/")[0] == 404
        assert janitor.get("/livez")[0] == 200
