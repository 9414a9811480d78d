"""The result sweep: one SCAN over Celery's result, group, chord and reply keys.

Per batch: DECIDE (one script call) reads every key's TTL and decides plain
JSON task results inside Redis; for the other keys with no TTL it returns what it
read, :func:`rules.decide` judges them here and ACT (one call) applies that.
INSPECT reads only what DECIDE's reply budget left out, and every key in cap
mode. Memory is one page of keys, whatever the keyspace size.
"""

from __future__ import annotations

import collections
import datetime as dt
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.crc import key_slot

from janitor import scripts
from janitor.config import Settings
from janitor.keyspace import SCAN_MATCH, Kind, Layout
from janitor.pacing import Pacer
from janitor.sweeps import rules
from janitor.sweeps.rules import Action, Skip, decide

FENCE_NONE = b"celery-janitor:no-fence"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# DECIDE's codes for a key it left to Python -> (type, value) as INSPECT reads them.
READ: dict[int, Callable[[Any], tuple[bytes | str, bytes | int | None]]] = {
    3: lambda rtype: (rtype, None),
    5: lambda size: ("string", size),
    6: lambda value: ("string", value),
}
NAME_ONLY = frozenset({Kind.MALFORMED, Kind.CHORD_CLAIM})  # judged by name alone: skipped, or never touched
# Cluster mode: a script call refused because its slot is moving or has moved to
# another node. The batch is skipped (never acted on stale routing) and counted.
RESHARDING = (redis.exceptions.AskError, redis.exceptions.TryAgainError)  # MovedError is an AskError


@dataclass
class SweepReport:
    """What one pass saw and did; the same shape for dry and real runs."""

    dry_run: bool
    scanned: int = 0
    celery_keys: int = 0
    ttl_applied: collections.Counter[str] = field(default_factory=collections.Counter)
    ttl_capped: collections.Counter[str] = field(default_factory=collections.Counter)
    deleted: collections.Counter[str] = field(default_factory=collections.Counter)
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    raced: int = 0
    bytes_deleted: int = 0
    batches: int = 0
    duration_s: float = 0.0
    completed: bool = False
    tally: scripts.Tally = field(default_factory=scripts.Tally)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # cluster: one summary per primary

    @property
    def commands(self) -> int:
        return sum(self.tally.commands.values())

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dry_run": self.dry_run,
            "completed": self.completed,
            "scanned": self.scanned,
            "celery_keys": self.celery_keys,
            "ttl_applied": _plain(self.ttl_applied),
            "ttl_capped": _plain(self.ttl_capped),
            "deleted": _plain(self.deleted),
            "skipped": _plain(self.skipped),
            "raced": self.raced,
            "bytes_deleted": self.bytes_deleted,
            "batches": self.batches,
            "duration_s": round(self.duration_s, 3),
            "commands": dict(self.tally.commands),
            "commands_total": self.commands,
        }
        if self.nodes:
            out["nodes"] = self.nodes
        return out


@dataclass(frozen=True)
class Fence:
    """The lease key and token ACT checks before writing (see ``janitor.lease``)."""

    key: bytes = FENCE_NONE
    token: str = ""


def sweep(
    client: redis.Redis,
    settings: Settings,
    *,
    dry_run: bool | None = None,
    fence: Callable[[], Fence] = Fence,
    should_stop: Callable[[], bool] = lambda: False,
    on_batch: Callable[[SweepReport], None] = lambda _r: None,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    cluster: bool = False,
) -> SweepReport:
    """Run one pass; stops between batches (never inside one) when ``should_stop()``.

    ``cluster``: ``client`` is one Redis Cluster primary; every script call then
    holds keys of one hash slot only (see :meth:`_Pass.batch`).
    """
    report = SweepReport(dry_run=settings.dry_run if dry_run is None else dry_run)
    run = _Pass(client, settings, report, fence, clock, cluster)
    started = time.monotonic()
    for page in run.pages():
        report.scanned += len(page)
        for chunk in run.chunks(page):
            run.batch(chunk)
            report.batches += 1
            on_batch(report)
            if should_stop():
                report.duration_s = time.monotonic() - started
                return report
    report.completed = True
    report.duration_s = time.monotonic() - started
    return report


@dataclass
class _Pass:
    """One pass's state: where it is, how big its batches are, what it did."""

    client: redis.Redis
    settings: Settings
    report: SweepReport
    fence: Callable[[], Fence]
    clock: Callable[[], dt.datetime]
    cluster: bool = False
    layout: Layout = field(init=False)
    pacer: Pacer = field(init=False)
    act_pacer: Pacer = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.layout = Layout.for_prefixes(s.key_prefix, s.broker_key_prefix)
        # INSPECT and ACT cost differently per key, so each is sized on its own timings.
        self.pacer = Pacer(s.max_batch_ms, s.scan_count, s.max_keys_per_second)
        self.act_pacer = Pacer(s.max_batch_ms, s.scan_count)

    def pages(self) -> Iterator[list[bytes]]:
        """Pages of about ``scan_count`` matching keys; sparse SCAN replies are merged."""
        cursor, page = 0, []
        while True:
            cursor, keys = self.report.tally.scan(self.client, cursor, SCAN_MATCH, self.settings.scan_count)
            page.extend(keys)
            if len(page) >= self.settings.scan_count or (cursor == 0 and page):
                yield page
                page = []
            if cursor == 0:
                return

    def chunks(self, page: list[bytes]) -> Iterator[list[bytes]]:
        """Split a page at the pacer's size, which follows the measured duration of each call."""
        start = 0
        while start < len(page):
            chunk = page[start : start + self.pacer.size]
            yield chunk
            start += len(chunk)
            self.pacer.throttle(len(chunk))

    def batch(self, keys: list[bytes]) -> None:
        """One batch; on a cluster, one group per hash slot, each skipped whole if its slot moved meanwhile."""
        if not self.cluster:
            self._batch(keys)
            return
        slots: dict[int, list[bytes]] = {}
        for key in keys:
            slots.setdefault(key_slot(key), []).append(key)
        for group in slots.values():
            try:
                self._batch(group)
            except RESHARDING:
                # MOVED/ASK/TRYAGAIN: the slot is elsewhere or migrating. Redis refuses a
                # script before running any of it, so the refused call wrote nothing; the
                # group's keys get handled on the next pass, on their new node. (Should an
                # ACT be refused after its DECIDE ran, DECIDE's work is counted as well.)
                self.report.skipped["moved"] += sum(self.layout.classify(k)[0] is not Kind.OTHER for k in group)

    def _batch(self, keys: list[bytes]) -> None:
        """DECIDE what Redis can; decide the rest in Python from what it read, ACT on those decisions."""
        candidates = [(key, *self.layout.classify(key)) for key in keys]
        candidates = [c for c in candidates if c[1] is not Kind.OTHER]
        self.report.celery_keys += len(candidates)
        now = self.clock()
        actions: list[tuple[bytes, Action]] = []
        if not self.settings.cap_ttl:  # DECIDE leaves keys that have a TTL alone; capping is INSPECT's
            # Names decide() judges alone need no read; task results go first (DECIDE's layout).
            for candidate in (c for c in candidates if c[1] in NAME_ONLY):
                self._rule(candidate, "", -1, None, now=now, actions=actions)
            triaged = sorted((c for c in candidates if c[1] not in NAME_ONLY), key=lambda c: c[1] is not Kind.TASK)
            rows = self._decide([c[0] for c in triaged], sum(c[1] is Kind.TASK for c in triaged), now)
            candidates = []
            for candidate, code, read in zip(triaged, rows[::2], rows[1::2], strict=True):
                if code in READ:
                    rtype, value = READ[code](read)
                    self._rule(candidate, rtype, -1, value, now=now, actions=actions)
                elif code == 4:
                    candidates.append(candidate)
        args = [self.settings.max_value_bytes, self.settings.batch_bytes, int(self.settings.cap_ttl)]
        while candidates:
            rows = self._call(self.pacer, scripts.INSPECT, [key for key, _, _ in candidates], args)
            for candidate, (rtype, pttl, value) in zip(candidates, rows, strict=False):
                self._rule(candidate, rtype, int(pttl), value, now=now, actions=actions)
            candidates = candidates[len(rows) :]
        start = 0
        while start < len(actions):
            part = actions[start : start + self.act_pacer.size]
            self._act(part)
            start += len(part)

    def _rule(
        self,
        candidate: tuple[bytes, Kind, bytes],
        rtype: bytes | str,
        pttl: int,
        value: bytes | int | None,
        *,
        now: dt.datetime,
        actions: list[tuple[bytes, Action]],
    ) -> None:
        key, kind, ident = candidate
        decision = decide(kind, ident, _text(rtype), pttl, value, now=now, settings=self.settings)
        if isinstance(decision, Skip):
            self.report.skipped[decision.reason] += 1
        elif decision is not None:
            actions.append((key, decision))

    def _decide(self, keys: list[bytes], tasks: int, now: dt.datetime) -> list[Any]:
        """Let DECIDE act on the task results it is certain about; count what it did, return its reply."""
        if not keys:
            return []
        s = self.settings
        current = Fence() if self.report.dry_run else self.fence()
        args = [current.token, int(self.report.dry_run), (now - EPOCH) // rules.MICROSECOND]
        args += [s.result_ttl * 1000, s.failure_ttl * 1000, s.pending_ttl * 1000, s.future_tolerance * 1_000_000]
        args += [s.max_value_bytes, len(self.layout.task_prefix), tasks, s.batch_bytes]
        rows: list[Any] = self._call(self.pacer, scripts.DECIDE, [self._fence_key(current, keys), *keys], args)
        for code, n in zip(rows[::2], rows[1::2], strict=True):
            if code == 1:
                self.report.ttl_applied[Kind.TASK] += 1
            elif code == 2:
                self.report.deleted[Kind.TASK] += 1
                self.report.bytes_deleted += n
        return rows

    def _act(self, actions: list[tuple[bytes, Action]]) -> None:
        if self.report.dry_run:
            applied = [1] * len(actions)
        else:
            current = self.fence()
            args: list[Any] = [current.token]
            for _key, action in actions:
                args += [action.op, action.ms, action.guard]
            keys = [key for key, _ in actions]
            applied = self._call(self.act_pacer, scripts.ACT, [self._fence_key(current, keys), *keys], args)
        for (_key, action), ok in zip(actions, applied, strict=True):
            if not ok:
                self.report.raced += 1
            elif action.deletes:
                self.report.deleted[action.kind] += 1
                self.report.bytes_deleted += action.size
            elif action.op == "c":
                self.report.ttl_capped[action.kind] += 1
            else:
                self.report.ttl_applied[action.kind] += 1

    def _fence_key(self, fence: Fence, keys: list[bytes]) -> bytes:
        """KEYS[1] of DECIDE and ACT. On a cluster every key of a call must share a slot:
        with no token the fence key is never read, so a batch key stands in for it."""
        if not self.cluster or key_slot(fence.key) == key_slot(keys[0]):
            return fence.key
        if fence.token:
            raise ValueError("a fenced sweep on Redis Cluster needs its lease key in the batch's hash slot")
        return keys[0]

    def _call(self, pacer: Pacer, source: str, keys: list[bytes], args: list[Any]) -> Any:
        """Run a script and let its pacer see how long the call took (an upper bound on Redis's busy time)."""
        started = time.perf_counter()
        result = self.report.tally.run(self.client, source, keys, args)
        pacer.observe(len(keys), time.perf_counter() - started)
        return result


def _plain(counter: collections.Counter[str]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(counter.items()) if v}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
