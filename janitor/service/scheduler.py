"""APScheduler set-up: each job on its own interval with jitter, never overlapping itself.

``max_instances=1`` with ``coalesce``: a run still going when the next one is
due makes the scheduler skip that one (reported to ``on_overrun``) instead of
queueing it, so a slow Redis delays sweeps rather than piling them up. A run
*asked for* (the lease just taken, a gap in watch mode) is never skipped that
way: :class:`Requests` has the running one go again as it ends.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger


@dataclass(frozen=True)
class Job:
    """One recurring job; ``first_run`` is the delay before its first run, in seconds."""

    id: str
    func: Callable[[], None]
    interval: float
    first_run: float = 0.0


def build(jobs: Iterable[Job], *, jitter: float, on_overrun: Callable[[str], None]) -> BackgroundScheduler:
    """A scheduler with ``jobs`` added (not started); ``jitter`` is a fraction of each interval."""
    jobs = list(jobs)
    scheduler = BackgroundScheduler(
        timezone=dt.UTC,
        # One thread per job: a long sweep never holds up the cheap jobs.
        executors={"default": ThreadPoolExecutor(max_workers=max(1, len(jobs)))},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
    )
    now = dt.datetime.now(dt.UTC)
    for job in jobs:
        scheduler.add_job(
            job.func,
            IntervalTrigger(seconds=job.interval, jitter=job.interval * jitter or None),
            id=job.id,
            name=job.id,
            next_run_time=now + dt.timedelta(seconds=job.first_run),
        )

    def overrun(event: JobEvent) -> None:
        on_overrun(event.job_id)

    scheduler.add_listener(overrun, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
    return scheduler


def run_soon(scheduler: BackgroundScheduler, job_id: str, delay: float = 0.0) -> None:
    """Bring a job's next run forward to now, or to ``delay`` seconds from now."""
    if scheduler.get_job(job_id) is not None:
        scheduler.modify_job(job_id, next_run_time=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay))


@dataclass
class Requests:
    """Runs asked for out of schedule, by job. One asked for while the job runs would be skipped
    as an overrun, and it is asked for because what that run does no longer covers what changed
    (it runs on a lease lost meanwhile, it passed keys written during a gap): the running one goes
    again as it ends instead."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _running: set[str] = field(default_factory=set)
    _again: set[str] = field(default_factory=set)  # asked for while running
    _pending: set[str] = field(default_factory=set)  # asked of the scheduler, not started yet

    def ask(self, name: str) -> bool:
        """Whether to bring the job's next run forward; False: it is running, and goes again as it ends."""
        with self._lock:
            if name in self._running:
                self._again.add(name)
                return False
            self._pending.add(name)
            return True

    def begin(self, name: str) -> None:
        with self._lock:
            self._running.add(name)
            self._pending.discard(name)

    def end(self, name: str) -> bool:
        """Whether the run ending must go again (asked for meanwhile); else the job is no longer running."""
        with self._lock:
            if name in self._again:
                self._again.discard(name)
                return True
            self._running.discard(name)
            return False

    def lost(self, name: str) -> bool:
        """Whether a run the scheduler skipped as an overrun was one asked for: asked just as the last
        run ended, before the scheduler counted that run finished. It is to be asked for again."""
        with self._lock:
            return name in self._pending and name not in self._running


def next_run(scheduler: BackgroundScheduler, job_id: str) -> dt.datetime | None:
    """When a job runs next; None for an unknown job or a stopped scheduler."""
    job = scheduler.get_job(job_id) if scheduler.running else None
    when = getattr(job, "next_run_time", None)
    return when if isinstance(when, dt.datetime) else None


def shutdown(scheduler: BackgroundScheduler, **kwargs: Any) -> None:
    """Stop scheduling and wait for running jobs (the caller bounds the wait)."""
    if scheduler.running:
        scheduler.shutdown(**kwargs)


def reschedule(scheduler: BackgroundScheduler, job_id: str, interval: float, *, jitter: float) -> None:
    """Run a job every ``interval`` seconds from now on (its next run moves with it)."""
    if scheduler.get_job(job_id) is not None:
        scheduler.reschedule_job(job_id, trigger=IntervalTrigger(seconds=interval, jitter=interval * jitter or None))
