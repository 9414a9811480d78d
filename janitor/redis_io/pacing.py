"""How many keys go into one server-side batch, and how fast.

A Lua call blocks Redis for its whole run, so the batch size follows the
measured duration of each call: shrink when a call overran ``max_batch_ms``,
grow back while calls are well under it. ``max_keys_per_second`` holds the
sweep to a rate on a shared, latency-sensitive Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

# The time a batch aims at, as a share of max_batch_ms. Per-key cost varies from page to
# page, and Redis now and then stalls inside a call (growing its expires dict as TTLs are
# added: a rehash of millions of buckets), so a batch aims well below the guard. And a
# client waiting behind a batch waits about that long: at 5 ms, 1.75 ms per call.
HEADROOM = 0.35
# Projected this far over the target, the next batch shrinks to fit it.
OVERSHOOT = 1.5
# A script that judges keys one by one stops at this share of max_batch_ms and hands the rest
# back (DECIDE's ARGV[20]): the target above holds on average, this bounds a page that costs
# several times the average (long values clustered on one page).
DEADLINE = 0.6


@dataclass
class Pacer:
    max_batch_ms: float
    ceiling: int
    max_keys_per_second: int = 0
    floor: int = 10
    size: int = 100
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _started: float = field(default=-1.0, init=False)
    _keys: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.size = max(self.floor, min(self.size, self.ceiling))

    @property
    def target_ms(self) -> float:
        return self.max_batch_ms * HEADROOM

    def observe(self, keys: int, seconds: float, *, exact: bool = True) -> None:
        """Adjust the batch size after a call that handled ``keys`` keys in ``seconds``. ``exact=False``:
        it took at most ``seconds`` (its reply waited to be read), which can tell it fit, never that it overran."""
        ms = seconds * 1000
        fits = int(keys * self.target_ms / ms) if ms > 0 else self.ceiling
        if ms > self.target_ms * OVERSHOOT:
            if exact:
                self.size = max(self.floor, min(self.size, fits))
        elif keys >= self.size and fits > self.size:
            self.size = min(self.ceiling, int(self.size * 1.5) + 1, fits)

    def throttle(self, keys: int) -> None:
        """Sleep as long as needed to stay under ``max_keys_per_second``."""
        if not self.max_keys_per_second:
            return
        now = self.clock()
        if self._started < 0:
            self._started = now
        self._keys += keys
        ahead = self._keys / self.max_keys_per_second - (now - self._started)
        if ahead > 0:
            self.sleep(ahead)
