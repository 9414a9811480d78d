"""The progress bar on its own: silent off a terminal, rate and ETA on one."""

from __future__ import annotations

import io

from janitor.dev.progress import Progress


class TestProgressUnit:
    def test_silent_when_not_a_terminal(self) -> None:
        """Writing to a non-terminal stream draws nothing at all."""
        out = io.StringIO()
        bar = Progress(100, stream=out)
        bar.update(50, force=True)
        bar.close()
        assert out.getvalue() == ""

    def test_draws_rate_and_eta_when_enabled(self) -> None:
        """On a terminal the bar shows done/total, keys/s and an ETA, then clears its line."""
        now = [0.0]
        out = io.StringIO()
        bar = Progress(1000, stream=out, enabled=True, clock=lambda: now[0])
        now[0] = 2.0
        bar.update(250)
        assert "250/1,000 keys" in out.getvalue()
        assert "125 keys/s" in out.getvalue()
        assert "ETA 6s" in out.getvalue()
        bar.close()
        assert out.getvalue().endswith("\r\x1b[K")

    def test_total_overshoot_and_unknown_total(self) -> None:
        """SCAN may return more keys than DBSIZE said: the bar stops at 99 % until done; no total shows a count."""
        bar = Progress(100, stream=io.StringIO(), enabled=True, clock=lambda: 1.0)
        bar.done = 99
        assert " 99%" in bar.line(2.0)
        assert "ETA" not in Progress(None, stream=io.StringIO(), enabled=True).line()
