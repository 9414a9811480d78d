"""The retention rules: what to do with one key, as a pure function.

Given what INSPECT read (type, TTL, value) and the settings, return the action
or the reason the key is skipped. No I/O, so every rule is unit-testable and a
dry run takes exactly the decisions a real run takes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from janitor import payload
from janitor.config import Settings
from janitor.keyspace import EXPECTED_TYPES, Kind
from janitor.scripts import sha1


@dataclass(frozen=True, slots=True)
class Action:
    """One write: ``op`` as in :data:`janitor.scripts.ACT`, ``ms`` the TTL to set."""

    op: str
    ms: int
    guard: str
    kind: Kind
    size: int = 0

    @property
    def deletes(self) -> bool:
        return self.op in {"d", "D"}


@dataclass(frozen=True, slots=True)
class Skip:
    """A key under a Celery name we do not understand; ``reason`` is a metric label."""

    reason: str


MICROSECOND = dt.timedelta(microseconds=1)

Decision = Action | Skip | None  # None: nothing to do (already has a fitting TTL, vanished, not ours)


def decide(
    kind: Kind, ident: bytes, rtype: str, pttl: int, value: bytes | int | None, *, now: dt.datetime, settings: Settings
) -> Decision:
    """Apply the retention rules (README "Retention rules") to one key."""
    if kind in {Kind.OTHER, Kind.CHORD_CLAIM}:
        return None
    if kind is Kind.MALFORMED:
        return Skip("bad_key_name")
    has_ttl = pttl >= 0
    if rtype == "none" or (has_ttl and not settings.cap_ttl):
        return None
    if rtype not in EXPECTED_TYPES[kind]:
        return Skip("wrong_type")
    if isinstance(value, int):
        return Skip("too_large")
    guard = f"L{len(value)}" if value is not None else ""
    if kind is Kind.TASK:
        if value is None:
            return None
        return _task(ident, value, pttl, guard, now=now, settings=settings)
    if kind is Kind.PIDBOX_REPLY:
        return None if has_ttl else Action("x", settings.reply_ttl * 1000, "", kind)
    if kind is Kind.GROUP and value is not None:
        try:
            if not payload.is_group_meta(value, max_bytes=settings.max_value_bytes):
                return Skip("not_a_group")
        except payload.PayloadError as exc:
            return Skip(exc.reason)
    if kind in {Kind.CHORD_SIZE, Kind.CHORD_TOTAL} and value is not None and not value.strip().lstrip(b"-").isdigit():
        return Skip("bad_chord_counter")
    return _ttl(pttl, settings.group_ttl * 1000, guard, kind)


def _ttl(pttl: int, ms: int, guard: str, kind: Kind, size: int = 0) -> Action | None:
    """Give a TTL to a key with none, or shorten a longer one (cap mode)."""
    if pttl == -1:
        return Action("x", ms, guard, kind, size)
    return Action("c", ms, guard, kind, size) if pttl > ms else None


def _task(ident: bytes, value: bytes, pttl: int, guard: str, *, now: dt.datetime, settings: Settings) -> Decision:
    try:
        meta = payload.result_meta(value, max_bytes=settings.max_value_bytes)
    except payload.PayloadError as exc:
        return Skip(exc.reason)
    if meta.task_id is not None and meta.task_id.encode() != ident:
        return Skip("id_mismatch")
    if not meta.ready or meta.date_done is None:
        return _ttl(pttl, settings.pending_ttl * 1000, guard, Kind.TASK, len(value))
    ttl = settings.failure_ttl if meta.status == "FAILURE" else settings.result_ttl
    # Whole microseconds, as scripts.TASKS computes them, so both decide alike to the millisecond.
    age_us = (now - meta.date_done) // MICROSECOND
    if age_us < -settings.future_tolerance * 1_000_000:
        return Skip("future_date_done")
    remaining_ms = (ttl * 1_000_000 - max(age_us, 0)) // 1000
    if remaining_ms <= 0:
        return Action("d" if pttl == -1 else "D", 0, f"S{sha1(value)}", Kind.TASK, len(value))
    return _ttl(pttl, remaining_ms, guard, Kind.TASK, len(value))
