"""Every key name Celery and kombu use in Redis, and how to tell them apart.

Pure functions, no I/O: the one place that knows Celery's key layout
(the keyspace reference lists them with their sources).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

TASK_PREFIX = b"celery-task-meta-"
GROUP_PREFIX = b"celery-taskset-meta-"
PIDBOX_REPLY_SUFFIX = b".reply.celery.pidbox"
KOMBU_PREFIX = b"_kombu."  # kombu's own keys (bindings), never a reply list
# kombu's Redis transport defaults: the separator in binding members and priority list
# names (`celery\x06\x163`), and the priority steps that get a list of their own.
KOMBU_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)

# One SCAN pattern covers results, groups, chord keys and pidbox reply lists,
# so the whole keyspace is walked once per pass instead of once per family.
SCAN_MATCH = "*celery*"


class Kind(enum.StrEnum):
    """What a key is, as far as its name tells."""

    TASK = "task"
    GROUP = "group"
    CHORD_JOIN = "chord_join"  # .j  zset (list when result_chord_ordered=False)
    CHORD_SIZE = "chord_size"  # .s  string int
    CHORD_TOTAL = "chord_total"  # .t  string int (INCR)
    CHORD_DEDUP = "chord_dedup"  # .d  set (celery 5.7)
    CHORD_CLAIM = "chord_claim"  # .c  claim token: never touched
    PIDBOX_REPLY = "pidbox_reply"
    MALFORMED = "malformed"  # a Celery prefix with a name no Celery client writes
    OTHER = "other"


_CHORD_KINDS = {
    b".j": Kind.CHORD_JOIN,
    b".s": Kind.CHORD_SIZE,
    b".t": Kind.CHORD_TOTAL,
    b".d": Kind.CHORD_DEDUP,
    b".c": Kind.CHORD_CLAIM,
}

# Redis types each kind may legitimately have; anything else is skipped.
EXPECTED_TYPES: dict[Kind, frozenset[str]] = {
    Kind.TASK: frozenset({"string"}),
    Kind.GROUP: frozenset({"string"}),
    Kind.CHORD_JOIN: frozenset({"zset", "list"}),
    Kind.CHORD_SIZE: frozenset({"string"}),
    Kind.CHORD_TOTAL: frozenset({"string"}),
    Kind.CHORD_DEDUP: frozenset({"set"}),
    Kind.PIDBOX_REPLY: frozenset({"list"}),
}


def result_prefix(global_keyprefix: str) -> bytes:
    """The prefix Celery's result backend puts before its key names.

    Celery appends ``_`` unless the prefix already ends in one of ``:_-.``
    (``BaseKeyValueStoreBackend._add_global_keyprefix``).
    """
    if not global_keyprefix:
        return b""
    if global_keyprefix[-1] not in ":_-.":
        global_keyprefix += "_"
    return global_keyprefix.encode()


@dataclass(frozen=True, slots=True)
class Layout:
    """Key names for one Celery app's prefixes."""

    result_prefix: bytes = b""
    broker_prefix: bytes = b""

    @classmethod
    def for_prefixes(cls, key_prefix: str = "", broker_key_prefix: str = "") -> Layout:
        return cls(result_prefix(key_prefix), broker_key_prefix.encode())

    @property
    def task_prefix(self) -> bytes:
        return self.result_prefix + TASK_PREFIX

    @property
    def group_prefix(self) -> bytes:
        return self.result_prefix + GROUP_PREFIX

    def classify(self, key: bytes) -> tuple[Kind, bytes]:
        """Return the key's kind and the task/group id it names (empty when none)."""
        if key.startswith(self.task_prefix):
            ident = key[len(self.task_prefix) :]
            return (Kind.TASK, ident) if _plausible_id(ident) else (Kind.MALFORMED, b"")
        if key.startswith(self.group_prefix):
            ident = key[len(self.group_prefix) :]
            kind = _CHORD_KINDS.get(ident[-2:]) if len(ident) >= 2 else None
            if kind is not None:
                ident = ident[:-2]
            if not _plausible_id(ident):
                return Kind.MALFORMED, b""
            return kind or Kind.GROUP, ident
        if (
            key.endswith(PIDBOX_REPLY_SUFFIX)
            and key.startswith(self.broker_prefix)
            and _plausible_id(oid := key[len(self.broker_prefix) : -len(PIDBOX_REPLY_SUFFIX)])
            and not oid.startswith(KOMBU_PREFIX)  # _kombu.binding.reply.celery.pidbox: the exchange's binding set
        ):
            return Kind.PIDBOX_REPLY, b""
        return Kind.OTHER, b""


# Control and glob characters; a regex, because this runs for every key scanned.
_NOT_IN_IDS = re.compile(rb"[\x00-\x1f\x7f*?\[\]]")


def glob_escape(prefix: bytes) -> str:
    """A SCAN MATCH pattern matching ``prefix`` literally (a key prefix may hold ``*?[]\\``)."""
    return bytes(b for c in prefix for b in ((92, c) if c in b"*?[]\\" else (c,))).decode(errors="replace")


def _plausible_id(ident: bytes) -> bool:
    """Celery ids are uuids by default but may be any string the caller chose.

    We only refuse what no Celery client would produce as an id in practice:
    empty ids, control characters, glob characters, non-UTF-8, oversized
    names and ids that themselves start with a Celery prefix.
    """
    if not ident or len(ident) > 255 or ident.startswith((TASK_PREFIX, GROUP_PREFIX)):
        return False  # a doubled prefix is a key-building bug, not a Celery id
    if _NOT_IN_IDS.search(ident):
        return False
    try:
        ident.decode()
    except UnicodeDecodeError:
        return False
    return True
