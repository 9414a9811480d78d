"""Hand-made reports, no server: what the status page and /metrics show, for the pure tests
and for the ones that hand them to a real browser or to promtool."""

from __future__ import annotations

import datetime as dt

from janitor.operations.broker import BrokerReport, QueueDepth, UnackedMessage
from janitor.operations.census import Census
from janitor.operations.sweep import SweepReport
from janitor.reports.findings import Finding, Workers
from janitor.service.status_page import StatusState, SweepRun

NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)


def status_state() -> StatusState:
    """Everything the page can show: sweeps, census, findings, a queue, and a stuck message whose task name is
    markup, under a URL with a password."""
    report = SweepReport(dry_run=False, scanned=20_000, celery_keys=18_000, completed=True, duration_s=1.5)
    report.ttl_applied["task"] = 9_000
    report.deleted["task"] = 8_000
    report.skipped["too_large"] = 2
    report.bytes_deleted = 3 * 1024 * 1024
    census = Census(total=21_000)
    census.without_ttl["task:SUCCESS"] = 12_431
    census.with_ttl["task:SUCCESS"] = 2_569
    census.sampled["task:SUCCESS"], census.sampled_bytes["task:SUCCESS"] = 10, 3000
    census.result_age["1-7d"] = 15_000
    broker = BrokerReport(now=NOW.timestamp(), visibility_timeout=3600, unacked_total=3)
    broker.queues = [QueueDepth("celery", 40, {0: 30, 9: 10}, None)]
    broker.by_state["stuck"] = 1
    broker.stuck = [
        UnackedMessage(
            "tag1",
            "app.<script>alert(1)</script>",
            "tid-1",
            "celery",
            0,
            NOW.timestamp() - 7200,
            None,
            None,
            2,
            "stuck",
        )
    ]
    return StatusState(
        generated_at=NOW,
        redis_url="redis://user:Hunter2Secret@redis.internal:6379/0",
        sweeps=[SweepRun(NOW - dt.timedelta(minutes=5), report)],
        census=census,
        census_at=NOW - dt.timedelta(minutes=10),
        findings=[
            Finding(
                "error",
                "eviction_policy_unsafe",
                "maxmemory-policy allkeys-lru can evict",
                "policy=allkeys-lru",
                "noeviction",
            ),
            Finding(
                "warning",
                "results_without_ttl",
                "12,431 result keys have no TTL (83%)",
                "12,431 of 15,000",
                "set `result_expires`",
            ),
        ],
        broker=broker,
        broker_at=NOW - dt.timedelta(seconds=30),
        workers=Workers({"w1@host": NOW.timestamp()}, 5.0),
    )


def sweep_report() -> SweepReport:
    """One sweep's numbers, no two alike, so a number counted twice or under the wrong name shows."""
    report = SweepReport(dry_run=False, scanned=100, raced=1, bytes_deleted=500)
    report.ttl_applied["task"] = 10
    report.deleted["task"] = 5
    report.skipped["bad_key_name"] = 2
    report.skipped["too_large"] = 1
    report.skipped_bytes["too_large"] = 3_000_000
    report.tally.commands["EVALSHA"] = 4
    return report
