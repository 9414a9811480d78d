"""Keyspace notifications for string writes: are they on, and turning them on.

Watch mode needs Redis to publish a ``set`` keyevent for every string write:
``notify-keyspace-events`` must hold ``E`` (keyevent channels) and ``$`` (string
commands) or ``A`` (every class, ``$`` included). The flag helpers are pure; the
two calls (``CONFIG GET`` and ``CONFIG SET``) turn a server that refuses them
(an ACL without ``+config``, a managed server) into a :class:`Flags` that says so
instead of raising.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import redis

from janitor import errors
from janitor.redis_io.scripts import Tally

PARAMETER = "notify-keyspace-events"
# What to run where CONFIG is not the janitor's to send, by platform.
HOW_TO_TURN_ON = (
    "turn keyspace notifications on: `CONFIG SET notify-keyspace-events E$` (and `notify-keyspace-events E$` in "
    "redis.conf), or JANITOR_WATCH=on to let the janitor do it; Upstash allows that CONFIG SET; Heroku: "
    "`heroku redis:keyspace-notifications -c E$ -a <app>`; AWS ElastiCache: set notify-keyspace-events "
    "to E$ in the parameter group"
)


def covers_string_sets(flags: str) -> bool:
    """Do these flags publish a keyevent for SET: ``E`` and (``$`` or ``A``)?"""
    return "E" in flags and ("$" in flags or "A" in flags)


def with_string_sets(flags: str) -> str:
    """``flags`` plus what :func:`covers_string_sets` needs; nothing already there is removed."""
    out = flags
    if "E" not in out:
        out += "E"
    if "$" not in out and "A" not in out:
        out += "$"
    return out


def keyevent_channel(db: int) -> str:
    """The channel Redis publishes the name of every key SET in ``db`` on."""
    return f"__keyevent@{db}__:set"


class Read(enum.Enum):
    ON = "on"  # string writes are published
    OFF = "off"  # readable, but they are not
    REFUSED = "refused"  # CONFIG GET refused: no ACL permission, or a managed server


@dataclass(frozen=True)
class Flags:
    """What the server said about ``notify-keyspace-events``."""

    state: Read
    flags: str = ""  # as the server reported them ("" when refused)
    refusal: str = ""  # the server's own words when it refused

    @property
    def on(self) -> bool:
        return self.state is Read.ON


def read(client: redis.Redis, tally: Tally) -> Flags:
    """``CONFIG GET notify-keyspace-events``; a refusal is an answer, a connection error raises."""
    tally.commands["CONFIG GET"] += 1
    try:
        reply = client.config_get(PARAMETER)
    except redis.ResponseError as exc:  # NOPERM, unknown command, ERR from a managed server
        return Flags(Read.REFUSED, refusal=errors.classify(exc).message)
    values: dict[Any, Any] = dict(reply) if isinstance(reply, dict) else {}
    value = values.get(PARAMETER, values.get(PARAMETER.encode(), ""))
    flags = value.decode() if isinstance(value, bytes) else str(value)
    return Flags(Read.ON if covers_string_sets(flags) else Read.OFF, flags)


def turn_on(client: redis.Redis, tally: Tally, current: Flags) -> Flags:
    """Add what string-write keyevents need to ``current`` with ``CONFIG SET`` (never removing a flag),
    then read back what the server holds. A refusal is an answer; a connection error raises."""
    if current.on:
        return current
    tally.commands["CONFIG SET"] += 1
    try:
        client.config_set(PARAMETER, with_string_sets(current.flags))
    except redis.ResponseError as exc:
        return Flags(Read.REFUSED, current.flags, errors.classify(exc).message)
    return read(client, tally)
