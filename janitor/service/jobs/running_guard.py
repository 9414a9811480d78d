"""The running-task guard: an ``acks_late`` task STARTED on a worker whose heartbeat is live keeps a
fresh ``unacked_index`` score, so kombu's own restore leaves it to that worker (``janitor.operations.guards``)."""

from __future__ import annotations

from janitor.service.jobs.eta_guard import GuardJob


class RunningGuardJob(GuardJob):
    name = "running_guard"
    guard = "running"
