"""The daemon's jobs: one module each, all of one shape (:class:`janitor.service.jobs.base.Job`).

A new job is a module here and one line in :func:`for_settings`; the daemon schedules,
times, logs and counts every job the same way.
"""

from __future__ import annotations

from janitor.config import Settings
from janitor.service.jobs import eta_guard, running_guard
from janitor.service.jobs.base import Context, Job, Outcome
from janitor.service.jobs.beat import BeatJob
from janitor.service.jobs.broker import BrokerJob
from janitor.service.jobs.census import CensusJob
from janitor.service.jobs.info import InfoJob
from janitor.service.jobs.reaper import ReaperJob
from janitor.service.jobs.results import ResultsJob

__all__ = ["Context", "Job", "Outcome", "for_settings"]


def for_settings(settings: Settings) -> list[Job]:
    """The jobs this configuration runs. On a Redis Cluster: no census, and Celery's Redis broker
    does not run there (README, "Redis Cluster")."""
    jobs: list[Job] = [ResultsJob(), InfoJob()]
    if not settings.redis_cluster:
        jobs += [CensusJob(), BrokerJob(settings)]
        jobs += [eta_guard.EtaGuardJob(settings)] if settings.eta_guard else []
        jobs += [running_guard.RunningGuardJob(settings)] if settings.running_guard else []
        jobs += [ReaperJob()] if settings.reap_abandoned else []
        jobs += [BeatJob(settings)]
    return jobs
