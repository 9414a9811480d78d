"""Dates and big values the sweep cannot act on, as the census counts them and the findings name them.

Keyspaces written by Celery's own backend code (``Backend.store_result``) on real servers: an app
that replaced ``app.now`` with naive local time (as Django with ``USE_TZ=False`` does), results
dated far in the future, and big results the janitor cannot read safely.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from typing import Any
from zoneinfo import ZoneInfo

import redis
from celery import Celery

from janitor import config
from janitor.dev import embedded
from janitor.operations import census
from janitor.operations.sweep import sweep
from janitor.reports import findings, text

MB = 1024 * 1024


def _app(url: str, *, serializer: str = "json", now: Any = None) -> Celery:
    app = Celery("dates", backend=url, set_as_current=False)
    app.conf.update(result_expires=None, result_serializer=serializer, result_accept_content=["json", "pickle"])
    if now is not None:
        app.now = now  # type: ignore[method-assign]
    return app


def _store(app: Celery, result: Any = 1, state: str = "SUCCESS") -> str:
    tid = str(uuid.uuid4())
    app.backend.store_result(tid, result, state)
    return tid


def _local_naive(zone: str, lag: dt.timedelta = dt.timedelta()) -> Any:
    """app.now as an app with naive local time has it."""
    return lambda: (dt.datetime.now(ZoneInfo(zone)) - lag).replace(tzinfo=None)


def _found(client: redis.Redis, settings: config.Settings) -> dict[str, findings.Finding]:
    taken = census.take(client, settings)
    return {f.code: f for f in findings.evaluate(findings.Inputs(census=taken))}


class TestNaiveLocalTime:
    def test_local_time_ahead_of_utc_is_named_with_its_offset(
        self, client: redis.Redis, settings: config.Settings
    ) -> None:
        """Results of an app on naive Asia/Shanghai time: "results are dated in local time UTC+8"; once
        JANITOR_NAIVE_TIMEZONE says so, the finding is gone and the newest results are swept normally."""
        for minutes in (1, 30, 300, 3000):
            _store(_app(settings.redis_url, now=_local_naive("Asia/Shanghai", dt.timedelta(minutes=minutes))))
        found = _found(client, settings)
        assert found["naive_local_time"].title == "results are dated in local time UTC+8; set JANITOR_NAIVE_TIMEZONE"
        assert "future_results" in found  # the newest lie beyond the tolerance: skipped until then
        assert sweep(client, settings, dry_run=True).skipped == {"future_date_done": 3}
        fixed = settings.model_copy(update={"naive_timezone": "Asia/Shanghai"})
        assert not {"naive_local_time", "future_results"} & _found(client, fixed).keys()
        report = sweep(client, fixed)
        assert report.skipped == {}
        assert (report.ttl_applied, report.deleted) == ({"task": 3}, {"task": 1})

    def test_half_hour_zones_and_utc_apps(self, client: redis.Redis, settings: config.Settings) -> None:
        """India's UTC+5:30 is named as such; stock Celery's naive UTC raises nothing."""
        _store(_app(settings.redis_url, now=_local_naive("Asia/Kolkata", dt.timedelta(minutes=2))))
        assert _found(client, settings)["naive_local_time"].title.startswith("results are dated in local time UTC+5:30")
        client.flushdb()
        _store(_app(settings.redis_url, now=lambda: dt.datetime.now(dt.UTC).replace(tzinfo=None)))
        assert not {"naive_local_time", "future_results"} & _found(client, settings).keys()


class TestFutureResults:
    def test_results_dated_in_the_future_are_counted_with_their_bytes(
        self, client: redis.Redis, settings: config.Settings
    ) -> None:
        """A worker whose clock ran a year ahead: counted, bytes summed, named with the likely cause."""
        ahead = _app(settings.redis_url, now=lambda: dt.datetime.now(dt.UTC) + dt.timedelta(days=365))
        ids = [_store(ahead, "x" * 1000) for _ in range(3)]
        key = ahead.backend.get_key_for_task
        size = sum(client.strlen(key(tid)) for tid in ids)
        taken = census.take(client, settings)
        assert (taken.future, taken.future_bytes) == (3, size)
        found = {f.code: f for f in findings.evaluate(findings.Inputs(census=taken))}
        assert "naive_local_time" not in found
        assert "worker clock running ahead" in found["future_results"].evidence
        report = sweep(client, settings)
        assert report.skipped == {"future_date_done": 3}
        assert report.skipped_bytes == {"future_date_done": size}


class TestLargeUnreadable:
    def test_big_results_that_cannot_be_judged_are_named_with_their_size(
        self, server: embedded.Server, client: redis.Redis, settings: config.Settings
    ) -> None:
        """Two 3 MiB pickled results and one JSON result: diagnose names the two, with their MiB, and the fix."""
        old = _app(settings.redis_url, serializer="pickle", now=lambda: dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        pickled = [_store(old, "p" * (3 * MB)) for _ in range(2)]
        _store(_app(settings.redis_url, now=lambda: dt.datetime(2020, 1, 1, tzinfo=dt.UTC)), "j" * (3 * MB))
        size = sum(client.strlen(old.backend.get_key_for_task(tid)) for tid in pickled)
        env = {k: v for k, v in os.environ.items() if not k.startswith("JANITOR_") and not k.endswith("REDIS_URL")}
        proc = subprocess.run(
            [sys.executable, "-m", "janitor", "diagnose", "--json"],
            env=env | {"JANITOR_REDIS_URL": server.url, "JANITOR_LOG_FORMAT": "json"},
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        doc = json.loads(proc.stdout)
        assert doc["keyspace"]["unjudged_results"] == {"keys": 2, "bytes": size}
        found = {f["code"]: f for f in doc["findings"]}["large_results_unreadable"]
        assert found["title"] == (f"2 result keys holding {text.size(size)} have no TTL and cannot be read safely")
        assert "EXPIRE" in found["fix"]
        report = sweep(client, settings)
        assert (report.deleted, report.skipped, report.skipped_bytes) == (
            {"task": 1},
            {"too_large": 2},
            {"too_large": size},
        )
