"""Read-only counts of what a Redis holds, by Celery category and TTL.

One SCAN over the whole keyspace with the INSPECT script; nothing is written.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import redis

from janitor import payload, scripts
from janitor.config import Settings
from janitor.keyspace import Kind, Layout


@dataclass
class Census:
    """Key counts by category (kind, or task status) and whether they expire."""

    total: int = 0
    with_ttl: collections.Counter[str] = field(default_factory=collections.Counter)
    without_ttl: collections.Counter[str] = field(default_factory=collections.Counter)
    tally: scripts.Tally = field(default_factory=scripts.Tally)

    def rows(self) -> list[tuple[str, int, int]]:
        """``(category, with TTL, without TTL)``, largest first."""
        cats = set(self.with_ttl) | set(self.without_ttl)
        return sorted(((c, self.with_ttl[c], self.without_ttl[c]) for c in cats), key=lambda r: (-r[1] - r[2], r[0]))


def take(client: redis.Redis, settings: Settings) -> Census:
    """Walk the keyspace once and count every key."""
    layout = Layout.for_prefixes(settings.key_prefix, settings.broker_key_prefix)
    census = Census()
    cursor = 0
    while True:
        cursor, keys = census.tally.scan(client, cursor, "*", settings.scan_count)
        while keys:
            rows = census.tally.run(client, scripts.INSPECT, keys, [settings.max_value_bytes, settings.batch_bytes, 1])
            for key, (_rtype, pttl, value) in zip(keys, rows, strict=False):
                census.total += 1
                bucket = census.with_ttl if int(pttl) >= 0 else census.without_ttl
                bucket[_category(layout, key, value, settings.max_value_bytes)] += 1
            keys = keys[len(rows) :]
        if cursor == 0:
            return census


def _category(layout: Layout, key: bytes, value: bytes | int | None, max_bytes: int) -> str:
    kind, _ = layout.classify(key)
    if kind is not Kind.TASK:
        return str(kind)
    if not isinstance(value, bytes):
        return "task:unreadable"
    try:
        return f"task:{payload.result_meta(value, max_bytes=max_bytes).status}"
    except payload.PayloadError:
        return "task:unreadable"
