"""Results too large to read whole, judged from their length, head and tail: the pure rules.

The oracle is the Python rules on the whole value: judged from its edges, a value gets
exactly the decision the whole value gets, or is skipped as ``too_large``; never another.
Values are crafted to hold fake ``"date_done"``/``"task_id"``/``"status"`` members, escaped
quotes and backslash runs right where the tail window starts.
"""

from __future__ import annotations

import datetime as dt
import json
import pickle
import sys
import uuid
import zlib
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from kombu.utils.json import dumps

from janitor import config
from janitor.celery_model import payload
from janitor.celery_model.keyspace import Kind
from janitor.operations.rules import Action, Skip, decide
from janitor.redis_io.scripts import Op, sha1
from tests.support.big_values import FAKES, NOW, TID

S = config.load({"JANITOR_MAX_VALUE_BYTES": str(512 * 1024 * 1024)})  # the oracle reads everything whole


def _oracle(value: bytes, *, pttl: int = -1, settings: config.Settings = S) -> object:
    with mock.patch.object(payload, "EDGE_FIRST_BYTES", sys.maxsize):  # parsed whole, whatever its length
        return decide(Kind.TASK, TID.encode(), "string", pttl, value, now=NOW, settings=settings)


def _by_edges(value: bytes, head: int, tail: int, *, pttl: int = -1, settings: config.Settings = S) -> object:
    edges = payload.Edges(len(value), value[:head], value[-tail:])
    return decide(Kind.TASK, TID.encode(), "string", pttl, edges, now=NOW, settings=settings)


def _agrees(value: bytes, head: int, tail: int, *, pttl: int = -1, settings: config.Settings = S) -> bool:
    """Judged from its edges, the value gets the whole value's decision or is skipped as too large;
    returns whether it was judged."""
    whole = _oracle(value, pttl=pttl, settings=settings)
    edged = _by_edges(value, head, tail, pttl=pttl, settings=settings)
    if edged == Skip("too_large", len(value)):
        return False
    if isinstance(whole, Action):
        assert isinstance(edged, Action), (value[-tail:], whole, edged)
        assert (edged.op, edged.ms, edged.kind, edged.size) == (whole.op, whole.ms, whole.kind, whole.size)
        assert edged.guard.startswith("E" if edged.deletes else "L")
    else:
        assert edged == whole, (value[-tail:], whole, edged)
    return True


# A nested object (in kwargs, a stamp, a result) that looks like the meta's own last members.
NESTED = {"a": 1, "date_done": "2020-01-01T00:00:00", "task_id": TID}


def _json() -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.sampled_from([*FAKES, NESTED]),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.text(max_size=10) | st.sampled_from(["date_done", "task_id", "status"]), inner, max_size=3
            )
        ),
        max_leaves=8,
    )


@st.composite
def metas(draw: st.DrawFn) -> dict[str, Any]:
    """A task meta in Celery's key order, its free-form parts (result, args, kwargs, stamps) drawn hostile."""
    status = draw(st.sampled_from(["SUCCESS", "FAILURE", "REVOKED", "STARTED", "PROGRESS"]))
    age = dt.timedelta(seconds=draw(st.integers(-2 * 86400, 10 * 86400)))
    when = NOW - age
    zone = draw(st.sampled_from([None, dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30))]))
    done = (when.astimezone(zone) if zone else when.replace(tzinfo=None)).isoformat()
    filler = draw(st.sampled_from(["", "x" * 300, "\\" * 301, '"' * 150]))
    meta: dict[str, Any] = {
        "status": status,
        "result": draw(st.lists(st.sampled_from(FAKES), max_size=3).map(lambda parts: filler + "".join(parts)))
        if draw(st.booleans())
        else draw(_json()),
        "traceback": None,
        "children": [],
        "date_done": done if status in payload.READY_STATES else None,
    }
    if draw(st.booleans()):
        meta["group_id"] = str(uuid.uuid4())
    if draw(st.booleans()):  # result_extended: args and kwargs come after date_done
        meta |= {
            "name": "app.big",
            "args": draw(st.lists(_json(), max_size=3)),
            "kwargs": draw(st.dictionaries(st.sampled_from(["date_done", "task_id", "a"]), _json(), max_size=3)),
            "worker": "w1@host",
            "retries": 0,
            "queue": "celery",
        }
        if draw(st.booleans()):
            meta |= {"stamped_headers": ["s"], "s": draw(_json())}
    meta["task_id"] = draw(st.sampled_from([TID, TID, TID, str(uuid.uuid4())]))
    return meta


class TestEdgesAgreeWithTheWholeValue:
    @hypothesis_settings(max_examples=1500, deadline=None)
    @given(meta=metas(), head=st.integers(1, 400), cut=st.integers(0, 700), ascii_only=st.booleans())
    def test_judged_alike_or_skipped(self, meta: dict[str, Any], head: int, cut: int, ascii_only: bool) -> None:
        """Every window, wherever it cuts the value (inside a string, a backslash run, a fake member)."""
        value = json.dumps(meta, ensure_ascii=ascii_only).encode()
        _agrees(value, head, max(1, len(value) - cut))

    @pytest.mark.parametrize("fake", FAKES)
    def test_every_cut_through_a_fake_tail(self, fake: str) -> None:
        """A result ending in a fake tail, the window starting at each byte around it."""
        meta = {"status": "SUCCESS", "result": "x" * 50 + fake, "traceback": None, "children": []}
        meta |= {"date_done": NOW.isoformat(), "task_id": TID}
        value = dumps(meta).encode()
        judged = [_agrees(value, 64, tail) for tail in range(1, len(value))]
        assert any(judged)  # a window that reaches the real date_done is judged

    def test_celerys_order_is_read_and_others_are_not(self) -> None:
        """The members Celery 5.3-5.7 write, in its order, are read; a value in any other order is not."""
        meta = {"status": "SUCCESS", "result": "y" * 5000, "traceback": None, "children": []}
        meta |= {"date_done": (NOW - dt.timedelta(days=3)).isoformat(), "task_id": TID}
        value = dumps(meta).encode()
        assert isinstance(_by_edges(value, 4096, 4096), Action)
        for reordered in (
            {"result": meta["result"], **{k: v for k, v in meta.items() if k != "result"}},
            {**{k: v for k, v in meta.items() if k != "date_done"}, "date_done": meta["date_done"]},
            {**meta, "extra": 1},
        ):
            assert _by_edges(dumps(reordered).encode(), 4096, 4096) == Skip("too_large", len(dumps(reordered)))

    @pytest.mark.parametrize(
        "value",
        [
            pickle.dumps({"status": "SUCCESS", "result": "z" * 9000, "task_id": TID}, protocol=4),
            b"\x00celery-compressed\x00application/x-gzip\x00" + zlib.compress(b"{" + b" " * 9000 + b"}"),
            b"\x85\xa6status\xa7SUCCESS" + b"\x00" * 9000,
            b'{"status": "SUCCESS", "result": "' + b"a" * 9000 + b'"}',
            b"status: SUCCESS\nresult: " + b"b" * 9000,
        ],
    )
    def test_what_cannot_be_read_is_too_large(self, value: bytes) -> None:
        """Pickle, compressed, msgpack, no date_done, YAML: skipped and counted with their bytes."""
        assert _by_edges(value, 4096, 4096) == Skip("too_large", len(value))


class TestEdgesFirst:
    """A value of payload.EDGE_FIRST_BYTES or more read whole is judged from its edges before it is parsed."""

    @staticmethod
    def _meta(trace: str, **more: Any) -> bytes:
        meta = {"status": "FAILURE", "result": {"exc_type": "ValueError"}, "traceback": trace, "children": []}
        return dumps(meta | {"date_done": (NOW - dt.timedelta(days=9)).isoformat(), **more, "task_id": TID}).encode()

    def test_a_middle_that_is_not_json_is_judged_by_the_edges(self) -> None:
        value = self._meta("line\n" * 200)
        flawed = value.replace(b"line\\n", b"line\x01", 1)
        assert len(flawed) >= payload.EDGE_FIRST_BYTES
        assert _oracle(flawed) == Skip("bad_json")
        assert decide(Kind.TASK, TID.encode(), "string", -1, flawed, now=NOW, settings=S) == Action(
            Op.DELETE, 0, f"S{len(flawed)}:{sha1(flawed)}", Kind.TASK, len(flawed)
        )

    def test_a_short_value_is_parsed_whole(self) -> None:
        flawed = self._meta("line\x01").replace(b"\\u0001", b"\x01")
        assert len(flawed) < payload.EDGE_FIRST_BYTES
        assert decide(Kind.TASK, TID.encode(), "string", -1, flawed, now=NOW, settings=S) == Skip("bad_json")

    def test_edges_that_do_not_say_leave_the_whole_parse(self) -> None:
        value = self._meta("line\n" * 200)
        reordered = value.replace(b'{"status": "FAILURE", ', b"{").replace(
            b', "task_id"', b', "status": "FAILURE", "task_id"'
        )
        assert payload.edge_first_meta(reordered) is None
        assert decide(Kind.TASK, TID.encode(), "string", -1, reordered, now=NOW, settings=S) == _oracle(reordered)
        assert isinstance(_oracle(reordered), Action)

    def test_a_member_the_tail_repeats_is_read_as_a_whole_parse_reads_it(self) -> None:
        value = self._meta("x" * 1200, worker="w1")
        twice = value.replace(b', "task_id"', b', "worker": "w2", "task_id"')
        assert decide(Kind.TASK, TID.encode(), "string", -1, twice, now=NOW, settings=S) == _oracle(twice)
        assert payload.edge_first_meta(twice) is not None
