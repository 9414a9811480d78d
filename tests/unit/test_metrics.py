"""Metric objects on a fresh registry per test: names, labels, deltas (promtool's lint: integration tier)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from janitor import __version__
from janitor.service.metrics import Metrics, ResultCensus, SweepRecorder
from tests.support.reports import sweep_report


class TestSweepRecorder:
    def test_counts_each_number_once_across_batches(self, registry: CollectorRegistry, metrics: Metrics) -> None:
        """Called per batch with a growing report, the counters end at the report's totals."""
        recorder = SweepRecorder(metrics, "results")
        report = sweep_report()
        recorder(report)
        report.scanned += 50
        report.deleted["task"] += 3
        report.deleted["group"] += 1
        recorder(report)
        recorder(report)  # the final call after the last batch adds nothing new
        get = registry.get_sample_value
        assert get("janitor_keys_scanned_total", {"sweep": "results"}) == 150
        assert get("janitor_keys_deleted_total", {"kind": "task", "reason": "retention"}) == 8
        assert get("janitor_keys_deleted_total", {"kind": "group", "reason": "retention"}) == 1
        assert get("janitor_keys_ttl_applied_total", {"kind": "task"}) == 10
        assert get("janitor_keys_skipped_total", {"reason": "bad_key_name"}) == 2
        assert get("janitor_skipped_value_bytes_total", {"reason": "too_large"}) == 3_000_000
        assert get("janitor_keys_raced_total") == 1
        assert get("janitor_deleted_value_bytes_total") == 500
        assert get("janitor_redis_commands_total", {"command": "EVALSHA"}) == 4

    def test_two_sweeps_add_up(self, registry: CollectorRegistry, metrics: Metrics) -> None:
        """Each run has its own recorder; the counters keep growing across runs."""
        SweepRecorder(metrics, "results")(sweep_report())
        SweepRecorder(metrics, "results")(sweep_report())
        assert registry.get_sample_value("janitor_keys_scanned_total", {"sweep": "results"}) == 200


class TestSnapshots:
    def test_absent_until_first_read(self, registry: CollectorRegistry, metrics: Metrics) -> None:
        """No census or INFO yet: no made-up zeros."""
        assert registry.get_sample_value("janitor_result_oldest_age_seconds") is None
        assert registry.get_sample_value("janitor_redis_memory_used_bytes") is None

    def test_census_replaces_the_previous_one(self, registry: CollectorRegistry, metrics: Metrics) -> None:
        """A state that disappeared is gone from the next scrape, not stuck at its old value."""
        metrics.seen.update(census=ResultCensus({("SUCCESS", False): 7, ("FAILURE", True): 2}, 99.5))
        get = registry.get_sample_value
        assert get("janitor_result_keys", {"state": "SUCCESS", "ttl": "false"}) == 7
        assert get("janitor_result_keys", {"state": "FAILURE", "ttl": "true"}) == 2
        assert get("janitor_result_oldest_age_seconds") == 99.5
        metrics.seen.update(census=ResultCensus({("SUCCESS", True): 3}, 0.0))
        assert get("janitor_result_keys", {"state": "SUCCESS", "ttl": "false"}) is None
        assert get("janitor_result_keys", {"state": "SUCCESS", "ttl": "true"}) == 3

    def test_info_fields(self, registry: CollectorRegistry, metrics: Metrics) -> None:
        """Memory, eviction and keyspace figures from a parsed INFO reply."""
        info = {
            "used_memory": 1024,
            "maxmemory": 4096,
            "maxmemory_policy": "allkeys-lru",
            "evicted_keys": 3,
            "expired_keys": 9,
            "connected_clients": 5,
            "db0": {"keys": 10, "expires": 4, "avg_ttl": 0},
            "db3": {"keys": 1, "expires": 0, "avg_ttl": 0},
        }
        metrics.seen.update(info=info)
        get = registry.get_sample_value
        assert get("janitor_redis_memory_used_bytes") == 1024
        assert get("janitor_redis_memory_max_bytes") == 4096
        assert get("janitor_redis_maxmemory_policy_info", {"policy": "allkeys-lru"}) == 1
        assert get("janitor_redis_evicted_keys_total") == 3
        assert get("janitor_redis_db_keys", {"db": "3"}) == 1
        assert get("janitor_redis_db_keys_expiring", {"db": "0"}) == 4


class TestExposition:
    def test_build_info_and_no_created_series(self, registry: CollectorRegistry, metrics: Metrics) -> None:
        """build_info carries the version; counters export no `_created` twin."""
        metrics.counter("janitor_sweep_errors_total").labels("results", "connection").inc()
        assert registry.get_sample_value("janitor_build_info", {"version": __version__}) == 1
        assert b"_created" not in generate_latest(registry)
