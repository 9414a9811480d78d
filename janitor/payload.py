"""Sniff and decode a stored Celery result without trusting it.

Celery stores no content type with a result, so the format is read from the
first bytes (shared/celery-redis-keyspace.md). Every decoder here is bounded and
inert: pickles are read with :mod:`janitor.picklescan`, YAML with the safe
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

from janitor import picklescan

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

    @property
    def ready(self) -> bool:
        return self.status in READY_STATES


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


def parse_date(value: Any) -> dt.datetime:
    """Celery's ``date_done`` in any historical format, as an aware UTC datetime.

    Naive values (celery <= 5.3, ``utcnow().isoformat()``) are UTC; 5.4 writes
    ``+00:00`` and 5.5+ the app timezone's offset.
    """
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, str) and 10 <= len(value) <= 40:
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise PayloadError("bad_date_done") from None
    else:
        raise PayloadError("bad_date_done")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    try:
        return parsed.astimezone(dt.UTC)
    except (OverflowError, ValueError):
        raise PayloadError("bad_date_done") from None


def result_meta(raw: bytes, *, max_bytes: int) -> ResultMeta:
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
    date_done = parse_date(value.get("date_done")) if status in READY_STATES else None
    return ResultMeta(status, date_done, task_id, serializer)


def is_group_meta(raw: bytes, *, max_bytes: int) -> bool:
    """A saved GroupResult / chord header: a mapping with a ``result`` list."""
    value, _ = decode(raw, max_bytes=max_bytes)
    return isinstance(value, dict) and isinstance(value.get("result"), list | tuple)
