"""DECIDE (redis_io/lua/decide.lua, the retention rules in Lua) against rules.decide (in Python), on real servers.

DECIDE may hand any key back to Python (with INSPECT's row); when it acts
itself it must take exactly the decision decide() takes, to the millisecond, and
on the JSON Celery writes it must act itself, or the sweep is no faster.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import traceback
import uuid
from typing import Any
from unittest import mock
from zoneinfo import ZoneInfo

import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from janitor import config
from janitor.celery_model.keyspace import Kind, Layout
from janitor.operations import rules
from janitor.operations.rules import Action, Skip, decide
from janitor.operations.sweep import EPOCH, SweepReport, _Pass
from janitor.redis_io import scripts
from janitor.redis_io.lease import Fence
from janitor.redis_io.scripts import Code, Handed, Op

NOW = dt.datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=dt.UTC)
STATES = ["SUCCESS", "FAILURE", "REVOKED", "STARTED", "RETRY", "PENDING", "PROGRESS"]
ODD_STATES = ["success", "", "BAD STATE", "X" * 65, "-A", "A-b_9", "ÉCHEC", 7, None]
# Spliced into a value where a number goes: some are JSON only to cjson, some only to Python.
ODD_NUMBERS = [
    "0x10",
    "+1",
    "01",
    "-01",
    "1.",
    "-.5",
    "1.e5",
    "NaN",
    "Infinity",
    "-Infinity",
    "inf",
    "nan",
    "1e5",
    "-0",
    "1E+2",
    "1e400",
    "0.0",
]


# Dots inside strings DECIDE may read past, and number tokens with dots it must not.
DOTTY = [
    '["celery@ip-10-0-1-23.ec2.internal", "report-2026.csv", "v1.e5", "x-.5", "a 1. b"]',
    '["w-1.x", 1.]',
    '["w-1.x", -.5]',
    '["w-1.x",1.e5]',
    '["w-1.x", 1.5, "9.z"]',
    '{"a-1.x": 2., "b": 1}',
    '{"a":1.}',
    '[true, "1.", 1.]',
    '["' + "1" * 70 + '.x"]',
    "[" + "1" * 70 + ".]",
    '["\\"1.x", 2]',
    '["\\\\", 1.]',
]

# Ids Celery's name check refuses (glob characters, a doubled prefix, empty, too long) or
# that only escapes can spell in the value: DECIDE must leave every one of them to Python.
ODD_IDS = ["a*b", "job?", "x[1]", "y]", "", "celery-task-meta-" + str(uuid.uuid4()), "z" * 256]
ODD_IDS += ["tab\there", "back\\slash", "é"]


# Pieces of a long traceback or args: quotes, backslashes, dots in numbers and names, non-ASCII,
# and text that reads like the meta's last members once unescaped.
LONG_PIECES = [
    "Traceback (most recent call last):\n",
    '  File "/usr/local/lib/python3.11/site-packages/celery/app/trace.py", line 453, in trace_task\n',
    "    R = retval = fun(*args, **kwargs)\n",
    "ValueError: took 5. s at celery@ip-10-0-1-23.ec2.internal\\n",
    '", "date_done": "2020-01-01T00:00:00+00:00", "task_id": "',
    "caf\u00e9 \u2603 ",
    "x" * 200,
]


def _offsets() -> st.SearchStrategy[dt.tzinfo | None]:
    return st.one_of(
        st.none(),
        st.just(dt.UTC),
        st.integers(-1439, 1439).map(lambda m: dt.timezone(dt.timedelta(minutes=m))),
    )


@st.composite
def date_done(draw: st.DrawFn) -> Any:
    """Celery's isoformat() in every zone and precision, its near misses, and things that are not dates."""
    when = NOW + dt.timedelta(seconds=draw(st.floats(-40 * 86400, 2 * 86400)))
    when = when.replace(microsecond=draw(st.sampled_from([0, 1, 999_999, when.microsecond])))
    zone = draw(_offsets())
    text = (when.astimezone(zone) if zone else when.replace(tzinfo=None)).isoformat()
    form = draw(st.sampled_from(["iso", "iso", "iso", "space", "z", "frac", "dot", "basic", "junk", "other"]))
    if form == "space":
        text = text.replace("T", " ")
    elif form == "z" and text.endswith("+00:00"):
        text = text[:-6] + "Z"
    elif form == "frac":
        frac = draw(st.text("0123456789", min_size=1, max_size=9))
        text = text[:19] + "." + frac + text[26:] if "." in text else text[:19] + "." + frac + text[19:]
    elif form == "dot":  # a bare dot, or digits with no dot, after the seconds
        text = text[:19] + draw(st.sampled_from([".", "5", "123456"])) + text[19:]
    elif form == "basic":
        text = text.replace("-", "", 2).replace(":", "", 2)
    elif form == "junk":
        text = draw(
            st.sampled_from(
                [
                    "2026-02-30T10:00:00",
                    "2026-01-01T24:00:00",
                    "2026-13-01T00:00:00",
                    "0001-01-01T00:00:00+01:00",
                    "2026-01-01T10:00:00+24:00",
                    "2024-02-29T00:00:00",
                    "2025-02-29T00:00:00",
                    "2026-01-01",
                    "2026-01-01T10:00:00,5",
                    "",
                    "2026-01-01T24:00:00.000001+00:00",
                    "2026-02-30T10:00:00.000001+00:00",
                    "2026-01-01T10:60:00.000001",
                    "2026-01-01T10:00:60.000001+00:00",
                    "1970-12-31T23:59:59.999999+00:00",
                    "2026-01-01T10:00:00.00000a+00:00",
                    "2026-01-01T10:00:00.000001+00:0a",
                    "2026-01-01T10:00:00.000001-00:00",
                ]
            )
        )
    elif form == "other":
        return draw(st.one_of(st.none(), st.integers(), st.lists(st.integers(), max_size=2), st.text(max_size=12)))
    return text


@st.composite
def result_value(draw: st.DrawFn, ident: str) -> bytes:
    """A task meta as kombu's json writes it, or a mutation of one."""
    status = draw(st.sampled_from(STATES) | st.sampled_from(ODD_STATES))
    meta: dict[str, Any] = {"status": status, "result": draw(st.one_of(st.integers(), st.none(), st.text(max_size=8)))}
    meta["traceback"] = None
    meta["children"] = []
    meta["date_done"] = draw(date_done())
    task_id = draw(st.sampled_from(["same", "same", "same", "other", "null", "missing", "int"]))
    meta["task_id"] = {"same": ident, "other": str(uuid.uuid4()), "null": None, "int": 5}.get(task_id, ident)
    if task_id == "missing":
        del meta["task_id"]
    if draw(st.integers(0, 9)) == 0:
        del meta[draw(st.sampled_from(["status", "result", "date_done"]))]
    if draw(st.integers(0, 2)) == 0:
        return _long(draw, meta, ident)
    raw = json.dumps(meta, ensure_ascii=draw(st.booleans()))
    mutation = draw(
        st.sampled_from(
            ["none"] * 6
            + ["number", "member", "space", "tail", "nonascii", "nul", "tab", "deep", "array", "str", "dots"]
        )
    )
    if mutation == "number":
        raw = raw.replace('"children": []', f'"children": [1, {draw(st.sampled_from(ODD_NUMBERS))}]')
    elif mutation == "dots":  # strtod's numbers next to dots in strings (hostnames, file names)
        raw = raw.replace('"children": []', f'"children": {draw(st.sampled_from(DOTTY))}')
    elif mutation == "member":
        raw = raw.replace('"traceback": null', f'"traceback" :{draw(st.sampled_from(ODD_NUMBERS))}')
    elif mutation == "space":
        raw = " \n" + raw
    elif mutation == "tail":
        raw += draw(st.sampled_from(["x", " ", "\n", "}", ",", "\x00"]))
    elif mutation == "nonascii":
        raw = raw.replace('"traceback"', '"tracébäck"')
    elif mutation == "tab":
        raw = raw.replace('"status": "', '"status": "\t', 1)
    elif mutation == "deep":
        depth = draw(st.integers(90, 1100))
        raw = raw.replace('"children": []', '"children": ' + "[" * depth + "]" * depth)
    elif mutation == "nul":
        raw = raw[:1] + "\x00" + raw[1:]
    elif mutation == "array":
        raw = "[" + raw + "]"
    elif mutation == "str":
        raw = json.dumps(raw)
    return raw.encode()


def _long(draw: st.DrawFn, meta: dict[str, Any], ident: str) -> bytes:
    """A meta of payload.EDGE_FIRST_BYTES or more (a traceback, result_extended's args), judged from
    its edges first, or a mutation of its middle or of the members its tail holds."""
    pieces = draw(st.lists(st.sampled_from(LONG_PIECES), min_size=4, max_size=40))
    meta["traceback"] = "".join(pieces).replace('"task_id": "', f'"task_id": "{ident}')
    task_id = meta.pop("task_id", None) if "task_id" in meta else "missing"
    if draw(st.booleans()):  # result_extended: members between date_done and task_id
        args = draw(st.sampled_from([[1.5, "a.b"], ["x" * draw(st.integers(300, 5000))], []]))
        kwargs = draw(st.sampled_from([{}, {"date_done": "2020-01-01T00:00:00", "task_id": ident}, {"q": 'say "hi"'}]))
        meta |= {"name": "tasks.add", "args": args, "kwargs": kwargs, "worker": "celery@ip-10-0-1-23.ec2.internal"}
        meta |= {"retries": 0, "queue": "celery"}
    if task_id != "missing":
        meta["task_id"] = task_id
    raw = json.dumps(meta, ensure_ascii=draw(st.booleans()))
    mutation = draw(
        st.sampled_from(
            ["none"] * 12
            + ["middle", "quote", "nonascii", "number", "compact", "repeat", "escaped", "spaced", "head", "tail"]
        )
    )
    middle = raw.find('"traceback": ') + 20
    if mutation == "middle":  # no longer JSON between the edges: a raw control byte, a bad number, a cut
        raw = raw[:middle] + draw(st.sampled_from(["\x01", "\t", '", 1., "', "}", '"'])) + raw[middle:]
    elif mutation == "quote":  # an unescaped quote right before the last members
        raw = raw.replace(', "date_done": ', '", "date_done": ', 1)
    elif mutation == "nonascii":
        raw = raw.replace('"worker": "celery@', '"worker": "célery@')
    elif mutation == "number":
        raw = raw.replace('"retries": 0', f'"retries": {draw(st.sampled_from(ODD_NUMBERS))}')
    elif mutation == "compact":
        raw = raw.replace('"task_id": "', '"task_id":"')
    elif mutation == "repeat":  # a member the tail holds twice: the last one wins, as in a whole parse
        twice = draw(st.sampled_from(['"date_done": "2020-01-01T00:00:00+00:00", ', '"task_id": "x", ']))
        raw = raw.replace(', "task_id": "', ", " + twice + '"task_id": "')
    elif mutation == "escaped":  # a member name only an escape spells
        raw = raw.replace(', "task_id": "', ', "task\\u005fid": "other", "task_id": "')
    elif mutation == "spaced":
        raw = raw.replace(', "date_done": ', ',  "date_done": ')
    elif mutation == "head":
        raw = raw.replace('{"status": ', '{"status":', 1)
    elif mutation == "tail":
        raw += draw(st.sampled_from([" ", "\n", "x", "}"]))
    return raw.encode("utf-8", "surrogatepass")


@st.composite
def group_value(draw: st.DrawFn, ident: str) -> bytes:
    """A saved GroupResult as kombu's json writes it (Backend._save_group), or something else under its name."""
    members = [[[str(uuid.uuid4()), None], None] for _ in range(draw(st.integers(0, 3)))]
    result: Any = draw(
        st.sampled_from(
            [[[ident, None], members]] * 4 + [[], {}, {"a": 1}, "x", None, [[ident, None], [[[1.5, None], None]]]]
        )
    )
    raw = json.dumps({"result": result} if draw(st.integers(0, 5)) else {"results": result})
    mutation = draw(st.sampled_from(["none"] * 4 + ["dots", "number", "tail", "array", "nonascii"]))
    if mutation == "dots":
        raw = raw.replace('"result": ', f'"x": {draw(st.sampled_from(DOTTY))}, "result": ', 1)
    elif mutation == "number":
        raw = raw[:-1] + f', "n": {draw(st.sampled_from(ODD_NUMBERS))}}}'
    elif mutation == "tail":
        raw += draw(st.sampled_from(["x", " ", "}"]))
    elif mutation == "array":
        raw = "[" + raw + "]"
    elif mutation == "nonascii":
        raw = raw.replace('"result"', '"r\u00e9sult", "é": 1, "result"', 1)
    return raw.encode()


@st.composite
def batches(draw: st.DrawFn) -> tuple[config.Settings, list[tuple[bytes, bytes]]]:
    prefix = draw(st.sampled_from(["", "myapp"]))
    ttls = {
        "JANITOR_RESULT_TTL": str(draw(st.integers(1, 30 * 86400))),
        "JANITOR_FAILURE_TTL": str(draw(st.integers(1, 30 * 86400))),
        "JANITOR_PENDING_TTL": str(draw(st.integers(1, 30 * 86400))),
        "JANITOR_FUTURE_TOLERANCE": str(draw(st.integers(0, 86400))),
        "JANITOR_GROUP_TTL": str(draw(st.integers(1, 30 * 86400))),
        "JANITOR_KEY_PREFIX": prefix,
        # Naive dates: DECIDE reads them only as UTC; in any other zone it hands them to Python.
        "JANITOR_NAIVE_TIMEZONE": draw(st.sampled_from(["UTC", "UTC", "Asia/Shanghai", "America/New_York", "Etc/UTC"])),
    }
    settings = config.load({"JANITOR_REDIS_URL": "redis://127.0.0.1:1/0", **ttls})
    layout = Layout.for_prefixes(prefix)
    items = []
    for _ in range(draw(st.integers(1, 40))):
        ident = draw(st.sampled_from([str(uuid.uuid4()), "nightly-report:2026-01-01 (eu)", "a", *ODD_IDS]))
        if draw(st.integers(0, 4)):
            items.append((layout.task_prefix + ident.encode(), draw(result_value(ident))))
        else:  # a group: a uuid, one in capitals, a chord key's suffix, or an id that is no uuid
            ident = draw(st.sampled_from([str(uuid.uuid4()), str(uuid.uuid4()).upper(), ident]))
            name = ident + draw(st.sampled_from(["", "", "", ".j", ".t", "x"]))
            items.append((layout.group_prefix + name.encode(), draw(group_value(ident))))
    return settings, list(dict(items).items())


def _run(client: redis.Redis, settings: config.Settings, items: list[tuple[bytes, bytes]]) -> list[Handed]:
    """DECIDE's dry run over the batch by name, and again SCANning for it: both must say the same, key by key."""
    client.flushdb()
    client.mset(dict(items))
    replies: list[scripts.Decided] = []
    run = _Pass(client, settings, SweepReport(dry_run=True), Fence, lambda: NOW)
    receive = _Pass._receive

    def record(self: _Pass, *args: Any, **kwargs: Any) -> scripts.Decided:
        reply = receive(self, *args, **kwargs)
        replies.append(reply)
        return reply

    with mock.patch.object(_Pass, "_receive", record):
        run._decide(keys=[key for key, _ in items])
        by_name = {row.key: row for row in replies[0].handed}
        replies.clear()
        for _ in run.batches():
            pass
    scanned = {row.key: row for reply in replies for row in reply.handed}
    assert scanned == by_name
    return [by_name[key] for key, _ in items]


@hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=batches())
def test_decide_script_agrees_with_the_python_rules(client: redis.Redis, batch: Any) -> None:
    """Every key DECIDE acts on gets exactly decide()'s action; every key it hands back carries INSPECT's row."""
    settings, items = batch
    rows = _run(client, settings, items)
    layout = Layout.for_prefixes(settings.key_prefix)
    for (key, value), row in zip(items, rows, strict=True):
        kind, ident = layout.classify(key)
        assert kind not in {Kind.OTHER, Kind.PIDBOX_REPLY}
        expected = decide(kind, ident, "string", -1, value, now=NOW, settings=settings)
        if not row.code.dry_run:
            assert row == Handed(key, Code.VALUE, "string", -1, value)  # left to Python, with what INSPECT reads
            continue
        assert isinstance(expected, Action), (value, row, expected)
        acted = (
            Handed(key, Code.DELETE, size=len(value)) if expected.deletes else Handed(key, Code.SET_TTL, ms=expected.ms)
        )
        assert row == acted, (value, expected)
        assert expected.op in {Op.SET_TTL, Op.DELETE}


@pytest.mark.parametrize(
    "zone", [None, dt.UTC, dt.timezone(dt.timedelta(hours=-5)), dt.timezone(dt.timedelta(hours=5, minutes=30))]
)
def test_decide_script_acts_on_what_celery_writes(client: redis.Redis, settings: config.Settings, zone: Any) -> None:
    """kombu's json of every state, date_done in each format Celery has written: all decided in Redis."""
    from celery import Celery

    app = Celery("decide", backend=settings.redis_url, set_as_current=False)
    items = []
    for i, state in enumerate(STATES * 3):
        done = NOW - dt.timedelta(days=i % 10, seconds=i)
        meta = {
            "status": state,
            "result": {"n": i},
            "traceback": None,
            "children": [],
            "date_done": (done.astimezone(zone) if zone else done.replace(tzinfo=None)).isoformat(),
        }
        ident = str(uuid.uuid4())
        meta["task_id"] = ident
        items.append((f"celery-task-meta-{ident}".encode(), app.backend.encode(meta).encode()))
    rows = _run(client, settings, items)
    assert [value for (_key, value), row in zip(items, rows, strict=True) if not row.code.dry_run] == []
    assert {row.code for row in rows} == {Code.SET_TTL, Code.DELETE}


@pytest.mark.parametrize("naive_zone", ["UTC", "Asia/Kolkata"])
def test_decide_script_reads_celery_dates_as_python_does(client: redis.Redis, naive_zone: str) -> None:
    """Celery's own date_done forms (microseconds, '+00:00' or naive) and their near misses, digit by digit:
    DECIDE acts exactly as decide() on every valid one and leaves every invalid one to Python."""
    settings = config.load({"JANITOR_REDIS_URL": "redis://127.0.0.1:1/0", "JANITOR_NAIVE_TIMEZONE": naive_zone})
    valid = [(NOW - dt.timedelta(days=d, microseconds=u)).isoformat() for d in (0, 0.5, 2, 8, 400) for u in (0, 1, 7)]
    valid += ["2024-02-29T23:59:59.999999+00:00", "1971-01-01T00:00:00.000001+00:00"]
    valid += [v[:26] for v in valid if v.endswith("+00:00")]
    invalid = ["2026-01-01T24:00:00.000001+00:00", "2026-02-30T10:00:00.000001+00:00", "2025-02-29T10:00:00.000001"]
    invalid += ["2026-01-01T10:60:00.000001", "2026-01-01T10:00:60.000001+00:00", "1970-12-31T23:59:59.999999+00:00"]
    invalid += ["2026-13-01T10:00:00.000001", "2026-00-10T10:00:00.000001+00:00", "2026-01-00T10:00:00.000001"]
    invalid += ["2026-01-01T10:00:00.00000a+00:00", "2026-01-01T10:00:00.000001+00:0a", "2026-01-01T10:0a:00.000001"]
    invalid += ["2026-01-01T10:00:00.000001-00:0", "2026-01-01X10:00:00.000001+00:00", "2026-01-01T10:00:00,000001"]
    items = []
    for text in valid + invalid:
        ident = str(uuid.uuid4())
        meta = {
            "status": "SUCCESS",
            "result": 1,
            "traceback": None,
            "children": [],
            "date_done": text,
            "task_id": ident,
        }
        items.append((f"celery-task-meta-{ident}".encode(), json.dumps(meta).encode()))
    rows = _run(client, settings, items)
    for (key, value), row, text in zip(items, rows, valid + invalid, strict=True):
        expected = decide(Kind.TASK, key[17:], "string", -1, value, now=NOW, settings=settings)
        if text in invalid:
            assert row.code is Code.VALUE, text
        elif len(text) == 26 and naive_zone != "UTC":
            assert row.code is Code.VALUE, text  # a naive date outside UTC: Python reads it in the zone
        else:
            assert isinstance(expected, Action), text
            assert row == (
                Handed(key, Code.DELETE, size=len(value))
                if expected.deletes
                else Handed(key, Code.SET_TTL, ms=expected.ms)
            ), text


def test_decide_script_acts_on_extended_results_failures_and_groups(
    client: redis.Redis, settings: config.Settings
) -> None:
    """result_extended (a worker's dotted hostname), a FAILURE's traceback and a saved group, as Celery's own
    backend encodes them: decided in Redis, none handed back."""
    from celery import Celery
    from celery.app.task import Context
    from celery.result import AsyncResult, GroupResult

    app = Celery("decide", backend=settings.redis_url, set_as_current=False)
    app.conf.result_extended = True
    memory = Celery("members", backend="cache+memory://", set_as_current=False)
    request = Context(
        task="billing.tasks.sync",
        args=[12, "report-2026.csv"],
        kwargs={"ratio": 0.5, "since": "2026-11-01T00:00:00+00:00"},
        hostname="celery@ip-10-0-1-23.ec2.internal",
        retries=1,
        delivery_info={"routing_key": "billing"},
    )
    try:
        raise ConnectionError("HTTPSConnectionPool(host='api.example.com', port=443): Max retries exceeded")
    except ConnectionError as exc:
        error, trace = app.backend.prepare_exception(exc), traceback.format_exc()
    items = []
    for i, (state, result, trace_text) in enumerate([("SUCCESS", {"n": 1.5}, None), ("FAILURE", error, trace)] * 3):
        meta = app.backend._get_result_meta(result, state, trace_text, request)
        meta["date_done"] = (NOW - dt.timedelta(days=i * 3)).isoformat()
        ident = str(uuid.uuid4())
        meta["task_id"] = ident
        items.append((f"celery-task-meta-{ident}".encode(), app.backend.encode(meta).encode()))
    for _ in range(3):
        ident = str(uuid.uuid4())
        members = [AsyncResult(str(uuid.uuid4()), app=memory) for _ in range(3)]
        saved = app.backend.encode({"result": GroupResult(ident, members, app=memory).as_tuple()})
        items.append((f"celery-taskset-meta-{ident}".encode(), saved.encode()))
    rows = _run(client, settings, items)
    assert [value for (_key, value), row in zip(items, rows, strict=True) if not row.code.dry_run] == []
    assert [row.ms for row in rows[-3:]] == [settings.group_ttl * 1000] * 3


@pytest.mark.parametrize("zone", ["Asia/Shanghai", "America/New_York", "Asia/Kolkata"])
def test_naive_dates_outside_utc_are_decided_in_python(client: redis.Redis, zone: str) -> None:
    """With JANITOR_NAIVE_TIMEZONE other than UTC, DECIDE hands naive dates back and acts on the others;
    Python reads the naive ones as wall-clock time there, DST included."""
    settings = config.load({"JANITOR_REDIS_URL": "redis://127.0.0.1:1/0", "JANITOR_NAIVE_TIMEZONE": zone})
    items, naive = [], set()
    for i, days in enumerate([0.2, 0.9, 1.1, 3, 150, 200]):  # spans a DST change in New York
        done = NOW - dt.timedelta(days=days)
        for aware in (False, True):
            ident = str(uuid.uuid4())
            text = done.isoformat() if aware else done.astimezone(ZoneInfo(zone)).replace(tzinfo=None).isoformat()
            meta = {"status": "SUCCESS", "result": i, "traceback": None, "children": [], "date_done": text}
            key = f"celery-task-meta-{ident}".encode()
            items.append((key, json.dumps(meta | {"task_id": ident}).encode()))
            if not aware:
                naive.add(key)
    rows = _run(client, settings, items)
    for (key, value), row in zip(items, rows, strict=True):
        assert (row.code is Code.VALUE) == (key in naive), (value, row)
        if key in naive:
            action = decide(Kind.TASK, key[17:], "string", -1, value, now=NOW, settings=settings)
            done = dt.datetime.fromisoformat(json.loads(value)["date_done"]).replace(tzinfo=ZoneInfo(zone))
            left_ms = (settings.result_ttl * 1_000_000 - (NOW - done) // dt.timedelta(microseconds=1)) // 1000
            assert action == (
                Action(Op.SET_TTL, left_ms, f"L{len(value)}", Kind.TASK, len(value))
                if left_ms > 0
                else Action(Op.DELETE, 0, f"S{len(value)}:{scripts.sha1(value)}", Kind.TASK, len(value))
            )


def test_long_results_are_judged_from_their_edges(client: redis.Redis) -> None:
    """FAILUREs with long tracebacks as Celery's backend writes them: decided in Redis from their edges, even
    over JANITOR_MAX_VALUE_BYTES, and one whose traceback is no longer JSON (a raw control byte) too, as Python
    decides it; the same flaw in a short value leaves it to Python, which skips it as bad JSON."""
    from celery import Celery

    settings = config.load({"JANITOR_REDIS_URL": "redis://127.0.0.1:1/0", "JANITOR_MAX_VALUE_BYTES": "1024"})
    app = Celery("decide", backend=settings.redis_url, set_as_current=False)
    error = app.backend.prepare_exception(ValueError("boom"))

    def failure(lines: int, days: int) -> tuple[bytes, bytes]:
        trace = "".join(f'  File "/srv/app/tasks_{n}.py", line {n}, in run\n    step_{n}()\n' for n in range(lines))
        meta = app.backend._get_result_meta(error, "FAILURE", "Traceback (most recent call last):\n" + trace, None)
        ident = str(uuid.uuid4())
        meta |= {"date_done": (NOW - dt.timedelta(days=days)).isoformat(), "task_id": ident}
        return f"celery-task-meta-{ident}".encode(), app.backend.encode(meta).encode()

    long = [failure(20, 0), failure(60, 3), failure(200, 6)]
    key, value = failure(60, 9)
    long.append((key, value.replace(b"line 7,", b"line 7\x01,")))
    short = json.dumps({"status": "SUCCESS", "result": "\x01", "date_done": NOW.isoformat(), "task_id": "s"})
    flawed = (b"celery-task-meta-s", short.encode().replace(b"\\u0001", b"\x01"))
    assert all(len(value) > settings.max_value_bytes for _key, value in long)
    rows = _run(client, settings, [*long, flawed])
    for (key, value), row in zip(long, rows[:-1], strict=True):
        expected = decide(Kind.TASK, key[17:], "string", -1, value, now=NOW, settings=settings)
        assert isinstance(expected, Action)
        acted = (
            Handed(key, Code.DELETE, size=len(value)) if expected.deletes else Handed(key, Code.SET_TTL, ms=expected.ms)
        )
        assert row == acted, (len(value), row)
    assert {row.code for row in rows[:-1]} == {Code.SET_TTL, Code.DELETE}
    assert rows[-1] == Handed(flawed[0], Code.VALUE, "string", -1, flawed[1])
    assert decide(Kind.TASK, b"s", "string", -1, flawed[1], now=NOW, settings=settings) == Skip("bad_json")


def test_a_call_past_its_deadline_hands_the_rest_back(client: redis.Redis, settings: config.Settings) -> None:
    """DECIDE stops judging keys once a call has run past its deadline and hands the rest back; the sweep
    judges those in the calls that follow, so every key still gets its TTL."""
    items = {}
    for i in range(200):
        ident = str(uuid.uuid4())
        meta = {"status": "SUCCESS", "result": i, "traceback": None, "children": [], "date_done": NOW.isoformat()}
        items[f"celery-task-meta-{ident}".encode()] = json.dumps(meta | {"task_id": ident}).encode()
    client.flushdb()
    client.mset(items)
    run = _Pass(client, settings, SweepReport(dry_run=False), Fence, lambda: NOW)
    run.retention = dataclasses.replace(run.retention, deadline_us=1)
    keys = list(items)
    now_us = (NOW - EPOCH) // rules.MICROSECOND
    reply = scripts.decide(
        run.report.tally,
        client,
        run.retention,
        fence=Fence().key,
        token="",
        dry_run=True,
        now_us=now_us,
        limit=200,
        keys=keys,
    ).reply()
    over = [row.key for row in reply.handed if row.code is Code.OVER_LIMIT]
    assert 0 < len(keys) - len(over) < 16  # the clock is read every 8 keys: it stopped at the first reading
    assert over == keys[len(keys) - len(over) :]
    run._decide(keys=keys)
    run.flush()
    assert all(client.pttl(key) > 0 for key in keys)
