"""Sniff and decode a stored Celery result without trusting it.

Celery stores no content type with a result, so the format is read from the
first bytes. Every decoder here is bounded and
inert: pickles are read with :mod:`janitor.celery_model.picklescan`, YAML with the safe
loader, compressed bodies are inflated only up to ``max_bytes``.
"""

from __future__ import annotations

import bz2
import datetime as dt
import json
import lzma
import re
import zlib
from dataclasses import dataclass
from typing import Any

import msgpack
import yaml

from janitor.celery_model import picklescan

COMPRESSED_MAGIC = b"\x00celery-compressed\x00"
READY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
_STATUS_RE = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,63}")
# libyaml's C composer recurses on the C stack and segfaults on deeply nested
# input, and the pure-Python loader spends seconds on it before RecursionError.
# kombu's yaml.safe_dump writes block style with a top-level "status:" (task
# meta) or "result:" (saved group) line, so only such text is parsed, and only when it cannot nest deeply (few flow
# brackets, no deep indentation or "- - -" runs); anything else is skipped.
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_TOP = re.compile(rb"^(?:status|result):", re.MULTILINE)
_DEEP_YAML = re.compile(rb"^[ \t-]{200,}", re.MULTILINE)


# Head and tail read of a value too large to read whole (bytes each; see edge_result_meta).
EDGE_BYTES = 4096
# A JSON task meta at least this long is judged from its head and its last EDGE_FIRST_BYTES
# before it is parsed whole (edge_first_meta): DECIDE then never reads a traceback.
EDGE_FIRST_BYTES = 1024


class PayloadError(ValueError):
    """A value we will not act on; ``reason`` is a metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ResultMeta:
    """The fields of a task meta the retention rules need."""

    status: str
    date_done: dt.datetime | None
    task_id: str | None
    serializer: str
    naive: bool = False  # date_done had no UTC offset (read in the naive zone)

    @property
    def ready(self) -> bool:
        return self.status in READY_STATES


@dataclass(frozen=True, slots=True)
class Edges:
    """A string too large to read whole: its length, and its first and last bytes (``GETRANGE``)."""

    size: int
    head: bytes
    tail: bytes

    @classmethod
    def of(cls, reply: Any) -> Edges:
        """From a script's ``{size, head, tail}`` row."""
        size, head, tail = reply
        return cls(int(size), bytes(head), bytes(tail))


def decode(raw: bytes, *, max_bytes: int) -> tuple[Any, str]:
    """Return ``(value, serializer)`` for a stored result body."""
    if raw.startswith(COMPRESSED_MAGIC):
        content_type, sep, body = raw[len(COMPRESSED_MAGIC) :].partition(b"\x00")
        if not sep:
            raise PayloadError("bad_compression")
        value, serializer = decode(_inflate(content_type, body, max_bytes), max_bytes=max_bytes)
        return value, f"{serializer}+{content_type.decode('ascii', 'replace')}"
    if len(raw) > 1 and raw[0] == 0x80 and 2 <= raw[1] <= 5:
        try:
            return picklescan.read(raw), "pickle"
        except picklescan.PickleUnreadable:
            raise PayloadError("bad_pickle") from None
    if raw[:1] in {b"{", b" ", b"\n", b"\t"} and raw.lstrip()[:1] == b"{":
        try:
            return json.loads(raw), "json"
        except (ValueError, RecursionError):
            raise PayloadError("bad_json") from None
    if raw and (0x80 <= raw[0] <= 0x8F or raw[0] in {0xDE, 0xDF}):
        try:
            return msgpack.unpackb(raw, raw=False, strict_map_key=False, timestamp=3), "msgpack"
        except (ValueError, TypeError, msgpack.UnpackException, RecursionError):
            raise PayloadError("bad_msgpack") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("unknown_format") from None
    if not _YAML_TOP.search(raw):
        raise PayloadError("unknown_format")
    if raw.count(b"[") + raw.count(b"{") > 500 or _DEEP_YAML.search(raw):
        raise PayloadError("too_complex")
    try:
        return yaml.load(text, Loader=_YAML_LOADER), "yaml"  # noqa: S506 - a safe loader, see _YAML_LOADER
    except (yaml.YAMLError, ValueError, RecursionError):
        raise PayloadError("unknown_format") from None


# kombu.compression's content types (its "gzip" is zlib framing).
_DECOMPRESSORS: dict[bytes, Any] = {
    b"application/x-gzip": zlib.decompressobj,
    b"application/x-bz2": bz2.BZ2Decompressor,
    b"application/x-lzma": lzma.LZMADecompressor,
}


def _inflate(content_type: bytes, body: bytes, max_bytes: int) -> bytes:
    """Decompress at most ``max_bytes``; a bomb is refused, not inflated."""
    factory = _DECOMPRESSORS.get(content_type)
    if factory is None:
        raise PayloadError("unsupported_compression")
    try:
        out = factory().decompress(body, max_bytes + 1)
    except (zlib.error, OSError, lzma.LZMAError, EOFError):
        raise PayloadError("bad_compression") from None
    if len(out) > max_bytes:
        raise PayloadError("too_large")
    return bytes(out)


def parse_date(value: Any, naive: dt.tzinfo = dt.UTC) -> dt.datetime:
    """Celery's ``date_done`` in any historical format, as an aware UTC datetime.

    Naive values are wall-clock times in ``naive`` (JANITOR_NAIVE_TIMEZONE): UTC for
    stock celery <= 5.3 (``utcnow().isoformat()``), local time where an app replaced
    ``app.now``. 5.4 writes ``+00:00`` and 5.5+ the app timezone's offset.
    """
    return _parse_date(value, naive)[0]


def _parse_date(value: Any, naive: dt.tzinfo) -> tuple[dt.datetime, bool]:
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, str) and 10 <= len(value) <= 40:
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise PayloadError("bad_date_done") from None
    else:
        raise PayloadError("bad_date_done")
    is_naive = parsed.tzinfo is None
    if is_naive:
        # zoneinfo applies the offset in force at that wall-clock time (DST included); an
        # ambiguous hour at a DST change is read as its first occurrence (fold=0).
        parsed = parsed.replace(tzinfo=naive)
    try:
        return parsed.astimezone(dt.UTC), is_naive
    except (OverflowError, ValueError):
        raise PayloadError("bad_date_done") from None


def result_meta(raw: bytes, *, max_bytes: int, naive: dt.tzinfo = dt.UTC) -> ResultMeta:
    """Decode a ``celery-task-meta-*`` value into the fields the rules need."""
    value, serializer = decode(raw, max_bytes=max_bytes)
    if not isinstance(value, dict) or "status" not in value or "result" not in value:
        raise PayloadError("not_a_result")
    status = value["status"]
    if not isinstance(status, str) or not _STATUS_RE.fullmatch(status):
        raise PayloadError("bad_status")
    task_id = value.get("task_id")
    if task_id is not None and not isinstance(task_id, str):
        raise PayloadError("not_a_result")
    return _meta(status, value.get("date_done"), task_id, serializer, naive)


def _meta(status: str, date_done: Any, task_id: str | None, serializer: str, naive: dt.tzinfo) -> ResultMeta:
    if status not in READY_STATES:
        return ResultMeta(status, None, task_id, serializer)
    when, is_naive = _parse_date(date_done, naive)
    return ResultMeta(status, when, task_id, serializer, is_naive)


# The first bytes of every JSON task meta Celery 5.3-5.7 writes: `_get_result_meta` builds
# the dict in the order status, result, traceback, children, date_done, [group_id],
# [parent_id], [name, args, kwargs, worker, retries, queue, [stamped_headers, stamps]]
# (result_extended), and `_store_result` adds task_id last; kombu's json.dumps keeps that
# order with its default separators. The status allows no escape (see _STATUS_RE).
_JSON_HEAD = re.compile(rb'\{"status": "([A-Za-z][A-Za-z0-9_\-]{0,63})", "result": ')
_SUFFIX_START = b' "date_done": '
_QUOTE, _BACKSLASH, _COMMA = 0x22, 0x5C, 0x2C


def edge_result_meta(edges: Edges, *, naive: dt.tzinfo = dt.UTC) -> ResultMeta:
    """Judge a JSON task meta too large to read whole from its first and last bytes.

    The head must be ``{"status": "<STATE>", "result": `` and the tail the meta's last
    members, ``, "date_done": ..., "task_id": "..."}``. Anything else (pickle, msgpack,
    YAML, compressed, another key order, date_done further from the end than the tail
    reaches) raises ``too_large``: counted, never acted on.

    Why the tail cannot be misread, even when the task's result (or, with result_extended,
    its args, kwargs or stamps) is text an attacker chose, e.g. a result string holding
    ``", "date_done": "2020-01-01T00:00:00", "task_id": "<id>"}``: Celery's encoder writes
    valid JSON, where every ``"`` inside a string is escaped and a backslash occurs only
    inside a string, as the first byte of an escape (that fake is stored as
    ``\\", \\"date_done\\": ...``). Two independent checks follow from that:

    1. A ``"`` is a string delimiter exactly when the run of backslashes before it has even
       length, a property of the bytes just before it. The value ends outside any string
       (after its closing ``}``), so walking the tail backwards and toggling "in a string"
       at every delimiter gives each byte the state a parse of the whole value gives it, as
       long as each backslash run is seen whole: a run reaching the start of the tail could
       be longer, so the walk stops there (too_large). Only a ``,`` outside strings at depth
       1 (a member of the outermost object, not of a nested result, kwargs or stamp) that
       is followed by `` "date_done": `` is a candidate.
    2. What follows that comma must parse, with the ordinary JSON parser, as one object
       that consumes the tail to its last byte, starts with date_done and ends with task_id:
       from a comma inside a nested value, that value's closing bracket would end the object
       before the tail does.

    Either check alone rules out a wrong member (tests/unit/test_large_results.py holds both to
    the whole value's decision). With the head, the outermost object's first member read
    forwards from byte 0, these are the members a parse of the whole value returns: Celery
    writes each member once, and a member the tail repeats is read as a whole parse reads it,
    the last one winning.
    """
    head = _JSON_HEAD.match(edges.head)
    if head is None or not edges.tail.endswith(b"}"):
        raise PayloadError("too_large")
    members = _tail_members(edges.tail)
    task_id = members.get("task_id")
    if not isinstance(task_id, str):
        raise PayloadError("too_large")
    return _meta(head.group(1).decode("ascii"), members["date_done"], task_id, "json", naive)


def edge_first_meta(raw: bytes, *, naive: dt.tzinfo = dt.UTC) -> ResultMeta | None:
    """The meta of a value of at least EDGE_FIRST_BYTES read whole, judged from its head and
    last EDGE_FIRST_BYTES as edge_result_meta judges one too large to read; None when it is
    shorter or those bytes do not say (it is then parsed whole).

    On valid JSON both give the same meta (tests/unit/test_large_results.py). What the edges
    do not see is not checked: a value whose middle is not valid JSON is judged by its edges,
    as one over JANITOR_MAX_VALUE_BYTES always was.
    """
    if len(raw) < EDGE_FIRST_BYTES:
        return None
    try:
        return edge_result_meta(Edges(len(raw), raw[:EDGE_BYTES], raw[-EDGE_FIRST_BYTES:]), naive=naive)
    except PayloadError as exc:
        if exc.reason == "too_large":
            return None
        raise


def _tail_members(tail: bytes) -> dict[str, Any]:
    """The outermost object's members from ``date_done`` to the end (see edge_result_meta)."""
    depth, inside = 0, False
    for i in range(len(tail) - 1, 0, -1):
        c = tail[i]
        if c == _QUOTE:
            start = i
            while start > 0 and tail[start - 1] == _BACKSLASH:
                start -= 1
            if start == 0:
                break  # the backslash run may begin before the tail: its parity is unknown
            if (i - start) % 2 == 0:
                inside = not inside
        elif inside:
            continue
        elif c in b"}]":
            depth += 1
        elif c in b"{[":
            depth -= 1
            if depth == 0:
                break  # the outermost object opens here: no date_done member after it
        elif c == _COMMA and depth == 1 and tail.startswith(_SUFFIX_START, i + 1):
            return _members(b"{" + tail[i + 1 :])
    raise PayloadError("too_large")


def _members(text: bytes) -> dict[str, Any]:
    objects: list[list[tuple[str, Any]]] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        objects.append(items)
        return dict(items)

    try:
        value = json.loads(text.decode("utf-8"), object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        raise PayloadError("too_large") from None
    names = [name for name, _ in objects[-1]] if isinstance(value, dict) else []
    if not names or names[0] != "date_done" or names[-1] != "task_id":
        raise PayloadError("too_large")
    return value  # type: ignore[no-any-return]


def is_group_meta(raw: bytes, *, max_bytes: int) -> bool:
    """A saved GroupResult / chord header: a mapping with a ``result`` list."""
    value, _ = decode(raw, max_bytes=max_bytes)
    return isinstance(value, dict) and isinstance(value.get("result"), list | tuple)
