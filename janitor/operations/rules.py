"""The retention rules: what to do with one key, as a pure function.

Given what INSPECT read (type, TTL, value) and the settings, return the action
or the reason the key is skipped. No I/O, so every rule is unit-testable and a
dry run takes exactly the decisions a real run takes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from janitor.celery_model import payload
from janitor.celery_model.keyspace import EXPECTED_TYPES, Kind
from janitor.config import Settings
from janitor.redis_io.scripts import Op, sha1


@dataclass(frozen=True, slots=True)
class Action:
    """One write: ``op`` for :func:`janitor.redis_io.scripts.act`, ``ms`` the TTL to set."""

    op: Op
    ms: int
    guard: str
    kind: Kind
    size: int = 0

    @property
    def deletes(self) -> bool:
        return self.op in {Op.DELETE, Op.DELETE_ANY}


@dataclass(frozen=True, slots=True)
class Skip:
    """A key under a Celery name we do not understand; ``reason`` is a metric label,
    ``size`` the value's length where it is counted (too large to judge, dated in the future)."""

    reason: str
    size: int = 0


MICROSECOND = dt.timedelta(microseconds=1)
# Cap mode leaves a TTL this close above the rule's alone. A TTL set from a date_done lands
# as late as the time between the janitor reading its clock and ACT running (plus
# millisecond rounding); without slack the next pass would shorten it again by those few
# milliseconds, and a dry run would count keys that ACT then finds already short enough.
CAP_SLACK_MS = 1000

Decision = Action | Skip | None  # None: nothing to do (already has a fitting TTL, vanished, not ours)


def decide(
    kind: Kind,
    ident: bytes,
    rtype: str,
    pttl: int,
    value: bytes | payload.Edges | None,
    *,
    now: dt.datetime,
    settings: Settings,
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
    if isinstance(value, payload.Edges):
        return _large(kind, ident, pttl, value, now=now, settings=settings)
    guard = f"L{len(value)}" if value is not None else ""
    if kind is Kind.TASK:
        if value is None:
            return None
        try:
            meta = payload.edge_first_meta(value, naive=settings.naive_zone) or payload.result_meta(
                value, max_bytes=settings.max_value_bytes, naive=settings.naive_zone
            )
        except payload.PayloadError as exc:
            return Skip(exc.reason)
        delete_guard = f"S{len(value)}:{sha1(value)}"
        return _task(
            ident, meta, pttl, guard=guard, delete_guard=delete_guard, size=len(value), now=now, settings=settings
        )
    if kind is Kind.PIDBOX_REPLY:
        return None if has_ttl else Action(Op.SET_TTL, settings.reply_ttl * 1000, "", kind)
    if kind is Kind.GROUP and value is not None:
        try:
            if not payload.is_group_meta(value, max_bytes=settings.max_value_bytes):
                return Skip("not_a_group")
        except payload.PayloadError as exc:
            return Skip(exc.reason)
    if kind in {Kind.CHORD_SIZE, Kind.CHORD_TOTAL} and value is not None and not value.strip().lstrip(b"-").isdigit():
        return Skip("bad_chord_counter")
    return _ttl(pttl, settings.group_ttl * 1000, guard, kind)


def _large(
    kind: Kind, ident: bytes, pttl: int, edges: payload.Edges, *, now: dt.datetime, settings: Settings
) -> Decision:
    """A value too large to read whole, judged from its length, head and tail (payload.edge_result_meta).

    The delete guard is the length plus a digest of the bytes read: a rewrite that keeps both
    keeps the status, date_done and task_id the decision was taken on."""
    if kind is not Kind.TASK:
        return Skip("too_large", edges.size)
    try:
        meta = payload.edge_result_meta(edges, naive=settings.naive_zone)
    except payload.PayloadError:
        return Skip("too_large", edges.size)
    digest = f"E{edges.size}:{len(edges.head)}:{len(edges.tail)}:{sha1(edges.head + edges.tail)}"
    return _task(
        ident, meta, pttl, guard=f"L{edges.size}", delete_guard=digest, size=edges.size, now=now, settings=settings
    )


def _ttl(pttl: int, ms: int, guard: str, kind: Kind, size: int = 0) -> Action | None:
    """Give a TTL to a key with none, or shorten a longer one (cap mode, past CAP_SLACK_MS)."""
    if pttl == -1:
        return Action(Op.SET_TTL, ms, guard, kind, size)
    return Action(Op.CAP_TTL, ms, guard, kind, size) if pttl > ms + CAP_SLACK_MS else None


def _task(
    ident: bytes,
    meta: payload.ResultMeta,
    pttl: int,
    *,
    guard: str,
    delete_guard: str,
    size: int,
    now: dt.datetime,
    settings: Settings,
) -> Decision:
    if meta.task_id is not None and meta.task_id.encode() != ident:
        return Skip("id_mismatch")
    if not meta.ready or meta.date_done is None:
        return _ttl(pttl, settings.pending_ttl * 1000, guard, Kind.TASK, size)
    ttl = settings.failure_ttl if meta.status == "FAILURE" else settings.result_ttl
    # Whole microseconds, as DECIDE (redis_io/lua/decide.lua) computes them: both decide alike to the millisecond.
    age_us = (now - meta.date_done) // MICROSECOND
    if age_us < -settings.future_tolerance * 1_000_000:
        return Skip("future_date_done", size)
    remaining_ms = (ttl * 1_000_000 - max(age_us, 0)) // 1000
    if remaining_ms <= 0:
        return Action(Op.DELETE if pttl == -1 else Op.DELETE_ANY, 0, delete_guard, Kind.TASK, size)
    return _ttl(pttl, remaining_ms, guard, Kind.TASK, size)
