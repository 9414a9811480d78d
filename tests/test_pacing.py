"""Batch sizing and rate limiting (pure: a fake clock)."""

from __future__ import annotations

from janitor.pacing import Pacer


class TestBatchGuard:
    def test_shrinks_below_the_guard_after_a_slow_call(self) -> None:
        """A call that blocked Redis past max_batch_ms makes the next batch small enough to fit."""
        pacer = Pacer(max_batch_ms=5, ceiling=1000, size=1000)
        pacer.observe(1000, 0.020)
        assert pacer.size <= 250
        assert pacer.size >= pacer.floor

    def test_grows_back_when_redis_is_idle(self) -> None:
        """Fast calls grow the batch again, never past the ceiling (SCAN COUNT)."""
        pacer = Pacer(max_batch_ms=5, ceiling=300, size=50)
        for _ in range(20):
            pacer.observe(pacer.size, 0.0005)
        assert pacer.size == 300

    def test_growth_stops_with_headroom_under_the_guard(self) -> None:
        """A batch grows only while its projected time stays at 60% of the guard: page-to-page
        variation in per-key cost must not push the next call over."""
        pacer = Pacer(max_batch_ms=5, ceiling=1000, size=500)
        for _ in range(10):
            pacer.observe(pacer.size, pacer.size * 0.005 / 1000)  # 5 us per key
        assert pacer.size == 600  # 600 keys x 5 us = 3 ms = 0.6 x 5 ms

    def test_short_batches_do_not_grow_it(self) -> None:
        """A fast call on a partial batch (end of a page) says nothing about a full one."""
        pacer = Pacer(max_batch_ms=5, ceiling=1000, size=100)
        pacer.observe(7, 0.0001)
        assert pacer.size == 100


class TestRate:
    def test_holds_keys_per_second(self) -> None:
        """With max_keys_per_second the pacer sleeps so the average rate never exceeds it."""
        now = [0.0]
        slept: list[float] = []

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            now[0] += seconds

        pacer = Pacer(max_batch_ms=5, ceiling=1000, max_keys_per_second=1000, clock=lambda: now[0], sleep=sleep)
        for _ in range(10):
            pacer.throttle(500)
        assert now[0] >= 4.5
        assert 500 * 10 / now[0] <= 1000 + 1e-9

    def test_unlimited_by_default(self) -> None:
        """No rate setting, no sleeping."""
        pacer = Pacer(max_batch_ms=5, ceiling=1000, sleep=lambda _s: (_ for _ in ()).throw(AssertionError("slept")))
        pacer.throttle(10_000)
