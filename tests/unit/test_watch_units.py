"""Watch mode's pure parts: which notify-keyspace-events flags publish a result's SET, turning them on
without removing any, and what the status page says about the mode."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from janitor.redis_io.notifications import covers_string_sets, keyevent_channel, with_string_sets
from janitor.service.status_page import Banner, RedisState, render
from janitor.service.watcher import WatchStatus
from tests.support.reports import NOW, status_state

FLAG_CHARS = "KEg$lshzxetdmnA"


class TestFlags:
    @pytest.mark.parametrize(
        ("flags", "covered"),
        [
            ("", False),
            ("E$", True),
            ("$E", True),
            ("AE", True),
            ("KEA", True),
            ("K$", False),  # keyspace channels only: no keyevent channel to subscribe to
            ("Ex", False),  # keyevents, but not for string commands
            ("Elg", False),
            ("KEA$", True),
            ("Kl", False),
        ],
    )
    def test_covers_string_sets(self, flags: str, covered: bool) -> None:
        """A SET is published on __keyevent@<db>__:set only with E and ($ or A)."""
        assert covers_string_sets(flags) is covered

    @pytest.mark.parametrize(
        ("flags", "after"),
        [("", "E$"), ("Kl", "KlE$"), ("E", "E$"), ("$", "$E"), ("AK", "AKE"), ("$E", "$E"), ("gxE", "gxE$")],
    )
    def test_with_string_sets_adds_what_is_missing(self, flags: str, after: str) -> None:
        assert with_string_sets(flags) == after

    @given(st.text(alphabet=FLAG_CHARS, max_size=12))
    def test_with_string_sets_never_removes_and_always_covers(self, flags: str) -> None:
        after = with_string_sets(flags)
        assert after.startswith(flags)  # every flag the server had is kept, in place
        assert covers_string_sets(after)
        assert with_string_sets(after) == after  # nothing more to add once covered

    def test_channel_names_the_result_db(self) -> None:
        assert keyevent_channel(0) == "__keyevent@0__:set"
        assert keyevent_channel(3) == "__keyevent@3__:set"


class TestStatus:
    def test_watching_line_names_the_lag_and_the_safety_pass(self) -> None:
        line = WatchStatus(True, "notify-keyspace-events=E$", 0.12, 0.31).line(300, 86400)
        assert line.startswith("watch (notify-keyspace-events=E$)")
        assert "last 0.12 s, p99 0.31 s" in line
        assert line.endswith("full passes every 24.0 h as a safety net")

    def test_fallback_line_says_why(self) -> None:
        reason = "keyspace notifications are off (notify-keyspace-events='')"
        line = WatchStatus(False, reason).line(300, 86400)
        assert line.startswith("full passes only, every 5 min: ")
        assert line.endswith(reason)

    def test_status_page_row(self) -> None:
        """The leader's page shows the mode and why; a follower's says the leader watches."""
        state = status_state()
        state.banner = Banner(RedisState(True, "", NOW), leader=True, watch="full passes only, every 5m: off")
        assert "Watch mode</th><td>full passes only, every 5m: off" in render(state).decode()
        state.banner = Banner(RedisState(True, "", NOW), leader=False, watch="watch (E$)")
        assert "Watch mode</th><td>on the leader" in render(state).decode()
