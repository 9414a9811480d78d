"""The metrics a daemon exports, populated, pass `promtool check metrics`."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from janitor.service.metrics import Metrics, ResultCensus, SweepRecorder
from tests.support.reports import sweep_report


class TestExposition:
    @pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
    def test_promtool_finds_nothing(self, registry: CollectorRegistry, metrics: Metrics) -> None:
        """Every family, populated, passes `promtool check metrics`."""
        SweepRecorder(metrics, "results")(sweep_report())
        for series in ("janitor_sweep", "janitor_job"):
            metrics.histogram(f"{series}_duration_seconds").labels("results").observe(1.5)
            metrics.gauge(f"{series}_last_success_timestamp_seconds").labels("results").set(1.7e9)
            metrics.counter(f"{series}_errors_total").labels("results", "fenced").inc()
            metrics.counter(f"{series}_overruns_total").labels("results").inc()
        metrics.counter("janitor_redis_errors_total").labels("timeout").inc()
        metrics.seen.update(
            census=ResultCensus({("SUCCESS", False): 1}, 5.0),
            info={"used_memory": 1, "maxmemory": 0, "maxmemory_policy": "noeviction", "db0": {"keys": 1, "expires": 0}},
        )
        lint = subprocess.run(
            ["promtool", "check", "metrics"], input=generate_latest(registry), capture_output=True, check=False
        )
        assert (lint.returncode, lint.stdout + lint.stderr) == (0, b"")
