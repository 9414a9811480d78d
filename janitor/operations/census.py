"""Read-only counts of what a Redis holds, by Celery category, TTL, age and size.

One SCAN over the whole keyspace with the INSPECT script (run as EVALSHA_RO
where the server has it, so Redis itself refuses any write); nothing is
written. Per SCAN page: one INSPECT call and, for the first ``sample`` keys of
each category, one pipelined round of MEMORY USAGE. Byte totals are estimates:
the sampled mean times the count.
"""

from __future__ import annotations

import collections
import datetime as dt
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from janitor.celery_model import payload
from janitor.celery_model.keyspace import KOMBU_SEP, Kind, Layout
from janitor.config import Settings
from janitor.redis_io import scripts

# Upper bounds (seconds) of the age and TTL buckets, in display order.
AGE_BUCKETS: tuple[tuple[str, float], ...] = (
    ("<1h", 3600),
    ("1-24h", 86400),
    ("1-7d", 7 * 86400),
    ("7-30d", 30 * 86400),
    (">30d", float("inf")),
)
TTL_BUCKETS: tuple[tuple[str, float], ...] = (
    ("<1h", 3600),
    ("1-24h", 86400),
    ("1-7d", 7 * 86400),
    (">7d", float("inf")),
)
NO_TTL = "none"
DEFAULT_SAMPLE = 50
# Lists that might be queues are held until the bindings have been read; past
# this many (an rpc:// reply flood, say) the rest are counted as "other".
_MAX_PENDING_LISTS = 50_000
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CHORD_KINDS = {Kind.CHORD_JOIN, Kind.CHORD_SIZE, Kind.CHORD_TOTAL, Kind.CHORD_DEDUP, Kind.CHORD_CLAIM}

# Categories beyond the result backend's, named for people and for the JSON schema.
QUEUE, UNACKED, BINDING, BEAT, RPC_REPLY, OTHER = "queue", "unacked", "binding", "beat", "rpc_reply", "other"
# Keys the result sweep never gives a TTL: broker state, schedulers, and what is not Celery's.
NOT_RESULTS = frozenset({QUEUE, UNACKED, BINDING, BEAT, RPC_REPLY, OTHER})


def bucket(seconds: float, buckets: tuple[tuple[str, float], ...]) -> str:
    """The label of the first bucket whose bound exceeds ``seconds`` (negatives go first)."""
    return next(label for label, bound in buckets if seconds < bound)


@dataclass
class Census:
    """Key counts by category (kind, or ``task:<status>``) and TTL, with sampled sizes and result ages."""

    total: int = 0
    with_ttl: collections.Counter[str] = field(default_factory=collections.Counter)
    without_ttl: collections.Counter[str] = field(default_factory=collections.Counter)
    sampled: collections.Counter[str] = field(default_factory=collections.Counter)
    sampled_bytes: collections.Counter[str] = field(default_factory=collections.Counter)
    result_age: collections.Counter[str] = field(default_factory=collections.Counter)  # finished results
    result_ttl: collections.Counter[str] = field(default_factory=collections.Counter)  # all task results
    oldest_result_age_s: float | None = None
    # Result keys without a TTL the sweep skips, so they stay forever, with their value bytes:
    # too large to judge from their edges (not JSON as Celery writes it) ...
    unjudged: int = 0
    unjudged_bytes: int = 0
    # ... and finished later than JANITOR_FUTURE_TOLERANCE from now.
    future: int = 0
    future_bytes: int = 0
    future_max_s: float | None = None  # how far the furthest one lies ahead
    # Naive date_done values (read in JANITOR_NAIVE_TIMEZONE) ahead of now, with or without a TTL:
    # an app writing naive local time east of that zone (see findings.naive_local_time).
    naive_ahead: int = 0
    naive_ahead_max_s: float | None = None
    naive_zone: str = "UTC"  # JANITOR_NAIVE_TIMEZONE, that the above is relative to
    memory_usage: bool = True  # False when the server refused MEMORY USAGE (sizes unknown)
    completed: bool = True
    duration_s: float = 0.0
    tally: scripts.Tally = field(default_factory=scripts.Tally)

    def count(self, category: str) -> int:
        return self.with_ttl[category] + self.without_ttl[category]

    def categories(self) -> list[str]:
        return sorted(set(self.with_ttl) | set(self.without_ttl), key=lambda c: (-self.count(c), c))

    def est_bytes(self, category: str) -> int | None:
        """Sampled mean MEMORY USAGE times the count; None when nothing was sampled."""
        n = self.sampled[category]
        return round(self.sampled_bytes[category] / n * self.count(category)) if n else None

    def tasks(self, *, ttl: bool | None = None) -> int:
        """Task result keys (all, or only those with / without a TTL)."""
        sources = [self.with_ttl, self.without_ttl] if ttl is None else [self.with_ttl if ttl else self.without_ttl]
        return sum(n for counter in sources for cat, n in counter.items() if cat.startswith("task:"))

    def rows(self) -> list[tuple[str, int, int]]:
        """``(category, with TTL, without TTL)``, largest first."""
        return [(c, self.with_ttl[c], self.without_ttl[c]) for c in self.categories()]

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "categories": {
                c: {
                    "keys": self.count(c),
                    "with_ttl": self.with_ttl[c],
                    "without_ttl": self.without_ttl[c],
                    "sampled": self.sampled[c],
                    "est_bytes": self.est_bytes(c),
                }
                for c in self.categories()
            },
            "result_age": {label: self.result_age[label] for label, _ in AGE_BUCKETS},
            "result_ttl": {label: self.result_ttl[label] for label in [NO_TTL, *(b for b, _ in TTL_BUCKETS)]},
            "oldest_result_age_s": None if self.oldest_result_age_s is None else round(self.oldest_result_age_s),
            "unjudged_results": {"keys": self.unjudged, "bytes": self.unjudged_bytes},
            "future_results": {
                "keys": self.future,
                "bytes": self.future_bytes,
                "max_ahead_s": _round(self.future_max_s),
            },
            "naive_ahead": {
                "keys": self.naive_ahead,
                "max_ahead_s": _round(self.naive_ahead_max_s),
                "naive_timezone": self.naive_zone,
            },
            "memory_usage_sampled": self.memory_usage,
            "duration_s": round(self.duration_s, 3),
            "commands": dict(self.tally.commands),
        }


def take(
    client: redis.Redis,
    settings: Settings,
    *,
    sample: int = 0,
    now: dt.datetime | None = None,
    on_page: Callable[[int], None] = lambda _n: None,
    tally: scripts.Tally | None = None,
    match: str = "*",
    should_stop: Callable[[], bool] = lambda: False,
) -> Census:
    """Walk the keyspace once and count every key; ``sample`` > 0 also estimates bytes per category.

    ``match`` narrows the walk (the daemon's gauges only need result keys);
    ``completed`` is False when ``should_stop()`` ended it part-way.
    """
    started = time.monotonic()
    seen = Census(tally=tally or scripts.Tally(), naive_zone=settings.naive_timezone)
    walk = _Walk(client, settings, seen, sample, now or dt.datetime.now(dt.UTC))
    cursor = 0
    while True:
        cursor, keys = walk.census.tally.scan(client, cursor, match, settings.scan_count)
        walk.page(keys)
        on_page(walk.census.total)
        if cursor == 0:
            break
        if should_stop():
            walk.census.completed = False
            break
    walk.resolve_lists()
    walk.census.duration_s = time.monotonic() - started
    return walk.census


@dataclass
class _Walk:
    """One census pass: what the names and INSPECT rows say, plus the lists still to place."""

    client: redis.Redis
    settings: Settings
    census: Census
    sample: int
    now: dt.datetime
    layout: Layout = field(init=False)
    pending: dict[bytes, bool] = field(default_factory=dict)  # list name -> has a TTL
    bindings: list[bytes] = field(default_factory=list)
    bp: bytes = field(init=False)
    unacked_keys: set[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.layout = Layout.for_prefixes(self.settings.key_prefix, self.settings.broker_key_prefix)
        bp = self.bp = self.settings.broker_key_prefix.encode()
        self.unacked_keys = {
            bp + k.encode()
            for k in (self.settings.unacked_key, self.settings.unacked_index_key, self.settings.unacked_mutex_key)
        }

    def page(self, keys: list[bytes]) -> None:
        to_sample = _Sample(self.census, self.sample)
        s = self.settings
        while keys:
            rows = scripts.inspect(
                self.census.tally,
                self.client,
                keys=keys,
                max_value=s.max_value_bytes,
                budget=s.batch_bytes,
                read_ttl=True,
                edge=payload.EDGE_BYTES,
            )
            for row in rows:
                cat = self.categorise(row.key, row.type, row.pttl, row.value)
                if cat is None:
                    continue  # a list held back until the bindings are known, or a key gone meanwhile
                self.count(cat, row.pttl >= 0)
                to_sample.offer(row.key, cat)
            keys = keys[len(rows) :]
        self.measure(to_sample.keys)

    def count(self, cat: str, has_ttl: bool) -> None:
        self.census.total += 1
        (self.census.with_ttl if has_ttl else self.census.without_ttl)[cat] += 1

    def categorise(self, key: bytes, rtype: str, pttl: int, value: bytes | payload.Edges | None) -> str | None:
        if rtype == "none":
            return None  # expired or deleted between SCAN and INSPECT
        kind, _ = self.layout.classify(key)
        if kind is Kind.TASK:
            return self.task(value, pttl)
        if kind in _CHORD_KINDS:
            return "chord"
        if kind is not Kind.OTHER:
            return str(kind)
        return self.broker_or_other(key, rtype, pttl)

    def task(self, value: bytes | payload.Edges | None, pttl: int) -> str:
        c = self.census
        c.result_ttl[NO_TTL if pttl < 0 else bucket(pttl / 1000, TTL_BUCKETS)] += 1
        naive = self.settings.naive_zone
        try:
            if isinstance(value, payload.Edges):  # too large to read whole: judged from its edges, as the sweep does
                size = value.size
                try:
                    meta = payload.edge_result_meta(value, naive=naive)
                except payload.PayloadError:
                    if pttl < 0:
                        c.unjudged, c.unjudged_bytes = c.unjudged + 1, c.unjudged_bytes + size
                    raise
            elif isinstance(value, bytes):
                size = len(value)
                meta = payload.result_meta(value, max_bytes=self.settings.max_value_bytes, naive=naive)
            else:
                return "task:unreadable"
        except payload.PayloadError:
            return "task:unreadable"
        if meta.date_done is not None:
            ahead = (meta.date_done - self.now).total_seconds()
            if meta.naive and ahead > 0:
                c.naive_ahead += 1
                c.naive_ahead_max_s = max(ahead, c.naive_ahead_max_s or 0.0)
            if pttl < 0 and ahead > self.settings.future_tolerance:
                c.future, c.future_bytes = c.future + 1, c.future_bytes + size
                c.future_max_s = max(ahead, c.future_max_s or 0.0)
            age = max(0.0, -ahead)
            c.result_age[bucket(age, AGE_BUCKETS)] += 1
            oldest = c.oldest_result_age_s
            c.oldest_result_age_s = age if oldest is None else max(oldest, age)
        return f"task:{meta.status}"

    def broker_or_other(self, key: bytes, rtype: str, pttl: int) -> str | None:
        if key.startswith(self.bp + b"_kombu.binding"):
            if rtype == "set" and key.startswith(self.bp + b"_kombu.binding."):
                self.bindings.append(key)
            return BINDING
        if key in self.unacked_keys:
            return UNACKED
        lowered = key.lower()
        if lowered.startswith((b"redbeat:", b"celery-beat", b"celerybeat")) or b"celerybeat" in lowered:
            return BEAT
        if rtype == "list":
            if _UUID.fullmatch(key):
                return RPC_REPLY  # rpc:// backend replies to a client that never read them (celery#7801)
            if len(self.pending) < _MAX_PENDING_LISTS:
                self.pending[key] = pttl >= 0
                return None
        return OTHER

    def resolve_lists(self) -> None:
        """Lists named by a binding (or JANITOR_QUEUES, or Celery's default) are queues; the rest are other."""
        queues = {q.encode() for q in self.settings.queue_list} | {b"celery"}
        if self.bindings:
            pipe = self.client.pipeline(transaction=False)
            for key in self.bindings:
                pipe.smembers(key)
            self.census.tally.commands["SMEMBERS"] += len(self.bindings)
            sep = self.settings.broker_sep.encode()
            for members in pipe.execute(raise_on_error=False):
                if isinstance(members, set):
                    queues |= {m.split(sep)[-1] for m in members if isinstance(m, bytes)}
        to_sample = _Sample(self.census, self.sample)
        for key, has_ttl in self.pending.items():
            cat = QUEUE if _queue_name(key[len(self.bp) :], self.settings.broker_sep.encode()) in queues else OTHER
            if not key.startswith(self.bp):
                cat = OTHER
            self.count(cat, has_ttl)
            to_sample.offer(key, cat)
        self.pending.clear()
        self.measure(to_sample.keys)

    def measure(self, keys: list[tuple[bytes, str]]) -> None:
        """MEMORY USAGE for the sampled keys, one pipeline; a server that refuses it turns sampling off."""
        if not keys or not self.census.memory_usage:
            return
        pipe = self.client.pipeline(transaction=False)
        for key, _ in keys:
            pipe.memory_usage(key)
        self.census.tally.commands["MEMORY USAGE"] += len(keys)
        for (_, cat), size in zip(keys, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(size, Exception):
                self.census.memory_usage = False  # unknown command, or an ACL without it: sizes unknown
                return
            if isinstance(size, int):
                self.census.sampled[cat] += 1
                self.census.sampled_bytes[cat] += size


@dataclass
class _Sample:
    """The keys of one page to measure: the first ``limit`` of each category over the whole walk."""

    census: Census
    limit: int
    keys: list[tuple[bytes, str]] = field(default_factory=list)
    taken: collections.Counter[str] = field(default_factory=collections.Counter)

    def offer(self, key: bytes, cat: str) -> None:
        if self.census.memory_usage and self.census.sampled[cat] + self.taken[cat] < self.limit:
            self.keys.append((key, cat))
            self.taken[cat] += 1


def _queue_name(name: bytes, sep: bytes) -> bytes:
    """``celery\\x06\\x163`` → ``celery``: a priority sub-list belongs to its queue."""
    for s in {sep, KOMBU_SEP.encode()}:
        base, found, step = name.rpartition(s)
        if found and step.isdigit():
            return base
    return name


def _round(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds)
