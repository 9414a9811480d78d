"""Redis INFO: memory, eviction and keyspace gauges, and whether Redis is usable at all."""

from __future__ import annotations

import time

import redis

from janitor.config import Settings
from janitor.redis_io import cluster, scripts
from janitor.service.jobs.base import Context, Job, Outcome
from janitor.service.readings import read_info


class InfoJob(Job):
    name = "redis_info"
    interval_setting = "info_interval"
    leader_only = False
    quiet = True

    def first_run(self, settings: Settings) -> float:
        return 0.0

    def run(self, ctx: Context) -> Outcome:
        if isinstance(ctx.client, cluster.LazyCluster):
            try:
                info = ctx.client.info_where(ctx.lease.key)
            finally:
                ctx.metrics.add_commands({"INFO": 1})
        else:
            tally, at = scripts.Tally(), time.monotonic()
            try:
                info = read_info(ctx.client, tally)
            finally:
                ctx.metrics.add_commands(tally.commands)
            ctx.readings.record(info, at)  # what tells the other jobs whether anything was written since
        ctx.metrics.seen.update(info=info)
        ctx.book.read_info(info)
        if info.get("role", "master") != "master":
            # A replica answers reads and refuses every write. Saying so here keeps the state
            # from flapping up/down between this read and the lease's READONLY refusal.
            raise redis.ReadOnlyError("You can't write against a read only replica (INFO role)")
        return Outcome({"used_memory": info.get("used_memory")})
