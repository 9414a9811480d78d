"""The result census: result keys by state and TTL, for the gauges and the status page."""

from __future__ import annotations

from collections.abc import Callable

import redis

from janitor.celery_model.keyspace import glob_escape
from janitor.config import Settings
from janitor.operations import census
from janitor.redis_io import scripts
from janitor.service.jobs.base import Context, Job, Outcome
from janitor.service.metrics import ResultCensus


class CensusJob(Job):
    name = "census"
    interval_setting = "census_interval"
    first_after = "results"  # not racing the first sweep, and counting what it left

    def run(self, ctx: Context) -> Outcome:
        tally = scripts.Tally()
        try:
            taken = result_census(ctx.client, ctx.settings, tally, should_stop=ctx.stop.is_set)
        finally:
            ctx.metrics.add_commands(tally.commands)
        if not taken.completed or not ctx.lease.held():  # lost mid-way: the new leader counts
            return Outcome(completed=False)
        result = ResultCensus.of(taken)
        ctx.metrics.seen.update(census=result)
        ctx.book.counted(taken)
        return Outcome({"result_keys": sum(result.keys.values()), "oldest_age_s": result.oldest_age_s})


def result_census(
    client: redis.Redis, settings: Settings, tally: scripts.Tally, *, should_stop: Callable[[], bool]
) -> census.Census:
    """The census narrowed to result keys: all the gauges and the status page need, at a fraction of the cost."""
    match = glob_escape(settings.layout.task_prefix) + "*"
    return census.take(client, settings, tally=tally, match=match, should_stop=should_stop)
