"""A tiny progress bar for long SCANs: stderr, and only when stderr is a terminal.

Pipes, log collectors and CI get nothing from here, so machine-readable
output on stdout (and JSON log lines) is never interleaved with redraws.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

_WIDTH = 28
_REDRAW_S = 0.1  # redraw at most ten times a second: a fast SCAN must not be slowed by the terminal


def _human(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """``done`` out of ``total`` keys with rate and ETA; a no-op when not on a terminal.

    ``total`` comes from DBSIZE, which SCAN may overshoot (keys written during
    the walk, or a rehash returning a key twice): the bar then stays at 99 %.
    """

    def __init__(
        self,
        total: int | None,
        *,
        label: str = "scanning",
        stream: TextIO | None = None,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.enabled = _isatty(self.stream) if enabled is None else enabled
        self.total = total or None
        self.label = label
        self.done = 0
        self._clock = clock
        self._started = clock()
        self._drawn_at = float("-inf")
        self._drawn = False

    def update(self, done: int, *, force: bool = False) -> None:
        """Record progress; redraws when enough time has passed (or ``force``)."""
        self.done = done
        if not self.enabled:
            return
        now = self._clock()
        if force or now - self._drawn_at >= _REDRAW_S:
            self._drawn_at = now
            self.stream.write("\r" + self.line(now) + "\x1b[K")
            self.stream.flush()
            self._drawn = True

    def line(self, now: float | None = None) -> str:
        """The bar as text (also what tests read)."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        text = f"{self.label} {self.done:,}"
        if self.total:
            frac = min(self.done / self.total, 0.99 if self.done < self.total else 1.0)
            filled = int(frac * _WIDTH)
            bar = "#" * filled + "." * (_WIDTH - filled)
            eta = (self.total - self.done) / rate if rate > 0 and self.done < self.total else 0.0
            text = f"{self.label} [{bar}] {frac:4.0%} {self.done:,}/{self.total:,} keys"
            return f"{text}  {rate:,.0f} keys/s  ETA {_human(eta)}"
        return f"{text} keys  {rate:,.0f} keys/s"

    def close(self) -> None:
        """Clear the bar so the next line starts clean."""
        if self.enabled and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or fake stream is not a terminal
        return False
