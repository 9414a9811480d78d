"""The result sweep: one SCAN over Celery's result, group, chord and reply keys.

Per batch, one DECIDE call SCANs a page inside Redis, reads every key's TTL and
decides plain JSON task results there; it hands back the keys it is not certain
about, with what it read. :func:`rules.decide` judges those here, INSPECT reads
what DECIDE could not, and ACT (one call) applies the decisions. The next page's
DECIDE runs in Redis while Python judges the last one's keys (INSPECT and ACT go on
other connections), so the server does not wait for Python between pages. On a
cluster and in cap mode the SCAN runs here and the keys go to DECIDE (or INSPECT)
by name. Memory is two pages of keys, whatever the keyspace size.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
import structlog
from redis.crc import key_slot

from janitor import errors
from janitor.celery_model import payload
from janitor.celery_model.keyspace import SCAN_MATCH, Kind, Layout
from janitor.config import Settings
from janitor.operations import rules
from janitor.operations.rules import Action, Skip, decide
from janitor.redis_io import cluster, connection, pacing, scripts
from janitor.redis_io.lease import Fence
from janitor.redis_io.pacing import Pacer

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
SPARSE = 100  # DECIDE's SCAN COUNT goes up to this many times scan_count, paced by time
NAME_ONLY = frozenset({Kind.MALFORMED, Kind.CHORD_CLAIM})  # judged by name alone: skipped, or never touched
# Cluster mode: a script call refused because its slot is moving or has moved to
# another node. The batch is skipped (never acted on stale routing) and counted.
RESHARDING = (redis.exceptions.AskError, redis.exceptions.TryAgainError)  # MovedError is an AskError
_T = TypeVar("_T")


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
    # value bytes of skipped keys that stay in Redis: too large to judge, dated in the future
    skipped_bytes: collections.Counter[str] = field(default_factory=collections.Counter)
    raced: int = 0
    unfenced: int = 0  # cluster: batches outside the lease key's slot (see _Pass._fenced)
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
            "skipped_bytes": _plain(self.skipped_bytes),
            "raced": self.raced,
            "bytes_deleted": self.bytes_deleted,
            "batches": self.batches,
            "duration_s": round(self.duration_s, 3),
            "commands": dict(self.tally.commands),
            "commands_total": self.commands,
        }
        if self.nodes:
            out["nodes"] = self.nodes
        if self.unfenced:
            out["unfenced_batches"] = self.unfenced
        return out


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
    timer: Callable[[], float] = time.perf_counter,
) -> SweepReport:
    """Run one pass; stops between batches (never inside one) when ``should_stop()``, leaving the
    actions Python decided and had not sent yet (``_Pass.waiting``) to the next pass. The next
    page's DECIDE may be running in Redis by then: the pass waits for it and counts what it did.

    ``timer`` times each script call, which sizes the next batch: tests pass a fake one so
    batch sizes do not depend on how fast the machine is.

    ``cluster``: ``client`` is one Redis Cluster primary; every script call then
    holds keys of one hash slot only (see :meth:`_Pass.batch`).
    """
    report = SweepReport(dry_run=settings.dry_run if dry_run is None else dry_run)
    run = _Pass(client, settings, report, fence, clock, cluster, timer)
    started = time.monotonic()
    with contextlib.closing(run.batches()) as batches:
        try:
            for _ in batches:
                report.batches += 1
                on_batch(report)
                if should_stop():
                    run.drain()
                    report.duration_s = time.monotonic() - started
                    return report
        except Exception:
            on_batch(report)  # what the calls before the failed one did is counted before the error goes up
            raise
    report.completed = True
    report.duration_s = time.monotonic() - started
    return report


def sweep_keys(
    client: redis.Redis,
    settings: Settings,
    keys: Sequence[bytes],
    *,
    fence: Callable[[], Fence] = Fence,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    timer: Callable[[], float] = time.perf_counter,
    pacer: Pacer | None = None,
) -> SweepReport:
    """The rules over these key names (watch mode's newly written keys), through the same scripts as a
    pass: names no Celery client writes cost no call, the rest go to DECIDE by name in pacer-sized chunks.
    ``pacer``: kept by a caller that calls again and again, so sizes and JANITOR_MAX_KEYS_PER_SECOND
    carry from one call to the next."""
    report = SweepReport(dry_run=settings.dry_run)
    run = _Pass(client, settings, report, fence, clock, timer=timer)
    run.pacer = pacer or run.pacer
    started = time.monotonic()
    names = [key for key in dict.fromkeys(keys) if run.layout.classify(key)[0] is not Kind.OTHER]
    report.scanned = len(names)
    for chunk in run.chunks(names):
        run.batch(chunk)
        report.batches += 1
    run.flush()
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
    timer: Callable[[], float] = time.perf_counter
    layout: Layout = field(init=False)
    scan_pacer: Pacer = field(init=False)
    pacer: Pacer = field(init=False)
    inspect_pacer: Pacer = field(init=False)
    act_pacer: Pacer = field(init=False)
    retention: scripts.Retention = field(init=False)
    # What Python decided, held until it fills one ACT call (pickles, naive dates outside UTC
    # are a few per page: a round trip for each page's few would cost more than the page).
    # By key: a key SCAN returns twice (during a rehash) is written once.
    waiting: dict[bytes, Action] = field(default_factory=dict, init=False)
    inflight: _Call | None = field(default=None, init=False)  # the next page's DECIDE, sent, its reply unread

    def __post_init__(self) -> None:
        s = self.settings
        self.layout = Layout.for_prefixes(s.key_prefix, s.broker_key_prefix)
        # DECIDE, INSPECT and ACT cost differently per key, so each is sized on its own timings.
        # DECIDE's SCAN COUNT may grow past scan_count where few keys match (SPARSE), so a
        # sparse keyspace costs fewer calls; the keys one call reads stay under `pacer`'s size.
        self.scan_pacer = Pacer(s.max_batch_ms, s.scan_count * SPARSE, s.max_keys_per_second)
        self.pacer = Pacer(s.max_batch_ms, s.scan_count, s.max_keys_per_second)
        self.inspect_pacer = Pacer(s.max_batch_ms, s.scan_count)
        self.act_pacer = Pacer(s.max_batch_ms, s.scan_count)
        self.retention = scripts.Retention(
            result_ttl_ms=s.result_ttl * 1000,
            failure_ttl_ms=s.failure_ttl * 1000,
            pending_ttl_ms=s.pending_ttl * 1000,
            future_tolerance_us=s.future_tolerance * 1_000_000,
            max_value=s.max_value_bytes,
            task_prefix=self.layout.task_prefix,
            group_prefix=self.layout.group_prefix,
            budget=s.batch_bytes,
            naive_utc=s.naive_timezone == "UTC",
            edge=payload.EDGE_BYTES,
            group_ttl_ms=s.group_ttl * 1000,
            edge_first=payload.EDGE_FIRST_BYTES,
            deadline_us=int(s.max_batch_ms * 1000 * pacing.DEADLINE),
        )

    def batches(self) -> Generator[None]:
        """Yield after each batch. DECIDE SCANs inside Redis, one page per call; a cluster
        (a call's keys must share a slot) and cap mode (INSPECT reads every key) SCAN here."""
        if self.cluster or self.settings.cap_ttl:
            for page in self.pages():
                self.report.scanned += len(page)
                for chunk in self.chunks(page):
                    self.batch(chunk)
                    yield
            return
        self.inflight = self._send(b"0")
        try:
            while self.inflight:
                call, self.inflight = self.inflight, None
                reply = self._receive(call, overlapped=True)
                if reply.cursor != b"0":
                    self.scan_pacer.throttle(reply.scanned)
                    # Sent before this page is judged, and before the stop check: should the lease
                    # pass to another janitor meanwhile, the fence inside DECIDE refuses the call.
                    self.inflight = self._send(reply.cursor)
                self._judge(reply, call.now)
                if not self.inflight:
                    self.flush()
                yield
        except Exception:
            # The pass fails (a call refused FENCED, a connection lost) while the next page's
            # DECIDE may already have written: that call is waited for and counted, unless it
            # failed too, before the error ends the pass.
            with contextlib.suppress(redis.RedisError):
                self.drain()
            raise
        finally:
            if self.inflight:  # interrupted, or the pass was closed without drain()
                self.inflight.sent.abandon()
                self.inflight = None

    def drain(self) -> None:
        """Wait for the DECIDE still running when a pass stops, and count it as a batch, with what it
        did; the keys it handed back are left as they were, for the next pass. Raises FENCED, as any
        batch does, if the lease had passed to another janitor when it ran."""
        call, self.inflight = self.inflight, None
        if call:
            self._receive(call, overlapped=True)
            self.report.batches += 1

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
        """Split a page at the size of the batch's main call (DECIDE, or INSPECT in cap mode),
        which follows the measured duration of each call."""
        sizer = self.inspect_pacer if self.settings.cap_ttl else self.pacer
        for chunk in _parts(page, sizer):
            yield chunk
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
        # Names no Celery client writes cost no call (on a cluster, one call per slot).
        candidates = [(key, *self.layout.classify(key)) for key in keys]
        candidates = [c for c in candidates if c[1] is not Kind.OTHER]
        if not candidates:
            return
        if not self.settings.cap_ttl:
            self._decide(keys=[key for key, _, _ in candidates])
            return
        # Cap mode reads keys that have a TTL too, which DECIDE leaves alone: INSPECT all.
        self.report.celery_keys += len(candidates)
        actions: list[tuple[bytes, Action]] = []
        self._inspect(candidates, self.clock(), actions)
        self._act_all(actions)

    def _decide(self, keys: Sequence[bytes]) -> None:
        """One DECIDE call over ``keys`` by name, waited for and judged (a page's calls go in batches())."""
        call = self._send(keys=keys)
        self._judge(self._receive(call, overlapped=False), call.now)

    def _send(self, cursor: bytes = b"", keys: Sequence[bytes] = ()) -> _Call:
        now = self.clock()
        # A SCAN page can hold more keys than COUNT (during a rehash): past twice what fits in the
        # time target, the rest of the page is handed back and goes by name in the next calls.
        size, limit = (self.scan_pacer.size, 2 * self.pacer.size) if cursor else (len(keys), len(keys))
        current = self._fenced(Fence() if self.report.dry_run else self.fence(), keys)
        started = self.timer()
        sent = scripts.decide(
            self.report.tally,
            self.client,
            self.retention,
            fence=current.key,
            token=current.token,
            dry_run=self.report.dry_run,
            now_us=(now - EPOCH) // rules.MICROSECOND,
            limit=limit,
            cursor=cursor,
            count=size,
            match=SCAN_MATCH,
            keys=keys,
        )
        return _Call(sent, now, bool(cursor), size, limit, started)

    def _receive(self, call: _Call, *, overlapped: bool) -> scripts.Decided:
        """The reply of a DECIDE call, counted; its duration sizes the next calls. ``overlapped``: Python
        did other work since sending it, so a reply already here took at most the time measured."""
        exact = not (overlapped and call.sent.ready())
        reply = call.sent.reply()
        seconds = self.timer() - call.started
        if call.paged:  # COUNT sizes the SCAN, the limit the keys DECIDE reads: each pacer learns its own
            self.scan_pacer.observe(call.size, seconds, exact=exact)
            self.report.scanned += reply.scanned
        self.pacer.observe(min(reply.scanned, call.limit), seconds, exact=exact)
        self.report.celery_keys += reply.celery
        self.report.bytes_deleted += reply.freed
        self.report.ttl_applied.update({Kind.TASK: reply.ttl_set} if reply.ttl_set else {})
        self.report.ttl_applied.update({Kind.GROUP: reply.group_ttl_set} if reply.group_ttl_set else {})
        self.report.deleted.update({Kind.TASK: reply.deleted} if reply.deleted else {})
        return reply

    def _judge(self, reply: scripts.Decided, now: dt.datetime) -> None:
        """Decide in Python what DECIDE handed back, INSPECT what it could not read, ACT on both;
        DECIDE again, by name, the keys past its limit."""
        actions: list[tuple[bytes, Action]] = []
        unread: list[tuple[bytes, Kind, bytes]] = []
        over: list[bytes] = []
        for row in reply.handed:
            if row.code.dry_run:  # what DECIDE would do: already counted
                continue
            candidate = (row.key, *self.layout.classify(row.key))
            if row.code is scripts.Code.BY_NAME:  # judged here, read only if it has no TTL
                if candidate[1] is Kind.OTHER:
                    continue
                self.report.celery_keys += 1
                if candidate[1] in NAME_ONLY:
                    self._rule(candidate, "", row.pttl, None, now=now, actions=actions)
                elif row.pttl == -1:
                    unread.append(candidate)
            elif row.code.read:
                self._rule(candidate, row.type, -1, row.value, now=now, actions=actions)
            elif row.code is scripts.Code.UNREAD:
                unread.append(candidate)
            elif row.code is scripts.Code.OVER_LIMIT:
                over.append(row.key)
        self._inspect(unread, now, actions)
        self._settle(actions)
        for part in _parts(over, self.pacer):
            self._decide(keys=part)

    def _inspect(
        self, candidates: list[tuple[bytes, Kind, bytes]], now: dt.datetime, actions: list[tuple[bytes, Action]]
    ) -> None:
        """Read type, TTL and value (INSPECT), decide each key in Python."""
        s = self.settings
        start = 0
        while start < len(candidates):
            part = candidates[start : start + self.inspect_pacer.size]
            started = self.timer()
            rows = scripts.inspect(
                self.report.tally,
                self.client,
                keys=[key for key, _, _ in part],
                max_value=s.max_value_bytes,
                budget=s.batch_bytes,
                read_ttl=s.cap_ttl,
                edge=payload.EDGE_BYTES,
            )
            self.inspect_pacer.observe(len(part), self.timer() - started)
            for candidate, row in zip(part, rows, strict=False):
                self._rule(candidate, row.type, row.pttl, row.value, now=now, actions=actions)
            start += len(rows)

    def _rule(
        self,
        candidate: tuple[bytes, Kind, bytes],
        rtype: str,
        pttl: int,
        value: bytes | payload.Edges | None,
        *,
        now: dt.datetime,
        actions: list[tuple[bytes, Action]],
    ) -> None:
        key, kind, ident = candidate
        decision = decide(kind, ident, rtype, pttl, value, now=now, settings=self.settings)
        if isinstance(decision, Skip):
            self.report.skipped[decision.reason] += 1
            if decision.size:
                self.report.skipped_bytes[decision.reason] += decision.size
        elif decision is not None:
            actions.append((key, decision))

    def _settle(self, actions: list[tuple[bytes, Action]]) -> None:
        """ACT on what Python decided once it fills an ACT call; at once on a cluster, where one
        call's keys must share a slot."""
        if self.cluster:
            self._act_all(actions)
            return
        self.waiting.update(actions)
        if len(self.waiting) >= self.act_pacer.size:
            self.flush()

    def flush(self) -> None:
        """ACT on every action that waits."""
        self._act_all(list(self.waiting.items()))
        self.waiting = {}

    def _act_all(self, actions: list[tuple[bytes, Action]]) -> None:
        for part in _parts(actions, self.act_pacer):
            self._act(part)

    def _act(self, actions: list[tuple[bytes, Action]]) -> None:
        if self.report.dry_run:
            applied = [True] * len(actions)
        else:
            current = self._fenced(self.fence(), [key for key, _ in actions])
            writes = [scripts.Write(key, action.op, action.ms, action.guard) for key, action in actions]
            started = self.timer()
            applied = scripts.act(self.report.tally, self.client, fence=current.key, token=current.token, writes=writes)
            self.act_pacer.observe(len(writes), self.timer() - started)
        for (_key, action), ok in zip(actions, applied, strict=True):
            if not ok:
                self.report.raced += 1
            elif action.deletes:
                self.report.deleted[action.kind] += 1
                self.report.bytes_deleted += action.size
            elif action.op is scripts.Op.CAP_TTL:
                self.report.ttl_capped[action.kind] += 1
            else:
                self.report.ttl_applied[action.kind] += 1

    def _fenced(self, fence: Fence, keys: Sequence[bytes]) -> Fence:
        """The fence a DECIDE or ACT call checks. On a cluster every key of a call must share
        a slot, so a batch outside the lease key's slot cannot read it: it runs unfenced,
        counted in ``report.unfenced``, and a batch key stands in as KEYS[1]. Such a batch
        is still safe from a stale leader: it stops between batches once its lease may have
        lapsed, and every write is re-checked (TTL only where none, delete only the value it read)."""
        if not self.cluster or not keys or key_slot(fence.key) == key_slot(keys[0]):
            return fence
        if fence.token:
            self.report.unfenced += 1
        return Fence(keys[0], "")


@dataclass(frozen=True, slots=True)
class _Call:
    """A DECIDE call sent, and what its reply is judged and timed by."""

    sent: scripts.Sent[scripts.Decided]
    now: dt.datetime  # the time its decisions are taken at, here and in Redis
    paged: bool  # over a SCAN page (else over keys by name)
    size: int  # the page's SCAN COUNT
    limit: int  # the most keys it reads
    started: float  # timer() when sent


def _parts(items: list[_T], sizer: Pacer) -> Iterator[list[_T]]:
    """``items`` in slices of the pacer's size, read anew for each slice: the calls made with one
    slice resize the pacer, and the next slice starts where that one ended."""
    start = 0
    while start < len(items):
        part = items[start : start + sizer.size]
        yield part
        start += len(part)


def _plain(counter: collections.Counter[str]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(counter.items()) if v}


log = structlog.get_logger("janitor.cluster")
# What ends one node's pass but not the others': the node is unreachable, failed
# over (CLUSTERDOWN / MASTERDOWN while the cluster elects) or turned read-only.
NODE_FAILURES = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.ReadOnlyError,
)


def sweep_cluster(
    settings: Settings,
    *,
    dry_run: bool | None = None,
    on_batch: Callable[[SweepReport], None] = lambda _r: None,
    should_stop: Callable[[], bool] = lambda: False,
    fence: Callable[[], Fence] = Fence,
) -> SweepReport:
    """One pass over every primary; one report with the summed counters and a summary per node."""
    total = SweepReport(dry_run=settings.dry_run if dry_run is None else dry_run)
    started = time.monotonic()
    nodes = cluster.primaries(settings)
    kwargs = cluster.node_kwargs(settings)
    total.completed = bool(nodes)
    for host, port in nodes:
        name = f"{host}:{port}"
        client = redis.Redis(**(kwargs | {"host": host, "port": port}))
        error = ""
        seen = [SweepReport(dry_run=total.dry_run)]  # the node's report as of its last finished batch

        def batch_done(report: SweepReport, seen: list[SweepReport] = seen) -> None:
            seen[0] = report
            on_batch(_progress(total, report))

        try:
            report = sweep(
                client,
                settings,
                dry_run=total.dry_run,
                fence=fence,
                on_batch=batch_done,
                should_stop=should_stop,
                cluster=True,
            )
        except NODE_FAILURES as exc:
            # What the finished batches did is kept and counted; the node is incomplete,
            # and the next pass (which asks the cluster for its primaries again) rescans it.
            report = seen[0]
            report.completed = False
            error = errors.classify(exc).message
        finally:
            client.close()
        _merge(total, report)
        total.completed = total.completed and report.completed
        summary = _summary(report) | ({"error": error} if error else {})
        total.nodes[name] = summary
        log.info("sweep.node", node=name, url=connection.mask_url(settings.redis_url), **summary)
        if should_stop():
            total.completed = False
            break
    total.duration_s = time.monotonic() - started
    return total


def _summary(report: SweepReport) -> dict[str, Any]:
    return {
        "completed": report.completed,
        "scanned": report.scanned,
        "celery_keys": report.celery_keys,
        "ttl_applied": sum(report.ttl_applied.values()),
        "deleted": sum(report.deleted.values()),
        "skipped_moved": report.skipped["moved"],
        "duration_s": round(report.duration_s, 3),
    }


def _merge(total: SweepReport, report: SweepReport) -> None:
    total.scanned += report.scanned
    total.celery_keys += report.celery_keys
    total.ttl_applied.update(report.ttl_applied)
    total.ttl_capped.update(report.ttl_capped)
    total.deleted.update(report.deleted)
    total.skipped.update(report.skipped)
    total.raced += report.raced
    total.unfenced += report.unfenced
    total.bytes_deleted += report.bytes_deleted
    total.batches += report.batches
    total.tally.commands.update(report.tally.commands)


def _progress(total: SweepReport, current: SweepReport) -> SweepReport:
    """What ``on_batch`` sees: the nodes done so far plus the running one (scanned only)."""
    view = SweepReport(dry_run=total.dry_run, scanned=total.scanned + current.scanned)
    view.batches = total.batches + current.batches
    return view
