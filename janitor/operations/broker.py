"""Broker health: unacked messages, queue depths, orphaned tasks; and a safe restore.

Works on kombu's Redis keys directly (``unacked``, ``unacked_index``, the queue lists and ``_kombu.binding.*``),
without the user's Celery app and without ever opening a kombu consumer, so the
janitor never takes a message off a queue.

:func:`detect` is read-only. Every read is bounded: ``unacked_index`` is walked
oldest first one page at a time (``ZRANGE BYSCORE LIMIT``), and the ``unacked``
entries of a page are summarised by a script on the server (``SUMMARY``) so
message bodies never cross the network. :func:`restore` moves a message back to
its queue with one atomic script per message (``RESTORE``), under kombu's own
``unacked_mutex``, the way kombu's ``restore_by_tag`` does.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import dataclasses
import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from janitor import errors
from janitor.celery_model import payload
from janitor.celery_model.keyspace import KOMBU_PRIORITY_STEPS, KOMBU_SEP, Layout
from janitor.config import Settings
from janitor.redis_io import scripts
from janitor.redis_io.heartbeats import WorkerTracker

# Exchanges kombu/Celery use for pub/sub and remote control: their binding
# members name no list, so they are not queues to measure.
_NOT_QUEUE_EXCHANGES = {"celeryev", "celery.pidbox", "reply.celery.pidbox"}
REPLY_EXCHANGE = "reply.celery.pidbox"
# A restore counter outlives any sane retry storm and then cleans itself up.
RESTORE_COUNT_TTL_S = 7 * 86400
# An unacked hash this large is an incident in itself; one pass stops there.
MAX_WALK = 200_000
STATES = ("active", "running", "held", "stuck", "expired", "unreadable", "index_only", "hash_only")


# -- report types --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class UnackedMessage:
    """One entry of ``unacked``, as its headers describe it."""

    tag: str
    task_name: str
    task_id: str
    queue: str
    priority: int
    delivered_at: float
    eta: float | None
    expires: float | None
    retries: int
    state: str
    exchange: str = ""
    worker: str = ""  # hostname named by the task's STARTED result, if any

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """Messages waiting in one queue, over all its priority lists."""

    name: str
    total: int
    by_priority: dict[int, int]
    oldest_age_s: float | None
    head_id: str = ""  # task id of the next message consumed (highest-priority list first)


@dataclass
class BrokerReport:
    """What one read-only pass saw. ``stuck`` lists what :func:`restore` may act on."""

    now: float
    visibility_timeout: int
    queues: list[QueueDepth] = field(default_factory=list)
    unacked_total: int = 0
    by_state: collections.Counter[str] = field(default_factory=collections.Counter)
    # states 'held' and 'running': what the ETA and running-task guards re-score
    guardable: list[UnackedMessage] = field(default_factory=list)
    oldest_unacked_age_s: float | None = None
    # state 'stuck' (past the visibility timeout) or 'expired' (past it and past `expires`)
    stuck: list[UnackedMessage] = field(default_factory=list)
    # state 'running' (STARTED on a worker whose heartbeat is live) and delivered longer ago than
    # the visibility timeout: kombu's own restore will hand these to a second worker
    overdue_running: list[UnackedMessage] = field(default_factory=list)
    max_eta_delay_s: float | None = None
    orphaned_started: list[tuple[str, str]] = field(default_factory=list)
    # unacked messages by (queue, state): the queue is the entry's routing key as kombu stored it
    unacked_by_queue: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    # filled by the broker job: dead-letter list lengths, seconds the head task has waited
    dead_letters: dict[str, int] = field(default_factory=dict)
    head_wait_s: dict[str, float] = field(default_factory=dict)
    workers_alive: int | None = None  # None: no heartbeat listener was given
    leaked_reply_lists: int = 0
    # A binding member not of the form routing_key<sep>pattern<sep>queue for our sep: the workers use another.
    foreign_binding: str = ""
    truncated: bool = False
    duration_s: float = 0.0
    tally: scripts.Tally = field(default_factory=scripts.Tally)

    @property
    def stuck_tags(self) -> set[str]:
        return {m.tag for m in self.stuck}

    def backlog(self, queue: QueueDepth) -> int:
        """Waiting plus delivered-unacked messages of ``queue``: the figure an autoscaler needs."""
        return queue.total + sum(n for (q, _), n in self.unacked_by_queue.items() if q == queue.name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "visibility_timeout": self.visibility_timeout,
            "queues": [
                {"name": q.name, "total": q.total, "by_priority": q.by_priority, "oldest_age_s": q.oldest_age_s}
                for q in self.queues
            ],
            "unacked_total": self.unacked_total,
            "by_state": {s: self.by_state[s] for s in STATES},
            "oldest_unacked_age_s": _round(self.oldest_unacked_age_s),
            "stuck": [m.as_dict() for m in self.stuck],
            "overdue_running": [m.as_dict() for m in self.overdue_running],
            "max_eta_delay_s": _round(self.max_eta_delay_s),
            "orphaned_started": [{"task_id": t, "hostname": h} for t, h in self.orphaned_started],
            "workers_alive": self.workers_alive,
            "leaked_reply_lists": self.leaked_reply_lists,
            "truncated": self.truncated,
            "duration_s": round(self.duration_s, 3),
            "commands": dict(self.tally.commands),
        }


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message moved to ``<prefix>janitor.dead.<queue>`` instead of its queue."""

    tag: str
    task_id: str
    task_name: str
    queue: str
    reason: str  # max_restores | expired | unroutable
    restores: int


@dataclass
class RestoreReport:
    """What :func:`restore` did (or, dry, would do)."""

    dry_run: bool
    restored: collections.Counter[str] = field(default_factory=collections.Counter)  # by queue
    dead_lettered: collections.Counter[str] = field(default_factory=collections.Counter)
    dead: list[DeadLetter] = field(default_factory=list)
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)  # by reason
    mutex_held: bool = False
    tally: scripts.Tally = field(default_factory=scripts.Tally)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "restored": dict(self.restored),
            "dead_lettered": dict(self.dead_lettered),
            "dead": [{k: getattr(d, k) for k in d.__slots__} for d in self.dead],
            "skipped": dict(self.skipped),
            "mutex_held": self.mutex_held,
            "commands": dict(self.tally.commands),
        }


@dataclass
class Sightings:
    """When each stuck delivery was first seen stuck, by the start time of the check that saw it.

    Restore acts only on a delivery seen stuck by two checks whose start times are at least
    ``min_gap`` apart. Two looks a few milliseconds apart (a job run twice, a retry) are one
    sighting: the gap is what gives a slow worker the chance to ack, and a dead one's
    heartbeat the time to lapse, before a message is handed to another worker.
    """

    min_gap: float
    first_seen: dict[tuple[str, float], float] = field(default_factory=dict)

    def confirm(self, report: BrokerReport) -> set[str]:
        """Record ``report``'s stuck deliveries; return the tags seen stuck at least ``min_gap`` ago too."""
        self.first_seen = {
            (m.tag, m.delivered_at): self.first_seen.get((m.tag, m.delivered_at), report.now) for m in report.stuck
        }
        return {tag for (tag, _), seen in self.first_seen.items() if report.now - seen >= self.min_gap}


class SeparatorMismatch(errors.ConfigMismatch):
    """The workers' kombu ``sep`` is not ``JANITOR_BROKER_SEP``: a restore would fill lists no worker reads."""


# -- key names -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BrokerKeys:
    """kombu's key names under ``global_keyprefix`` (prepended with no separator)."""

    prefix: str
    unacked: str
    index: str
    mutex: str
    sep: str
    steps: tuple[int, ...]

    @classmethod
    def of(cls, settings: Settings) -> BrokerKeys:
        p = settings.broker_key_prefix
        return cls(
            p,
            p + settings.unacked_key,
            p + settings.unacked_index_key,
            p + settings.unacked_mutex_key,
            settings.broker_sep,
            tuple(settings.priority_step_list),
        )

    def q_for_pri(self, queue: str, priority: int) -> str:
        """kombu's ``Channel._q_for_pri``: the list a message of this priority goes to."""
        step = max((s for s in self.steps if s <= priority), default=0)
        return self.prefix + (f"{queue}{self.sep}{step}" if step else queue)

    def sublists(self, queue: str) -> dict[str, int]:
        """Every list that may hold this queue's messages → its priority step.

        Both the configured ``sep``/steps and kombu's defaults, so a janitor
        configured differently from the workers still sees every message.
        """
        out = {self.prefix + queue: 0}
        for sep, steps in ((self.sep, self.steps), (KOMBU_SEP, KOMBU_PRIORITY_STEPS)):
            out.update({f"{self.prefix}{queue}{sep}{s}": s for s in steps if s})
        return out

    def counter(self, tag: str) -> str:
        return f"{self.prefix}celery-janitor:restores:{tag}"

    def dead_list(self, queue: str) -> str:
        return f"{self.prefix}janitor.dead.{queue}"

    def binding(self, exchange: str) -> str:
        return f"{self.prefix}_kombu.binding.{exchange}"


# -- detection -----------------------------------------------------------------
@dataclass
class QueueCatalog:
    """Queue names from the binding sets, found again at most every ``every`` seconds.

    Finding them is a SCAN of the whole keyspace (a binding set may have any
    name); a daemon checking the broker every minute must not pay that each time.
    """

    every: float
    names: frozenset[str] = frozenset()
    foreign_binding: str = ""
    found_at: float = float("-inf")

    def get(self, client: redis.Redis, settings: Settings, keys: BrokerKeys, report: BrokerReport) -> set[str]:
        if report.now - self.found_at >= self.every:
            names, self.foreign_binding = _queue_names(client, settings, keys, report)
            self.names = frozenset(names)
            self.found_at = report.now
        report.foreign_binding = self.foreign_binding
        return set(self.names)


def detect(
    client: redis.Redis,
    settings: Settings,
    *,
    now: float,
    workers: WorkerTracker | None = None,
    tally: scripts.Tally | None = None,
    catalog: QueueCatalog | None = None,
    results: redis.Redis | None = None,
    unacked_only: bool = False,
) -> BrokerReport:
    """One read-only pass over the unacked set, the queues and the reply bindings.

    ``results``: the result backend's Redis, when it is not the broker's (STARTED results
    are read there, to tell a running task from a stuck one). ``unacked_only``: the
    ``unacked_index`` walk alone (the guards), no orphan, queue or reply reads.
    """
    started = time.monotonic()
    keys = BrokerKeys.of(settings)
    # Every script here only reads: EVALSHA_RO lets a least-privilege user run them on
    # queues it may read but not write (docs/acl.md), and Redis refuses any write in them.
    counts = (tally or scripts.Tally()).commands
    reader = tally if isinstance(tally, scripts.ReadOnlyTally) else scripts.ReadOnlyTally(commands=counts)
    report = BrokerReport(now=now, visibility_timeout=settings.visibility_timeout, tally=reader)
    layout = settings.layout
    alive = workers.alive(now) if workers is not None else None
    if alive is not None:
        report.workers_alive = len(alive)
    for page in _index_pages(client, keys.index, settings.unacked_page, report):
        messages = _summarise(client, keys, page, settings, report)
        if workers is None or alive is None:
            for msg in messages:
                _settle(msg, report)
            continue
        hosts = _started_on(results or client, layout, messages, settings, report)
        knows_the_dead = workers.knows_the_dead(now)
        for msg in messages:
            _judge_started(msg, hosts.get(msg.task_id, ""), alive, knows_the_dead, report)
    if unacked_only:
        report.duration_s = time.monotonic() - started
        return report
    _hash_orphans(client, keys, settings, report)
    names = (catalog or QueueCatalog(every=0)).get(client, settings, keys, report)
    report.queues = _queue_depths(client, keys, report, names)
    report.leaked_reply_lists = _leaked_replies(client, keys, settings, report)
    report.duration_s = time.monotonic() - started
    return report


def _index_pages(client: redis.Redis, index: str, size: int, report: BrokerReport) -> Iterator[list[tuple[str, float]]]:
    """``unacked_index`` oldest first, one bounded page at a time.

    Paging is by score, not offset, so entries acked meanwhile shift nothing;
    ``skip`` steps over entries already seen that share the last score.
    """
    low: float | str = "-inf"
    skip = 0
    walked = 0
    while walked < MAX_WALK:
        report.tally.commands["ZRANGE"] += 1
        rows: list[tuple[bytes, float]] = client.zrange(  # type: ignore[assignment]
            index, low, "+inf", byscore=True, offset=skip, num=size, withscores=True
        )
        if not rows:
            return
        page = [(_text(t), float(s)) for t, s in rows]
        walked += len(page)
        yield page
        if len(page) < size:
            return
        last = page[-1][1]
        same = sum(1 for _, s in page if s == last)
        skip = skip + same if low == last else same
        low = last
    report.truncated = True


def _summarise(
    client: redis.Redis, keys: BrokerKeys, page: list[tuple[str, float]], settings: Settings, report: BrokerReport
) -> list[UnackedMessage]:
    rows = scripts.summary(report.tally, client, unacked=keys.unacked, tags=[t for t, _ in page])
    vt = settings.visibility_timeout
    out: list[UnackedMessage] = []
    for (tag, delivered), row in zip(page, rows, strict=True):
        report.unacked_total += 1
        age = report.now - delivered
        if report.oldest_unacked_age_s is None or age > report.oldest_unacked_age_s:
            report.oldest_unacked_age_s = age
        if not row.found:
            report.by_state["index_only"] += 1
            continue
        fields = None if row.fields is None else _fields(row.fields)
        if fields is None:
            report.by_state["unreadable"] += 1
            continue
        eta, expires = _stamp(fields.get("eta")), _stamp(fields.get("expires"))
        if eta is not None:
            delay = eta - delivered
            report.max_eta_delay_s = delay if report.max_eta_delay_s is None else max(report.max_eta_delay_s, delay)
        if expires is not None and expires < report.now:
            state = "expired"
        elif eta is not None and report.now < eta + vt:
            state = "held"  # kombu#337: a worker holds ETA messages in memory, scored by delivery time
        elif report.now > delivered + vt:
            state = "stuck"
        else:
            state = "active"
        msg = UnackedMessage(
            tag=tag,
            task_name=_str(fields.get("task")) or "unknown",
            task_id=_str(fields.get("id")),
            queue=_str(fields.get("rk")),
            priority=_priority(fields.get("priority")),
            delivered_at=delivered,
            eta=eta,
            expires=expires,
            retries=fields["retries"] if isinstance(fields.get("retries"), int) else 0,
            state=state,
            exchange=_str(fields.get("ex")),
        )
        out.append(msg)
    return out


def _judge_started(
    msg: UnackedMessage, host: str, alive: dict[str, float], knows_the_dead: bool, report: BrokerReport
) -> None:
    """Settle a message whose task may be STARTED on ``host``: running while that worker's heartbeat
    is live, orphaned once its silence means death, held back from restore until then."""
    if not host:
        _settle(msg, report)
    elif host in alive:
        _settle(dataclasses.replace(msg, state="running", worker=host), report)
    elif knows_the_dead:
        report.orphaned_started.append((msg.task_id, host))
        _settle(dataclasses.replace(msg, worker=host), report)
    else:
        report.by_state[msg.state] += 1  # not heard yet is not dead: counted, not handed on
        report.unacked_by_queue[msg.queue, msg.state] += 1


def _settle(msg: UnackedMessage, report: BrokerReport) -> None:
    """Count a message in its final state; list what restore may act on and what runs overdue."""
    report.by_state[msg.state] += 1
    report.unacked_by_queue[msg.queue, msg.state] += 1
    past_vt = report.now > msg.delivered_at + report.visibility_timeout
    # An expired message still inside the visibility timeout may be in a live
    # worker's hands (it will discard it itself); only past it is it ours.
    if msg.state == "stuck" or (msg.state == "expired" and past_vt):
        report.stuck.append(msg)
    elif msg.state == "running" and past_vt:
        report.overdue_running.append(msg)
    if msg.state in {"held", "running"}:
        report.guardable.append(msg)


def _fields(row: bytes) -> dict[str, Any] | None:
    try:
        fields = json.loads(row)
    except ValueError:
        return None
    if not isinstance(fields, dict):
        return None
    body = fields.pop("body", None)
    if isinstance(body, str):  # task protocol 1: task fields in the body
        try:
            raw = base64.b64decode(body, validate=True) if fields.pop("enc", None) == "base64" else body.encode()
            inner = json.loads(raw)
        except (ValueError, binascii.Error, RecursionError):
            inner = None
        if isinstance(inner, dict):
            for name in ("task", "id", "eta", "expires", "retries"):
                fields.setdefault(name, inner.get(name))
    return fields


def _started_on(
    client: redis.Redis, layout: Layout, messages: list[UnackedMessage], settings: Settings, report: BrokerReport
) -> dict[str, str]:
    """``{task_id: hostname}`` for messages whose result is STARTED and names its worker.

    Only ``acks_late`` tasks are still in ``unacked`` while they run, and only with
    ``task_track_started`` do they have a STARTED result: without it a task's worker is
    unknown here. Results are read by a script that skips values over ``max_value_bytes``,
    so a huge finished result is never read for this.
    """
    ids = sorted({m.task_id for m in messages if m.task_id})
    if not ids:
        return {}
    values = scripts.result_heads(
        report.tally, client, keys=[layout.task_prefix + i.encode() for i in ids], max_bytes=settings.max_value_bytes
    )
    hosts = {}
    for task_id, raw in zip(ids, values, strict=True):
        if not isinstance(raw, bytes):
            continue
        try:
            meta, _ = payload.decode(raw, max_bytes=settings.max_value_bytes)
        except payload.PayloadError:
            continue
        if not isinstance(meta, dict) or meta.get("status") != "STARTED":
            continue
        result = meta.get("result")
        host = result.get("hostname") if isinstance(result, dict) else None
        if isinstance(host, str) and host:
            hosts[task_id] = host
    return hosts


def unacked_task_ids(client: redis.Redis, settings: Settings, *, tally: scripts.Tally) -> tuple[set[str], bool]:
    """The task ids of every ``unacked`` entry (indexed or not), read in bounded pages; and whether
    the walk saw them all (False past ``MAX_WALK``: the caller cannot tell what is absent)."""
    keys = BrokerKeys.of(settings)
    reader = tally if isinstance(tally, scripts.ReadOnlyTally) else scripts.ReadOnlyTally(commands=tally.commands)
    report = BrokerReport(now=0.0, visibility_timeout=settings.visibility_timeout, tally=reader)
    pages = [[t for t, _ in page] for page in _index_pages(client, keys.index, settings.unacked_page, report)]
    cursor = b"0"
    while True:
        orphans = scripts.hash_orphans(
            reader, client, unacked=keys.unacked, index=keys.index, cursor=cursor, count=settings.unacked_page
        )
        if orphans.orphans:
            pages.append([_text(t) for t in orphans.orphans])
        cursor = orphans.cursor
        if orphans.last:
            break
    ids: set[str] = set()
    for tags in pages:
        for row in scripts.summary(reader, client, unacked=keys.unacked, tags=tags):
            fields = None if row.fields is None else _fields(row.fields)
            if fields is not None and _str(fields.get("id")):
                ids.add(_str(fields.get("id")))
    return ids, not report.truncated


def _hash_orphans(client: redis.Redis, keys: BrokerKeys, settings: Settings, report: BrokerReport) -> None:
    """Count ``unacked`` entries with no ``unacked_index`` entry (kombu never restores those)."""
    cursor = b"0"
    while True:
        page = scripts.hash_orphans(
            report.tally, client, unacked=keys.unacked, index=keys.index, cursor=cursor, count=settings.unacked_page
        )
        report.by_state["hash_only"] += len(page.orphans)
        cursor = page.cursor
        if page.last:
            return


def _queue_names(
    client: redis.Redis, settings: Settings, keys: BrokerKeys, report: BrokerReport
) -> tuple[set[str], str]:
    """Queue names bound to any exchange, and the first binding not written with our ``sep`` (or "")."""
    names = set(settings.queue_list)
    match = _glob_escape(keys.binding("")) + "*"
    cursor = 0
    bindings: list[bytes | str] = []
    while True:
        report.tally.commands["SCAN"] += 1
        cursor, found = client.scan(cursor, match=match, count=settings.scan_count, _type="set")
        bindings += found
        if int(cursor) == 0:
            break
    skip = len(keys.binding(""))
    foreign = ""
    for key in bindings:
        if _text(key)[skip:] in _NOT_QUEUE_EXCHANGES:
            continue
        for member in _smembers(client, key, report):
            if not foreign and len(_text(member).split(keys.sep)) != 3:
                foreign = _text(member)
            queue = _split_binding(member, keys.sep)[2]
            if queue and not queue.endswith(".celery.pidbox") and not queue.startswith("celeryev."):
                names.add(queue)
    return names, foreign


def _queue_depths(client: redis.Redis, keys: BrokerKeys, report: BrokerReport, names: set[str]) -> list[QueueDepth]:
    out = []
    for name in sorted(names):
        lists = keys.sublists(name)
        rows = scripts.queue_depth(report.tally, client, lists=list(lists))
        by_priority: dict[int, int] = collections.Counter()
        stamps = []
        heads: dict[int, str] = {}
        for step, row in zip(lists.values(), rows, strict=True):
            if row.length:
                by_priority[step] += row.length
                heads.setdefault(step, row.head_id)
            if row.stamp is not None:
                stamps.append(row.stamp)
        oldest = report.now - min(stamps) if stamps else None
        head = heads[min(heads)] if heads else ""  # kombu reads the lowest step (highest priority) first
        out.append(QueueDepth(name, sum(by_priority.values()), dict(sorted(by_priority.items())), oldest, head))
    return out


def _leaked_replies(client: redis.Redis, keys: BrokerKeys, settings: Settings, report: BrokerReport) -> int:
    """Reply lists of control calls whose caller is gone: bound, no TTL, idle past reply_ttl.

    Read from the reply exchange's binding set, so no keyspace scan; reply lists
    that lost their binding in the SREM/DEL race are the results sweep's job.
    """
    lists = [
        keys.prefix + _split_binding(m, keys.sep)[2] for m in _smembers(client, keys.binding(REPLY_EXCHANGE), report)
    ]
    leaked = 0
    for start in range(0, len(lists), 200):
        chunk = lists[start : start + 200]
        pipe = client.pipeline(transaction=False)
        for name in chunk:
            pipe.pttl(name)
            pipe.object("idletime", name)
        report.tally.commands["PTTL"] += len(chunk)
        report.tally.commands["OBJECT"] += len(chunk)
        replies = pipe.execute(raise_on_error=False)
        for pttl, idle in zip(replies[::2], replies[1::2], strict=True):
            if pttl == -1 and isinstance(idle, int) and idle > settings.reply_ttl:
                leaked += 1
    return leaked


# -- restore -------------------------------------------------------------------
def restore(
    client: redis.Redis,
    settings: Settings,
    report: BrokerReport,
    *,
    confirmed: set[str],
    dry_run: bool,
    tally: scripts.Tally | None = None,
) -> RestoreReport:
    """Push back what is stuck now and ``confirmed`` (see :class:`Sightings`); dead-letter what loops or expired.

    Holds kombu's ``unacked_mutex`` for the whole pass, so a worker's own
    ``restore_visible`` skips meanwhile (and we skip while it holds it).
    """
    keys = BrokerKeys.of(settings)
    out = RestoreReport(dry_run=dry_run, tally=tally or scripts.Tally())
    candidates = [m for m in report.stuck if m.tag in confirmed]
    out.skipped["seen_once"] = len(report.stuck) - len(candidates)
    if not candidates:
        return out
    if report.foreign_binding:
        raise SeparatorMismatch(
            f"the workers' kombu separator is not JANITOR_BROKER_SEP={keys.sep!r}: binding "
            f"{report.foreign_binding!r} is not routing_key{keys.sep!r}pattern{keys.sep!r}queue; set "
            "JANITOR_BROKER_SEP to the workers' broker_transport_options['sep'] (kombu's default: '\\x06\\x16')"
        )

    def restore_all(token: str) -> None:
        tables: dict[str, list[tuple[str, str, str]]] = {}
        checked: set[str] = set()
        for start in range(0, len(candidates), settings.unacked_page):
            page = candidates[start : start + settings.unacked_page]
            _restore_page(client, settings, keys, page, token=token, tables=tables, checked=checked, out=out)

    if dry_run:
        restore_all("")
        return out
    with unacked_mutex(client, keys, settings, out.tally) as token:
        if token is None:
            out.mutex_held = True
            out.skipped["mutex_held"] += len(candidates)
        else:
            restore_all(token)
    return out


@contextlib.contextmanager
def unacked_mutex(
    client: redis.Redis, keys: BrokerKeys, settings: Settings, tally: scripts.Tally
) -> Iterator[str | None]:
    """kombu's ``unacked_mutex``, taken as its ``restore_visible`` takes it: yields our token, or None
    while someone else holds it (a consumer restoring right now). Released by compare-and-delete."""
    token = uuid.uuid4().hex
    tally.commands["SET"] += 1
    if not client.set(keys.mutex, token, nx=True, px=settings.unacked_mutex_expire * 1000):
        yield None
        return
    try:
        yield token
    finally:
        scripts.release(tally, client, lock=keys.mutex, token=token)


def auto_restore(
    client: redis.Redis,
    settings: Settings,
    report: BrokerReport,
    *,
    confirmed: set[str],
    tally: scripts.Tally | None = None,
) -> RestoreReport | None:
    """:func:`restore` when ``JANITOR_RESTORE_STUCK`` is on, else None (detection only)."""
    if not settings.restore_stuck:
        return None
    return restore(client, settings, report, confirmed=confirmed, dry_run=settings.dry_run, tally=tally)


def _restore_page(
    client: redis.Redis,
    settings: Settings,
    keys: BrokerKeys,
    page: list[UnackedMessage],
    *,
    token: str,
    tables: dict[str, list[tuple[str, str, str]]],
    checked: set[str],
    out: RestoreReport,
) -> None:
    out.tally.commands["HMGET"] += 1
    raws = client.hmget(keys.unacked, [m.tag for m in page])
    counts: list[Any] = [None] * len(page)
    if out.dry_run:
        out.tally.commands["MGET"] += 1
        counts = client.mget([keys.counter(m.tag) for m in page])
    for msg, raw, count in zip(page, raws, counts, strict=True):
        if not isinstance(raw, bytes):
            out.skipped["gone"] += 1
            continue
        try:
            entry, exchange, routing_key = json.loads(raw)
            new_payload = _redelivered(entry)
        except (ValueError, TypeError, KeyError, AttributeError):
            out.skipped["unreadable"] += 1
            continue
        queues = _route(client, keys, str(exchange or ""), str(routing_key or ""), tables=tables, tally=out.tally)
        priority = _priority(entry.get("properties", {}).get("priority"))
        for queue in queues:
            _check_priority_list(client, keys, queue, priority, checked=checked, tally=out.tally)
        reason = "expired" if msg.state == "expired" else ("unroutable" if not queues else "")
        home = queues[0] if queues else str(routing_key or exchange or "unroutable")
        if out.dry_run:
            restores = int(count or 0) + 1
            dead = reason or restores > settings.max_restores
            result = scripts.Restored(scripts.Outcome.DEAD if dead else scripts.Outcome.RESTORED, restores)
        else:
            result = scripts.restore(
                out.tally,
                client,
                unacked=keys.unacked,
                index=keys.index,
                mutex=keys.mutex,
                counter=keys.counter(msg.tag),
                dead_list=keys.dead_list(home),
                targets=[keys.q_for_pri(q, priority) for q in queues],
                tag=msg.tag,
                mutex_token=token,
                entry=raw,
                new_payload=new_payload,
                delivered_at=msg.delivered_at,
                max_restores=settings.max_restores,
                counter_ttl_s=RESTORE_COUNT_TTL_S,
                dead_letter=bool(reason),
            )
        if result.outcome is scripts.Outcome.RESTORED:
            out.restored[home] += 1
        elif result.outcome is scripts.Outcome.DEAD:
            out.dead_lettered[home] += 1
            out.dead.append(
                DeadLetter(msg.tag, msg.task_id, msg.task_name, home, reason or "max_restores", result.restores)
            )
        else:
            out.skipped[result.outcome.value] += 1


def _check_priority_list(
    client: redis.Redis, keys: BrokerKeys, queue: str, priority: int, *, checked: set[str], tally: scripts.Tally
) -> None:
    """Refuse to restore into a priority list that does not exist while the queue has lists named with
    another separator: the workers' ``sep`` is not ours, and they would never read it."""
    home = keys.prefix + queue
    target = keys.q_for_pri(queue, priority)
    others = [k for k in keys.sublists(queue) if k != home and keys.sep not in k[len(home) :]]
    if target == home or target in checked or not others:
        return
    tally.commands["EXISTS"] += 1 + len(others)
    pipe = client.pipeline(transaction=False)
    for key in (target, *others):
        pipe.exists(key)
    found, *elsewhere = pipe.execute()
    if not found and any(elsewhere):
        named = next(k for k, e in zip(others, elsewhere, strict=True) if e)
        raise SeparatorMismatch(
            f"queue {queue!r} has priority lists named like {named!r}, not {target!r}: the workers' kombu separator "
            f"is not JANITOR_BROKER_SEP={keys.sep!r}; set it to the workers' broker_transport_options['sep'] "
            "(kombu's default: '\\x06\\x16')"
        )
    checked.add(target)


def _redelivered(entry: dict[str, Any]) -> str:
    """The message as kombu's ``_do_restore_message`` pushes it back: flagged redelivered."""
    headers = entry.get("headers")
    if isinstance(headers, dict):
        headers["redelivered"] = True
    info = entry.get("properties", {}).get("delivery_info")
    if isinstance(info, dict):
        info["redelivered"] = True
    return json.dumps(entry)


def _route(
    client: redis.Redis,
    keys: BrokerKeys,
    exchange: str,
    routing_key: str,
    *,
    tables: dict[str, list[tuple[str, str, str]]],
    tally: scripts.Tally,
) -> list[str]:
    """kombu's ``_lookup``: '' → the routing key; a named exchange → its binding set.

    A member with a pattern routes like a topic exchange, one without like a
    direct exchange (kombu's default when the exchange type is unknown).
    """
    if not exchange:
        return [routing_key] if routing_key else []
    if exchange not in tables:
        tally.commands["SMEMBERS"] += 1
        members = client.smembers(keys.binding(exchange))
        tables[exchange] = [_split_binding(m, keys.sep) for m in members]
    queues = []
    for rkey, pattern, queue in tables[exchange]:
        try:
            hit = bool(re.match(pattern, routing_key)) if pattern else rkey == routing_key
        except re.error:
            hit = False
        if hit and queue not in queues:
            queues.append(queue)
    return sorted(queues)


# -- helpers -------------------------------------------------------------------
def _smembers(client: redis.Redis, key: bytes | str, report: BrokerReport) -> list[bytes]:
    report.tally.commands["SSCAN"] += 1  # counted once per set; redis-py pages it
    return [m if isinstance(m, bytes) else m.encode() for m in client.sscan_iter(key, count=500)]


def _split_binding(member: bytes | str, sep: str) -> tuple[str, str, str]:
    """``routing_key<sep>pattern<sep>queue`` (kombu ``_queue_bind``); tries kombu's default sep too."""
    text = _text(member)
    for s in (sep, KOMBU_SEP):
        parts = text.split(s)
        if len(parts) == 3:
            return parts[0], parts[1], parts[2]
    return "", "", ""


def _stamp(value: Any) -> float | None:
    """Celery's ``eta``/``expires``: ISO 8601 (naive = UTC) or a unix timestamp."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def _priority(value: Any) -> int:
    """kombu's ``_get_message_priority``: an int clamped to 0..9, 0 when absent or bad."""
    try:
        return max(0, min(int(value), 9))
    except (TypeError, ValueError):
        return 0


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def top_task_names(messages: Iterable[UnackedMessage], cap: int = 20) -> dict[str, int]:
    """Stuck counts by task name, the ``cap`` largest kept and the rest under ``other``."""
    counts = collections.Counter(m.task_name for m in messages if m.state == "stuck")
    kept = dict(counts.most_common(cap))
    rest = sum(counts.values()) - sum(kept.values())
    if rest:
        kept["other"] = kept.get("other", 0) + rest
    return kept
