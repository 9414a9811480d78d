"""Decoding stored results: every serializer Celery uses, inertly and within bounds."""

from __future__ import annotations

import bz2
import datetime as dt
import json
import lzma
import os
import pickle
import zlib
from pathlib import Path

import msgpack
import pytest
import yaml

from janitor.celery_model import payload, picklescan
from janitor.dev.demo import encode, task_meta

MAX = 1024 * 1024
DONE = dt.datetime(2026, 11, 22, 14, 13, 26, 184669, tzinfo=dt.UTC)


class TestSerializers:
    @pytest.mark.parametrize("serializer", ["json", "pickle", "msgpack", "yaml", "gzip"])
    def test_status_and_date_read_from_every_format(self, serializer: str) -> None:
        """Status, date_done and task_id come out the same whatever result_serializer wrote them."""
        meta = payload.result_meta(encode(task_meta("t1", "FAILURE", DONE), serializer), max_bytes=MAX)
        assert (meta.status, meta.date_done, meta.task_id) == ("FAILURE", DONE, "t1")

    @pytest.mark.parametrize(
        ("content_type", "compress"),
        [
            (b"application/x-bz2", bz2.compress),
            (b"application/x-lzma", lzma.compress),
            (b"application/x-gzip", zlib.compress),
        ],
    )
    def test_celery_57_compression(self, content_type: bytes, compress: object) -> None:
        """Compressed payloads (result_compression) are read through their own content type."""
        body = json.dumps(task_meta("t1", "SUCCESS", DONE)).encode()
        raw = payload.COMPRESSED_MAGIC + content_type + b"\x00" + compress(body)  # type: ignore[operator]
        assert payload.result_meta(raw, max_bytes=MAX).status == "SUCCESS"

    def test_decompression_bomb_refused(self) -> None:
        """A payload that inflates past max_bytes is refused, not inflated."""
        raw = payload.COMPRESSED_MAGIC + b"application/x-gzip\x00" + zlib.compress(b" " * (50 * MAX))
        with pytest.raises(payload.PayloadError, match="too_large"):
            payload.result_meta(raw, max_bytes=MAX)

    def test_msgpack_fixmap_is_not_pickle(self) -> None:
        """A msgpack map starting 0x86 is read as msgpack; 0x80 + protocol byte is pickle."""
        raw = msgpack.packb(
            {"status": "SUCCESS", "result": 1, "traceback": None, "children": [], "date_done": None, "task_id": "x"}
        )
        assert raw[0] == 0x86
        assert payload.decode(raw, max_bytes=MAX)[1] == "msgpack"
        assert payload.decode(pickle.dumps({}, protocol=2), max_bytes=MAX)[1] == "pickle"


class TestDates:
    @pytest.mark.parametrize(
        "text",
        [
            "2026-11-22T14:13:26.184669",
            "2026-11-22T14:13:26.184669+00:00",
            "2026-11-22T15:13:26.184669+01:00",
            "2026-11-22T09:13:26.184669-05:00",
        ],
    )
    def test_three_historical_formats_mean_the_same_instant(self, text: str) -> None:
        """Naive (celery <= 5.3, UTC), +00:00 (5.4) and app-timezone offsets (5.5+) give one instant."""
        assert payload.parse_date(text) == DONE

    def test_whole_seconds(self) -> None:
        """isoformat() drops microseconds when they are zero; that form parses too."""
        assert payload.parse_date("2026-11-22T14:13:26") == DONE.replace(microsecond=0)

    @pytest.mark.parametrize("value", [None, 12, "yesterday", "", "9999-99-99T00:00:00", ["2026-01-01"]])
    def test_nonsense_is_an_error(self, value: object) -> None:
        """A date_done that is not an ISO timestamp is reported, never guessed."""
        with pytest.raises(payload.PayloadError, match="bad_date_done"):
            payload.parse_date(value)


class TestRefusals:
    @pytest.mark.parametrize(
        ("raw", "reason"),
        [
            (b'{"status": "SUCCESS", "result"', "bad_json"),
            (b"[1, 2]", "unknown_format"),
            (b'{"result": 1}', "not_a_result"),
            (b'{"status": 5, "result": 1}', "bad_status"),
            (b'{"status": "SUC CESS; rm -rf", "result": 1}', "bad_status"),
            (b'{"status": "SUCCESS", "result": 1, "date_done": "soon"}', "bad_date_done"),
            (b"\xff\xfe\x00garbage", "unknown_format"),
            (b"\x80\x04garbage", "bad_pickle"),
            (b"[" * 100_000 + b"]" * 100_000, "unknown_format"),
            (b"status: SUCCESS\nresult: " + b"[" * 5_000 + b"]" * 5_000, "too_complex"),
            (b"status: SUCCESS\nresult:\n" + b"- " * 5_000 + b"x", "too_complex"),
            (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "bad_json"),
        ],
    )
    def test_odd_values_give_a_reason(self, raw: bytes, reason: str) -> None:
        """Every undecodable value is refused with a reason label, never an exception of another type."""
        with pytest.raises(payload.PayloadError) as info:
            payload.result_meta(raw, max_bytes=MAX)
        assert info.value.reason == reason

    def test_yaml_object_tags_are_not_constructed(self, tmp_path: Path) -> None:
        """YAML that would build Python objects is refused by the safe loader."""
        marker = tmp_path / "yaml-ran"
        raw = f"status: !!python/object/apply:os.system ['touch {marker}']\nresult: 1\n".encode()
        with pytest.raises(payload.PayloadError):
            payload.result_meta(raw, max_bytes=MAX)
        assert not marker.exists()

    def test_custom_states_are_not_ready(self) -> None:
        """A custom state such as PROGRESS is a valid, non-ready result with no date_done."""
        meta = payload.result_meta(json.dumps(task_meta("t", "PROGRESS", None)).encode(), max_bytes=MAX)
        assert (meta.ready, meta.date_done) == (False, None)

    def test_yaml_aliases_do_not_blow_up(self) -> None:
        """A billion-laughs YAML document is read as shared references, not expanded."""
        doc = "status: x\na: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        )
        with pytest.raises(payload.PayloadError, match="not_a_result"):
            payload.result_meta(doc.encode(), max_bytes=MAX)
        assert yaml.safe_load(doc) is not None


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


class TestPickleIsNeverLoaded:
    @pytest.mark.parametrize("protocol", [2, 3, 4, 5])
    def test_malicious_pickle_executes_nothing(self, tmp_path: Path, protocol: int) -> None:
        """A result whose pickle would run a shell command is read inertly: the command never runs."""
        marker = tmp_path / "pwned"
        raw = pickle.dumps(
            {
                "status": "SUCCESS",
                "result": _Evil(marker),
                "traceback": None,
                "children": [],
                "date_done": DONE.isoformat(),
                "task_id": "t",
            },
            protocol=protocol,
        )
        meta = payload.result_meta(raw, max_bytes=MAX)
        assert (meta.status, meta.date_done) == ("SUCCESS", DONE)
        assert not marker.exists()

    def test_pickled_datetime_is_rebuilt_without_import(self) -> None:
        """Old Celery pickled date_done as a datetime; its bytes and timezone are decoded by hand."""
        tz = dt.timezone(dt.timedelta(hours=2))
        raw = pickle.dumps({"status": "SUCCESS", "result": 1, "date_done": DONE.astimezone(tz)}, protocol=2)
        assert payload.result_meta(raw, max_bytes=MAX).date_done == DONE

    def test_the_reader_returns_opaque_placeholders(self) -> None:
        """Globals become Opaque names: a reader of the value can see what a loader would have built."""
        value = picklescan.read(pickle.dumps({"e": ValueError("x")}, protocol=4))
        assert value == {"e": picklescan.Opaque("builtins ValueError")}

    def test_huge_pickles_are_not_walked_for_long(self) -> None:
        """A pickle of hundreds of thousands of opcodes is refused quickly instead of burning CPU."""
        raw = pickle.dumps({"status": "SUCCESS", "result": list(range(300_000)), "date_done": None}, protocol=4)
        with pytest.raises(payload.PayloadError, match="bad_pickle"):
            payload.result_meta(raw, max_bytes=10 * MAX)

    def test_truncated_pickle_refused(self) -> None:
        """A pickle cut short is refused, not partially trusted."""
        raw = pickle.dumps({"status": "SUCCESS", "result": 1}, protocol=4)
        with pytest.raises(picklescan.PickleUnreadable):
            picklescan.read(raw[:-5])
