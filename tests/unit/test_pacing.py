"""Batch sizing and rate limiting (pure: a fake clock)."""

from __future__ import annotations

from janitor.redis_io.pacing import Pacer


class TestBatchGuard:
    def test_shrinks_below_the_guard_after_a_slow_call(self) -> None:
        """A call that blocked Redis past max_batch_ms makes the next batch small enough to fit."""
        pacer = Pacer(max_batch_ms=5, ceiling=1000, size=1000)
        pacer.observe(1000, 0.020)
        assert pacer.size == int(1000 * pacer.target_ms / 20)
        assert pacer.size >= pacer.floor

    def test_shrinks_back_to_the_target_under_the_guard(self) -> None:
        """Calls well over the target but under the guard shrink the batch too: a client waiting
        behind each call should wait about the target, not anything up to the guard."""
        pacer = Pacer(max_batch_ms=5, ceiling=1000, size=1000)
        pacer.observe(1000, 4 / 1000)  # 4 us per key: 4 ms, under the 5 ms guard
        assert pacer.size * 4 / 1000 <= pacer.target_ms

    def test_grows_back_when_redis_is_idle(self) -> None:
        """Fast calls grow the batch again, never past the ceiling (SCAN COUNT)."""
        pacer = Pacer(max_batch_ms=5, ceiling=300, size=50)
        for _ in range(20):
            pacer.observe(pacer.size, 0.0005)
        assert pacer.size == 300

    def test_growth_stops_at_the_target(self) -> None:
        """A batch grows only while its projected time stays at the target, well under the guard."""
        pacer = Pacer(max_batch_ms=5, ceiling=1000, size=100)
        for _ in range(20):
            pacer.observe(pacer.size, pacer.size * 0.005 / 1000)  # 5 us per key
        assert pacer.size == int(pacer.target_ms / 0.005)  # 1.5 ms at 5 us per key: 300 keys
        assert pacer.target_ms < pacer.max_batch_ms / 2

    def test_short_batches_do_not_grow_it(self) -> None:
        """A fast call on a partial batch (end of a page) says nothing about a full one."""
        pacer = Pacer(max_batch_ms=5, ceiling=1000, size=100)
        pacer.observe(7, 0.0001)
        assert pacer.size == 100

    def test_a_bound_on_a_call_grows_it_but_never_shrinks_it(self) -> None:
        """A reply read late (Python was busy) says only that the call took at most that long: under
        the target it may grow the batch, as an exact time would have; over it, it changes nothing."""
        late = Pacer(max_batch_ms=5, ceiling=1000, size=100)
        late.observe(100, 0.020, exact=False)
        assert late.size == 100
        exact = Pacer(max_batch_ms=5, ceiling=1000, size=100)
        for pacer in (late, exact):
            pacer.observe(100, 0.0005, exact=pacer is exact)
        assert late.size == exact.size > 100


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
