"""JANITOR_DAILY_COMMAND_BUDGET: job intervals planned to stay within N commands a day.

Pay-per-command providers bill every command the janitor sends. The daemon measures what
one run of each job costs (a running average of what it sent, skipped runs included) and
stretches the intervals, all by one factor, until the day's projected total fits the
budget; the lease's renewals are the fixed part. No interval is ever planned shorter than
its setting, nor longer than a day. :func:`plan` is pure.
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

    def warning(self, lease_daily: float, pass_cost: float) -> str:
        """ "" when the budget covers a day; else what it falls short of, and what to do."""
        if self.fits:
            return ""
        return (
            f"JANITOR_DAILY_COMMAND_BUDGET={self.budget} cannot cover one pass a day: a full pass costs about "
            f"{pass_cost:,.0f} commands and the lease {lease_daily:,.0f} a day; raise it to at least "
            f"{math.ceil(self.floor):,}, lengthen JANITOR_LEASE_TTL, or turn watch mode on"
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
    lease_daily: float,
    sweep: str,
) -> Plan:
    """The intervals that keep a day within ``budget``: the configured ones times the smallest factor
    that fits, each capped at a day. Jobs not yet measured keep their configured interval."""

    def daily(factor: float) -> float:
        return lease_daily + sum(
            costs.per_run.get(job, 0.0) * DAY / min(interval * factor, max(interval, DAY))
            for job, interval in configured.items()
        )

    floor = lease_daily + sum(
        (costs.full_pass if job == sweep else costs.per_run.get(job, 0.0)) * DAY / max(interval, DAY)
        for job, interval in configured.items()
    )
    low, high = 1.0, max(DAY / min(configured.values(), default=DAY), 1.0)
    if daily(low) <= budget:
        high = low
    elif daily(high) > budget:
        low = high  # even a day apart it does not fit: the longest intervals, and a warning
    else:
        for _ in range(60):  # daily() falls as the factor grows: bisect to the smallest factor that fits
            mid = (low + high) / 2
            low, high = (low, mid) if daily(mid) <= budget else (mid, high)
    factor = high
    # A job that costs nothing (not measured yet, or every run skipped) buys nothing by waiting.
    intervals = {
        job: min(interval * factor, max(interval, DAY)) if costs.per_run.get(job) else interval
        for job, interval in configured.items()
    }
    return Plan(budget, intervals, daily(factor), floor, factor)
