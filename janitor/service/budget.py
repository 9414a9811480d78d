"""JANITOR_DAILY_COMMAND_BUDGET: job intervals planned to stay within N commands a day.

Pay-per-command providers bill every command the janitor sends. The daemon measures what
one run of each job costs (a running average of what it sent, skipped runs included) and
stretches the intervals, all by one factor, until the day's projected total fits the
budget, the lease's renewals included (its TTL grows with them, up to an hour: a longer wait
for a standby to take over from a leader that died). No interval is ever planned shorter
than its setting, nor longer than a day. :func:`plan` is pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from janitor.reports import text

DAY = 86400.0
# How much of a run's cost the newest run weighs in the running average.
WEIGHT = 0.3


@dataclass(frozen=True)
class Plan:
    budget: int
    intervals: Mapping[str, float]  # job name -> planned seconds between runs
    daily: float  # commands a day the plan projects, the lease included
    floor: float  # the least a day can cost: every job once a day (a full pass for the sweep), the lease
    factor: float  # how much the plan stretched the configured intervals

    @property
    def fits(self) -> bool:
        return self.floor <= self.budget

    def line(self) -> str:
        """For the status page: the budget, what the plan projects, and the freshness it buys."""
        every = ", ".join(f"{job} every {text.duration(s)}" for job, s in sorted(self.intervals.items()))
        fit = "" if self.fits else "; too small for one pass a day"
        return f"{self.budget:,} commands a day: {self.daily:,.0f} planned ({every}){fit}"

    def warning(self, pass_cost: float) -> str:
        """Empty when the budget covers a day; else what it falls short of, and what to do."""
        if self.fits:
            return ""
        return (
            f"JANITOR_DAILY_COMMAND_BUDGET={self.budget} cannot cover one pass a day: a full pass costs about "
            f"{pass_cost:,.0f} commands, and with the lease, a census and each check once a day the least is "
            f"{math.ceil(self.floor):,}: raise it to that, or lower the cost of a pass (watch mode, fewer keys)"
        )


@dataclass
class Costs:
    """Commands per run of each job, averaged; and what the last full pass of the sweep cost."""

    per_run: dict[str, float]
    full_pass: float = 0.0

    @classmethod
    def empty(cls) -> Costs:
        return cls({})

    def ran(self, job: str, commands: int, *, full_pass: bool = False) -> None:
        before = self.per_run.get(job)
        self.per_run[job] = commands if before is None else (1 - WEIGHT) * before + WEIGHT * commands
        if full_pass:
            self.full_pass = float(commands)


def plan(
    budget: int,
    configured: Mapping[str, float],
    costs: Costs,
    *,
    sweep: str,
    longest: Mapping[str, float] | None = None,
) -> Plan:
    """The intervals that keep a day within ``budget``: the configured ones times the smallest factor
    that fits, each capped at ``longest`` (a day unless given; never below its setting). A job that
    costs nothing (not measured yet, or every run skipped) keeps its setting: waiting buys nothing."""
    caps = {job: max(interval, (longest or {}).get(job, DAY)) for job, interval in configured.items()}

    def spaced(factor: float) -> dict[str, float]:
        return {
            job: min(interval * factor, caps[job]) if costs.per_run.get(job) else interval
            for job, interval in configured.items()
        }

    def daily(intervals: Mapping[str, float]) -> float:
        return sum(costs.per_run.get(job, 0.0) * DAY / interval for job, interval in intervals.items())

    floor = sum(
        (costs.full_pass if job == sweep else costs.per_run.get(job, 0.0)) * DAY / caps[job] for job in configured
    )
    low, high = 1.0, max(max(caps.values(), default=DAY) / min(configured.values(), default=DAY), 1.0)
    if daily(spaced(low)) <= budget:
        high = low
    elif daily(spaced(high)) > budget:
        low = high  # even at their longest it does not fit: the longest intervals, and a warning
    else:
        for _ in range(60):  # the day's cost falls as the factor grows: bisect to the smallest that fits
            mid = (low + high) / 2
            low, high = (low, mid) if daily(spaced(mid)) <= budget else (mid, high)
    intervals = spaced(high)
    return Plan(budget, intervals, daily(intervals), floor, high)
