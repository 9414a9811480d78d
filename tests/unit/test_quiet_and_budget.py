"""The skip rule (from Redis's command counters) and the daily command budget's plan: pure parts."""

from __future__ import annotations

import collections
from typing import ClassVar

import pytest

from janitor.config import Settings
from janitor.operations.sweep import SweepReport
from janitor.operations.writes import BROKER_WRITES, RESULT_WRITES, Mark
from janitor.service import budget
from janitor.service.jobs.results import LastPass, why_skip
from janitor.service.readings import Reading


def info(run_id: str = "r1", **calls: int) -> dict[str, object]:
    return {"run_id": run_id, **{f"cmdstat_{name}": {"calls": n, "usec": 1} for name, n in calls.items()}}


def mark(run_id: str = "r1", **calls: int) -> Mark:
    found = Mark.of(info(run_id, **calls))
    assert found is not None
    return found


class TestMark:
    def test_counters_read_from_info(self) -> None:
        assert mark(set=3, get=9).calls == {"set": 3, "get": 9}

    def test_no_command_stats_or_no_run_id_gives_no_mark(self) -> None:
        assert Mark.of({"run_id": "r1", "used_memory": 5}) is None
        assert Mark.of({"cmdstat_set": {"calls": 1}}) is None

    def test_unchanged_only_when_no_listed_command_ran(self) -> None:
        before = mark(set=3, get=9, pexpire=1)
        assert mark(set=3, get=50, pexpire=7).unchanged_since(before, RESULT_WRITES)  # reads, renewals
        assert not mark(set=4, get=9).unchanged_since(before, RESULT_WRITES)
        assert not mark(set=3, get=9, persist=1).unchanged_since(before, RESULT_WRITES)  # a TTL taken away

    @pytest.mark.parametrize("command", ["rpush", "zadd", "incr", "sadd", "lpush"])
    def test_chord_and_reply_keys_count_as_writes(self, command: str) -> None:
        """A chord's join list, counter and dedup set, a pidbox reply: keys the sweep gives a TTL."""
        assert not mark(set=3, **{command: 1}).unchanged_since(mark(set=3), RESULT_WRITES)

    def test_another_server_or_a_restart_is_never_unchanged(self) -> None:
        assert not mark("r2", set=3).unchanged_since(mark("r1", set=3), RESULT_WRITES)

    def test_a_reset_of_the_counters_is_a_change(self) -> None:
        assert not mark(set=0).unchanged_since(mark(set=3), RESULT_WRITES)

    def test_broker_writes_include_what_kombu_does_but_not_ttl_renewals(self) -> None:
        assert {"lpush", "brpop", "hset", "zadd", "hdel", "zrem", "sadd", "set", "del"} <= BROKER_WRITES
        assert "pexpire" not in BROKER_WRITES
        assert "evalsha" not in BROKER_WRITES


def settings(**kw: object) -> Settings:
    return Settings(redis_url="redis://x/0", **kw)  # type: ignore[arg-type]


def last(started: float = 100.0, *, epoch: int = 1, revisit: bool = False, m: Mark | None = None) -> LastPass:
    return LastPass(started, epoch, m if m is not None else mark(set=3), revisit)


def skip(lp: LastPass | None, s: Settings | None = None, **kw: object) -> str:
    args: dict[str, object] = {"now": 200.0, "epoch": 1, "watching_since": None, "mark": lambda: mark(set=3)}
    args.update(kw)
    return why_skip(lp, s or settings(), **args)  # type: ignore[arg-type]


class TestWhySkip:
    def test_a_baseline_read_after_the_pass_started_is_what_later_readings_must_follow(self) -> None:
        """A pass that had to read its own baseline: the reading that proves nothing was written
        since must be newer than that baseline, not merely newer than the pass's start."""
        assert LastPass.of(SweepReport(dry_run=False), 100.0, 1, Reading(100.5, mark(set=3))).compare_after == 100.5
        assert LastPass.of(SweepReport(dry_run=False), 100.0, 1, Reading(42.0, mark(set=3))).compare_after == 100.0

    def test_first_pass_always_runs(self) -> None:
        asked = []
        assert skip(None, mark=lambda: asked.append(1)) == ""
        assert not asked  # no INFO spent to learn it

    def test_no_writes_since_the_last_pass_skips(self) -> None:
        assert skip(last()) == "no_writes"

    def test_a_write_since_runs(self) -> None:
        assert skip(last(), mark=lambda: mark(set=4)) == ""

    def test_no_reading_runs(self) -> None:
        assert skip(last(), mark=lambda: None) == ""
        assert skip(LastPass(100.0, 1, None, False)) == ""

    def test_watch_mode_unbroken_since_before_the_pass_skips_even_with_writes(self) -> None:
        assert skip(last(), watching_since=99.0, mark=lambda: mark(set=400)) == "watching"

    def test_watch_mode_does_not_cover_keys_written_without_a_set(self) -> None:
        """RESTORE, RENAME, COPY... publish no ``set`` event: the pass must find what they wrote."""
        assert skip(last(), watching_since=99.0, mark=lambda: mark(set=400, restore=1)) == ""
        assert skip(last(), watching_since=99.0, mark=lambda: mark(set=400, mset=2, setnx=5)) == "watching"

    def test_watch_mode_alone_where_the_server_hides_its_counters(self) -> None:
        assert skip(last(), watching_since=99.0, mark=lambda: None) == "watching"

    def test_cap_mode_counts_ttl_writes_too(self) -> None:
        cap = settings(cap_ttl=True)
        assert skip(last(), cap) == "no_writes"
        assert skip(last(), cap, mark=lambda: mark(set=3, expire=1)) == ""
        assert skip(last(), cap, watching_since=99.0, mark=lambda: mark(set=9, pexpire=1)) == ""

    def test_watch_mode_started_after_the_pass_does_not_cover_it(self) -> None:
        assert skip(last(), watching_since=101.0, mark=lambda: mark(set=400)) == ""

    def test_the_safety_pass_runs_whatever_the_counters(self) -> None:
        s = settings(safety_sweep_interval=3600)
        assert skip(last(100.0), s, now=100.0 + 3599) == "no_writes"
        assert skip(last(100.0), s, now=100.0 + 3600) == ""
        assert skip(last(100.0), s, now=100.0 + 3600, watching_since=0.0) == ""

    def test_a_new_lease_epoch_runs(self) -> None:
        assert skip(last(epoch=1), epoch=2) == ""

    @pytest.mark.parametrize("reason", ["future_date_done", "moved"])
    def test_keys_time_can_make_due_keep_passes_running(self, reason: str) -> None:
        report = SweepReport(dry_run=False)
        report.skipped = collections.Counter({reason: 1})
        pass_ = LastPass.of(report, 100.0, 1, Reading(90.0, mark(set=3)))
        assert pass_.revisit
        assert skip(pass_) == ""
        assert skip(pass_, watching_since=0.0) == ""

    def test_keys_skipped_for_good_do_not(self) -> None:
        report = SweepReport(dry_run=False)
        report.skipped = collections.Counter({"not_json": 5, "too_large": 1})
        assert skip(LastPass.of(report, 100.0, 1, Reading(90.0, mark(set=3)))) == "no_writes"

    def test_dry_run_runs_every_pass(self) -> None:
        assert skip(last(), settings(dry_run=True)) == ""


class TestBudgetPlan:
    configured: ClassVar[dict[str, float]] = {
        "results": 300.0,
        "broker": 300.0,
        "redis_info": 120.0,
        "census": 3600.0,
        "lease": 100.0,
    }
    longest: ClassVar[dict[str, float]] = {"lease": 1200.0}

    def costs(self, **per_run: float) -> budget.Costs:
        c = budget.Costs.empty()
        c.per_run["lease"] = 1
        for job, n in per_run.items():
            c.per_run[job] = n
        c.full_pass = per_run.get("results", 0.0)
        return c

    def plan(self, n: int, c: budget.Costs) -> budget.Plan:
        return budget.plan(n, self.configured, c, sweep="results", longest=self.longest)

    def test_a_budget_that_fits_keeps_the_settings(self) -> None:
        p = self.plan(10_000, self.costs(results=1, broker=2, redis_info=1, census=6))
        assert p.intervals == self.configured
        assert p.factor == 1.0
        assert p.fits
        assert p.daily == pytest.approx(864 + 288 + 576 + 720 + 144)

    def test_a_tight_budget_stretches_every_interval_by_one_factor_and_fits(self) -> None:
        p = self.plan(3_000, self.costs(results=10, broker=8, redis_info=1, census=6))
        assert p.daily <= 3_000
        assert p.daily > 2_900  # the smallest stretch that fits, not a wasteful one
        assert p.factor > 1
        for job, interval in p.intervals.items():
            assert interval == pytest.approx(min(self.configured[job] * p.factor, self.longest.get(job, budget.DAY)))

    def test_the_lease_stretches_too_but_never_past_an_hour_of_ttl(self) -> None:
        p = self.plan(200, self.costs(results=1, broker=8, redis_info=1, census=6))
        assert p.intervals["lease"] == 1200.0
        assert max(p.intervals.values()) <= budget.DAY

    def test_a_warning_when_a_pass_a_day_does_not_fit(self) -> None:
        c = self.costs(results=5_000, broker=8, redis_info=1, census=5_000)
        p = self.plan(3_000, c)
        assert not p.fits
        assert max(p.intervals.values()) <= budget.DAY
        warning = p.warning(c.full_pass)
        assert "JANITOR_DAILY_COMMAND_BUDGET=3000" in warning
        assert "10,081" in warning  # a pass, a census, one broker check and INFO, 72 lease renewals
        assert "too small" in p.line()

    def test_unmeasured_jobs_keep_their_interval(self) -> None:
        c = budget.Costs.empty()
        c.per_run["broker"] = 50
        p = self.plan(1_000, c)
        assert p.intervals["results"] == 300.0
        assert p.intervals["broker"] > 300.0

    def test_running_average_of_costs(self) -> None:
        c = budget.Costs.empty()
        c.ran("broker", 10)
        c.ran("broker", 0)
        assert c.per_run["broker"] == pytest.approx(7.0)
        c.ran("results", 40, full_pass=True)
        c.ran("results", 0)
        assert c.full_pass == 40.0
