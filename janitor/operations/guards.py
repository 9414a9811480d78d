"""The ETA and running-task guards: raise ``unacked_index`` scores so kombu's own restore waits.

kombu's ``restore_visible`` hands back every ``unacked`` entry scored more than
``visibility_timeout`` ago, whatever became of it. Two kinds are still in good hands:

- ``held``: a worker keeps an ETA/countdown message in memory until its ETA (kombu#337). Scored
  ``eta - visibility_timeout + grace``, kombu cannot pick it before ``eta + grace``; if its worker
  died it is restored then, once.
- ``running``: an ``acks_late`` task STARTED on a worker whose heartbeat is live (celery#5935).
  Scored ``now`` at each run while that worker lives; once it dies, the score ages and the
  message is restored as before.

A score is only ever raised. Each message is re-scored by one script (``RESCORE``) that checks
the entry and its score are still what was read, under kombu's ``unacked_mutex``, which kombu's
``restore_visible`` holds while it reads and restores: a re-score cannot fall in between.

The lease's fence is not checked: it lives on the results' Redis, which may be another server
than the broker's. The mutex is the broker's own fence, and a late or doubled re-score is
harmless: it only raises a score to what the entry, as read, called for.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import redis

from janitor.config import Settings
from janitor.operations.broker import BrokerKeys, BrokerReport, UnackedMessage, unacked_mutex
from janitor.redis_io import scripts

Guard = Literal["eta", "running"]
GUARDS: tuple[Guard, ...] = ("eta", "running")
# How many runs must fit in one visibility timeout: a run skipped while kombu holds the mutex, and
# the scheduler's jitter, still leave a fresh score before kombu's restore looks.
RUNS_PER_TIMEOUT = 3


@dataclass(frozen=True, slots=True)
class Planned:
    """One re-score: the entry's tag, its score as read, and the score it should have."""

    tag: str
    task_id: str
    read_score: float
    new_score: float


@dataclass
class RescoreReport:
    """What one guard pass did (or, dry, would do)."""

    guard: Guard
    dry_run: bool
    planned: int = 0
    raised: int = 0  # dry run: would raise
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)  # by reason
    mutex_held: bool = False
    tally: scripts.Tally = field(default_factory=scripts.Tally)

    def as_dict(self) -> dict[str, Any]:
        return {
            "guard": self.guard,
            "dry_run": self.dry_run,
            "planned": self.planned,
            "raised": self.raised,
            "skipped": dict(self.skipped),
            "mutex_held": self.mutex_held,
        }


# -- the arithmetic (pure) -------------------------------------------------------------------
def eta_score(eta: float, visibility_timeout: float, grace: float) -> float:
    """The score kombu's restore cannot pick before ``eta + grace`` (it picks ``score <= now - vt``)."""
    return eta - visibility_timeout + grace


def raised(current: float, target: float) -> float | None:
    """``target`` when it is above ``current``, else None: a score is never lowered."""
    return target if target > current else None


def plan(report: BrokerReport, guard: Guard, *, grace: float) -> list[Planned]:
    """The re-scores ``guard`` calls for in ``report``: its ``held`` entries (eta) or ``running`` ones."""
    out = []
    for m in _of(report.guardable, "held" if guard == "eta" else "running"):
        if guard == "eta":
            if m.eta is None:
                continue
            target = eta_score(m.eta, report.visibility_timeout, grace)
        else:
            target = report.now
        new = raised(m.delivered_at, target)
        if new is not None:
            out.append(Planned(m.tag, m.task_id, m.delivered_at, new))
    return out


def keeps_up(interval: float, visibility_timeout: float) -> bool:
    """Whether a guard run every ``interval`` seconds re-scores in time (see :data:`RUNS_PER_TIMEOUT`)."""
    return interval * RUNS_PER_TIMEOUT <= visibility_timeout


def _of(messages: Iterable[UnackedMessage], state: str) -> list[UnackedMessage]:
    return [m for m in messages if m.state == state]


# -- the pass ------------------------------------------------------------------------------
def rescore(
    client: redis.Redis,
    settings: Settings,
    planned: list[Planned],
    *,
    guard: Guard,
    dry_run: bool,
    tally: scripts.Tally | None = None,
) -> RescoreReport:
    """Apply ``planned`` under kombu's ``unacked_mutex`` (skipped whole while someone else holds it:
    the next run tries again). Dry run: nothing is sent, ``raised`` is what would be."""
    keys = BrokerKeys.of(settings)
    out = RescoreReport(guard, dry_run, planned=len(planned), tally=tally or scripts.Tally())
    if not planned:
        return out
    if dry_run:
        out.raised = len(planned)
        return out
    with unacked_mutex(client, keys, settings, out.tally) as token:
        if token is None:
            out.mutex_held = True
            out.skipped["mutex_held"] += len(planned)
            return out
        for start in range(0, len(planned), settings.unacked_page):
            page = planned[start : start + settings.unacked_page]
            if not _rescore_page(client, keys, page, token, out):
                out.skipped["fenced"] += len(planned) - start - len(page)
                break
    return out


def _rescore_page(client: redis.Redis, keys: BrokerKeys, page: list[Planned], token: str, out: RescoreReport) -> bool:
    """One page; False when the mutex was lost (expired and taken): the rest of the pass is skipped."""
    out.tally.commands["HMGET"] += 1
    raws = client.hmget(keys.unacked, [p.tag for p in page])
    for i, (p, raw) in enumerate(zip(page, raws, strict=True)):
        if not isinstance(raw, bytes):
            out.skipped["gone"] += 1
            continue
        try:
            result = scripts.rescore(
                out.tally,
                client,
                unacked=keys.unacked,
                index=keys.index,
                mutex=keys.mutex,
                tag=p.tag,
                mutex_token=token,
                entry=raw,
                read_score=p.read_score,
                new_score=p.new_score,
            )
        except redis.ResponseError as exc:
            if not str(exc).startswith("FENCED"):
                raise
            out.skipped["fenced"] += len(page) - i
            return False
        if result is scripts.Rescored.RAISED:
            out.raised += 1
        else:
            out.skipped[result.value] += 1
    return True
