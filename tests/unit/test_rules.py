"""The retention rules, one key at a time (pure: no server)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from janitor import config
from janitor.celery_model import payload
from janitor.celery_model.keyspace import Kind
from janitor.dev.demo import task_meta
from janitor.operations.rules import CAP_SLACK_MS, Action, Skip, decide
from janitor.redis_io.scripts import sha1

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
S = config.load({})
DAY = 86400


def _task(status: str, age_s: float | None, task_id: str = "t1") -> bytes:
    done = NOW - dt.timedelta(seconds=age_s) if age_s is not None else None
    return json.dumps(task_meta(task_id, status, done)).encode()


def _decide(
    kind: Kind,
    value: bytes | payload.Edges | None,
    *,
    pttl: int = -1,
    rtype: str = "string",
    settings: config.Settings = S,
) -> object:
    return decide(kind, b"t1", rtype, pttl, value, now=NOW, settings=settings)


class TestReadyResults:
    @pytest.mark.parametrize(("status", "ttl"), [("SUCCESS", DAY), ("REVOKED", DAY), ("FAILURE", 7 * DAY)])
    def test_ttl_is_date_done_plus_retention_minus_now(self, status: str, ttl: int) -> None:
        """A ready result with no TTL expires at date_done + its retention (FAILURE has its own)."""
        value = _task(status, 3600)
        assert _decide(Kind.TASK, value) == Action("x", (ttl - 3600) * 1000, f"L{len(value)}", Kind.TASK, len(value))

    @pytest.mark.parametrize(("status", "age"), [("SUCCESS", DAY + 1), ("FAILURE", 7 * DAY + 1)])
    def test_past_retention_is_deleted(self, status: str, age: int) -> None:
        """A ready result older than its retention is deleted, guarded by the value it was judged on."""
        value = _task(status, age)
        assert _decide(Kind.TASK, value) == Action("d", 0, f"S{len(value)}:{sha1(value)}", Kind.TASK, len(value))

    def test_failure_between_retentions_is_kept(self) -> None:
        """A 3-day-old FAILURE outlives SUCCESS retention: it gets a TTL, not deleted."""
        action = _decide(Kind.TASK, _task("FAILURE", 3 * DAY))
        assert isinstance(action, Action)
        assert (action.op, action.ms) == ("x", 4 * DAY * 1000)

    def test_existing_ttl_is_kept(self) -> None:
        """A key that already expires is left alone, whatever its age."""
        assert _decide(Kind.TASK, None, pttl=5000) is None

    def test_cap_mode_shortens_long_ttls_only(self) -> None:
        """With cap_ttl, a TTL longer than the rule's is shortened (EXPIRE LT semantics), a shorter one kept."""
        capped = config.load({"JANITOR_CAP_TTL": "true"})
        value = _task("SUCCESS", 3600)
        long = _decide(Kind.TASK, value, pttl=30 * DAY * 1000, settings=capped)
        assert isinstance(long, Action)
        assert (long.op, long.ms) == ("c", (DAY - 3600) * 1000)
        assert _decide(Kind.TASK, value, pttl=60_000, settings=capped) is None
        old = _decide(Kind.TASK, _task("SUCCESS", 2 * DAY), pttl=30 * DAY * 1000, settings=capped)
        assert isinstance(old, Action)
        assert old.op == "D"

    def test_future_date_is_skipped(self) -> None:
        """A date_done far in the future (clock skew, corruption) is skipped rather than trusted."""
        value = _task("SUCCESS", -DAY)
        assert _decide(Kind.TASK, value) == Skip("future_date_done", len(value))

    def test_small_clock_skew_is_tolerated(self) -> None:
        """A date_done a minute ahead (worker clock skew) still gets the full retention, never more."""
        action = _decide(Kind.TASK, _task("SUCCESS", -60))
        assert isinstance(action, Action)
        assert action.ms == DAY * 1000

    def test_id_mismatch_is_skipped(self) -> None:
        """A value naming another task id than its key is not a result we understand."""
        assert _decide(Kind.TASK, _task("SUCCESS", 10, task_id="other")) == Skip("id_mismatch")


class TestOtherKinds:
    @pytest.mark.parametrize("status", ["STARTED", "RETRY", "PROGRESS", "PENDING"])
    def test_non_ready_get_pending_ttl_never_deleted(self, status: str) -> None:
        """Non-ready results are never deleted; they get the pending TTL when they have none."""
        action = _decide(Kind.TASK, _task(status, None))
        assert isinstance(action, Action)
        assert (action.op, action.ms) == ("x", S.pending_ttl * 1000)

    @pytest.mark.parametrize(
        ("kind", "rtype", "value"),
        [
            (Kind.CHORD_JOIN, "zset", None),
            (Kind.CHORD_JOIN, "list", None),
            (Kind.CHORD_DEDUP, "set", None),
            (Kind.CHORD_SIZE, "string", b"3"),
            (Kind.CHORD_TOTAL, "string", b"-2"),
            (Kind.GROUP, "string", b'{"result": [[["a", null], null]]}'),
        ],
    )
    def test_group_and_chord_keys_get_group_ttl(self, kind: Kind, rtype: str, value: bytes | None) -> None:
        """Group and chord keys without a TTL get the group TTL."""
        action = _decide(kind, value, rtype=rtype)
        assert isinstance(action, Action)
        assert (action.op, action.ms) == ("x", S.group_ttl * 1000)

    def test_chord_claim_is_never_touched(self) -> None:
        """The .c claim token prevents duplicate chord callbacks: no decision is ever taken on it."""
        assert _decide(Kind.CHORD_CLAIM, b"done") is None

    def test_leaked_reply_list_gets_short_ttl(self) -> None:
        """A pidbox reply list with no TTL (a leak) gets the reply TTL."""
        assert _decide(Kind.PIDBOX_REPLY, None, rtype="list") == Action("x", S.reply_ttl * 1000, "", Kind.PIDBOX_REPLY)

    @pytest.mark.parametrize(
        ("kind", "rtype", "value", "reason"),
        [
            (Kind.TASK, "hash", None, "wrong_type"),
            (Kind.TASK, "string", payload.Edges(5_000_000, b"\x80\x04", b"."), "too_large"),
            (Kind.TASK, "string", b"{nope", "bad_json"),
            (Kind.GROUP, "string", b'{"status": "x"}', "not_a_group"),
            (Kind.CHORD_SIZE, "string", b"three", "bad_chord_counter"),
            (Kind.MALFORMED, "string", b"x", "bad_key_name"),
            (Kind.PIDBOX_REPLY, "string", b"x", "wrong_type"),
        ],
    )
    def test_odd_keys_are_skipped_with_reason(
        self, kind: Kind, rtype: str, value: bytes | payload.Edges | None, reason: str
    ) -> None:
        """Anything under a Celery name that does not look like Celery wrote it is skipped, by reason."""
        size = value.size if isinstance(value, payload.Edges) else 0
        assert _decide(kind, value, rtype=rtype) == Skip(reason, size)

    def test_vanished_and_foreign_keys_are_ignored(self) -> None:
        """A key deleted since SCAN, or not Celery's, yields no decision at all."""
        assert _decide(Kind.TASK, None, pttl=-2, rtype="none") is None
        assert _decide(Kind.OTHER, b"x") is None


class TestNaiveTimezone:
    @pytest.mark.parametrize(
        ("zone", "naive", "utc"),
        [
            ("UTC", "2026-11-22T10:00:00", "2026-11-22T10:00:00"),
            ("Asia/Shanghai", "2026-11-22T18:00:00", "2026-11-22T10:00:00"),
            ("America/New_York", "2026-11-22T05:00:00", "2026-11-22T10:00:00"),  # EST, UTC-5
            ("America/New_York", "2026-07-01T06:00:00", "2026-07-01T10:00:00"),  # EDT, UTC-4
            ("Asia/Kolkata", "2026-11-22T15:30:00", "2026-11-22T10:00:00"),
        ],
    )
    def test_naive_date_done_is_wall_clock_time_in_the_zone(self, zone: str, naive: str, utc: str) -> None:
        """JANITOR_NAIVE_TIMEZONE: a date_done without an offset is read in that zone, DST included."""
        settings = config.load({"JANITOR_NAIVE_TIMEZONE": zone, "JANITOR_FAILURE_TTL": str(200 * DAY)})
        meta = task_meta("t1", "FAILURE", None) | {"date_done": naive}
        value = json.dumps(meta).encode()
        action = _decide(Kind.TASK, value, settings=settings)
        age = NOW - dt.datetime.fromisoformat(utc).replace(tzinfo=dt.UTC)
        assert isinstance(action, Action)
        assert action.ms == (200 * DAY - age.total_seconds()) * 1000

    def test_a_bad_zone_is_one_clear_config_error(self) -> None:
        """A name zoneinfo does not know stops start-up with one line naming the setting."""
        with pytest.raises(config.ConfigError, match=r"^invalid setting JANITOR_NAIVE_TIMEZONE='UTC\+8': .*IANA"):
            config.load({"JANITOR_NAIVE_TIMEZONE": "UTC+8"})


class TestCapSlack:
    def test_a_ttl_just_above_the_rules_is_left_alone(self) -> None:
        """Cap mode shortens a TTL only past CAP_SLACK_MS over the rule's: what a previous pass set
        lands a few milliseconds late, and must not be shortened again on every pass."""
        capped = config.load({"JANITOR_CAP_TTL": "true"})
        value = _task("SUCCESS", 3600)
        target = (DAY - 3600) * 1000
        assert _decide(Kind.TASK, value, pttl=target + CAP_SLACK_MS, settings=capped) is None
        action = _decide(Kind.TASK, value, pttl=target + CAP_SLACK_MS + 1, settings=capped)
        assert isinstance(action, Action)
        assert (action.op, action.ms) == ("c", target)
