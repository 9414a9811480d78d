"""Diagnose's conclusions, from hand-made numbers: severity, evidence and fix for each rule."""

from __future__ import annotations

import dataclasses

from janitor.operations.broker import BrokerReport, QueueDepth, UnackedMessage
from janitor.operations.census import Census
from janitor.reports import findings, text
from janitor.reports.findings import Inputs, MemoryInfo, Workers

MiB = 1024 * 1024


def _memory(**kw: object) -> MemoryInfo:
    values: dict[str, object] = {
        "used": 10 * MiB,
        "peak": 12 * MiB,
        "maxmemory": 0,
        "fragmentation": 1.1,
        "policy": "noeviction",
        "evicted_keys": 0,
    }
    values.update(kw)
    return MemoryInfo(**values)  # type: ignore[arg-type]


def _census(no_ttl: int = 0, ttl: int = 0, **others: int) -> Census:
    c = Census()
    c.without_ttl["task:SUCCESS"] = no_ttl
    c.with_ttl["task:SUCCESS"] = ttl
    for cat, n in others.items():
        c.without_ttl[cat] = n
    c.total = sum(c.without_ttl.values()) + sum(c.with_ttl.values())
    return c


def _codes(inputs: Inputs) -> dict[str, str]:
    return {f.code: f.severity for f in findings.evaluate(inputs)}


def _msg(tag: str, state: str = "stuck") -> UnackedMessage:
    return UnackedMessage(tag, "app.slow", f"id-{tag}", "celery", 0, 1000.0, None, None, 0, state)


class TestMemoryFindings:
    def test_allkeys_policy_with_a_limit_is_an_error(self) -> None:
        """allkeys-lru with a maxmemory set is an error naming noeviction as the fix."""
        found = findings.eviction_policy(Inputs(None, memory=_memory(policy="allkeys-lru", maxmemory=100 * MiB)))
        assert [f.severity for f in found] == ["error"]
        assert "noeviction" in found[0].fix
        assert "allkeys-lru" in found[0].evidence

    def test_allkeys_policy_without_a_limit_is_a_warning(self) -> None:
        """With maxmemory 0 nothing is evicted yet, so the same policy only warns."""
        assert _codes(Inputs(None, memory=_memory(policy="allkeys-lfu"))) == {"eviction_policy_unsafe": "warning"}

    def test_volatile_and_noeviction_are_safe(self) -> None:
        """volatile-* and noeviction keep keys without a TTL (queues, unacked, bindings)."""
        for policy in ("noeviction", "volatile-lru", "volatile-ttl"):
            assert not findings.eviction_policy(Inputs(None, memory=_memory(policy=policy, maxmemory=MiB)))

    def test_memory_near_max(self) -> None:
        """75 % of maxmemory warns, 90 % is an error."""
        assert _codes(Inputs(None, memory=_memory(used=80, maxmemory=100)))["memory_near_max"] == "warning"
        assert _codes(Inputs(None, memory=_memory(used=95, maxmemory=100)))["memory_near_max"] == "error"
        assert "memory_near_max" not in _codes(Inputs(None, memory=_memory(used=50, maxmemory=100)))

    def test_evicted_keys_reported(self) -> None:
        """Keys already evicted are a warning with the INFO number as evidence."""
        found = findings.evictions(Inputs(None, memory=_memory(evicted_keys=1234)))
        assert "1,234" in found[0].title


class TestResultFindings:
    def test_results_without_ttl_counted_with_percentage(self) -> None:
        """'N result keys have no TTL (P%)' with result_expires and the sweep as the fix."""
        (f,) = findings.results_without_ttl(Inputs(_census(no_ttl=12_431, ttl=2_569)))
        assert f.title == "12,431 result keys have no TTL (83%)"
        assert f.severity == "warning"
        assert "result_expires" in f.fix
        assert "celery-janitor sweep" in f.fix

    def test_results_without_ttl_is_an_error_under_memory_pressure(self) -> None:
        """The same finding becomes an error when memory is past 75 % of maxmemory."""
        inputs = Inputs(_census(no_ttl=10), memory=_memory(used=80, maxmemory=100))
        assert _codes(inputs)["results_without_ttl"] == "error"

    def test_never_advises_a_sweep_for_keys_it_refuses(self) -> None:
        """Unreadable and future-dated results without a TTL are left alone by the sweep on purpose: the fix
        counts only what a sweep would act on, and never tells the user to sweep keys it will refuse."""
        only_refused = _census(**{"task:unreadable": 4})
        (found,) = findings.results_without_ttl(Inputs(only_refused))
        assert "run `celery-janitor sweep`" not in found.fix
        assert "leaves these alone on purpose" in found.fix
        mixed = _census(no_ttl=10, **{"task:unreadable": 3})
        mixed.future = 2
        (found,) = findings.results_without_ttl(Inputs(mixed))
        assert "give 8 of them a TTL" in found.fix
        assert "the other 5 alone on purpose" in found.fix
        (unreadable,) = findings.unreadable_results(Inputs(only_refused))
        assert "4 of them have no TTL" in unreadable.evidence
        assert "EXPIRE" in unreadable.fix

    def test_clean_results_have_no_finding(self) -> None:
        """Results that all expire produce no TTL finding."""
        assert not findings.results_without_ttl(Inputs(_census(ttl=100)))

    def test_pidbox_and_rpc_and_groups(self) -> None:
        """Leaked reply lists, unread rpc:// lists and groups without TTL each get a warning."""
        codes = _codes(Inputs(_census(pidbox_reply=3, rpc_reply=2, group=4, beat=1)))
        assert codes == {
            "leaked_pidbox_replies": "warning",
            "rpc_reply_lists": "warning",
            "groups_without_ttl": "warning",
        }

    def test_no_beat_keys_is_info(self) -> None:
        """Without any beat/redbeat key the user is told periodic tasks may not be scheduled."""
        (f,) = findings.beat(Inputs(_census(ttl=1)))
        assert f.severity == "info"
        assert "not scheduled" in f.fix


class TestBrokerFindings:
    def test_eta_beyond_visibility_timeout_is_an_error(self) -> None:
        """An ETA later than the visibility timeout means the task runs twice: error, with a VT to set."""
        report = BrokerReport(now=5000.0, visibility_timeout=3600, max_eta_delay_s=7200.0)
        (f,) = findings.eta_beyond_visibility(Inputs(None, broker=report, visibility_timeout=3600))
        assert f.severity == "error"
        assert f.title == "visibility_timeout shorter than your longest ETA: tasks will run twice"
        assert "'visibility_timeout': 10800" in f.fix

    def test_no_heartbeat_with_waiting_messages_is_an_error(self) -> None:
        """No heartbeat while messages wait is an error; with empty queues only a warning."""
        waiting = BrokerReport(now=0.0, visibility_timeout=3600, queues=[QueueDepth("celery", 40, {0: 40}, None)])
        idle = BrokerReport(now=0.0, visibility_timeout=3600)
        silent = Workers({}, 5.0)
        assert _codes(Inputs(None, broker=waiting, workers=silent))["no_worker_heartbeat"] == "error"
        (f,) = findings.no_workers(Inputs(None, broker=idle, workers=silent))
        assert (f.severity, f.title) == ("warning", "no worker heartbeat in 5 s")
        (short,) = findings.no_workers(Inputs(None, broker=waiting, workers=Workers({}, 1.0)))
        assert short.severity == "warning"  # 1 s is shorter than one heartbeat window
        assert "too short" in short.evidence

    def test_workers_alive_or_not_listened(self) -> None:
        """A heard worker, or no listening at all, gives no heartbeat finding."""
        assert not findings.no_workers(Inputs(None, workers=Workers({"w1@h": 1.0}, 5.0)))
        assert not findings.no_workers(Inputs(None, workers=Workers({}, 0.0)))
        assert not findings.no_workers(Inputs(None, workers=None))

    def test_stuck_orphans_hash_only(self) -> None:
        """Stuck messages, orphaned STARTED tasks and index-less unacked entries are warnings with counts."""
        report = BrokerReport(now=9000.0, visibility_timeout=3600, unacked_total=3, oldest_unacked_age_s=8000.0)
        report.stuck = [_msg("a"), _msg("b")]
        report.orphaned_started = [("t1", "w9@gone")]
        report.by_state["hash_only"] = 4
        found = {f.code: f for f in findings.evaluate(Inputs(None, broker=report))}
        assert found["stuck_unacked"].title == "2 unacked messages are past the visibility timeout"
        assert "app.slow x2" in found["stuck_unacked"].evidence
        assert "celery-janitor restore" in found["stuck_unacked"].fix
        assert "w9@gone" in found["orphaned_started"].evidence
        assert found["unacked_without_index"].title.startswith("4 ")

    def test_running_past_visibility_timeout_names_task_worker_and_fix(self) -> None:
        """A task still running on a live worker after the visibility timeout will run twice: an error
        naming the task, how long it has run, where, and the setting to raise."""
        report = BrokerReport(now=9000.0, visibility_timeout=3600)
        long_one = dataclasses.replace(_msg("a", "running"), delivered_at=1000.0, worker="w1@h")
        report.overdue_running = [dataclasses.replace(_msg("b", "running"), delivered_at=4000.0), long_one]
        (found,) = findings.running_overdue(Inputs(None, broker=report))
        assert found.severity == "error"
        assert "task app.slow id-a has run 2.2 h on worker w1@h" in found.evidence
        assert "longer than visibility_timeout 60 min" in found.evidence
        assert "(1 more like it)" in found.evidence
        assert "visibility_timeout" in found.fix
        assert not findings.running_overdue(Inputs(None, broker=BrokerReport(now=9000.0, visibility_timeout=3600)))

    def test_separator_mismatch_is_an_error_naming_the_setting(self) -> None:
        report = BrokerReport(now=9000.0, visibility_timeout=3600, foreign_binding="celery::celery")
        (found,) = findings.separator_mismatch(Inputs(None, broker=report))
        assert found.severity == "error"
        assert "'celery::celery'" in found.evidence
        assert "JANITOR_BROKER_SEP" in found.fix
        assert not findings.separator_mismatch(Inputs(None, broker=BrokerReport(now=1.0, visibility_timeout=1)))

    def test_broker_unavailable_degrades_clearly(self) -> None:
        """When the broker could not be read, one info finding says so instead of made-up numbers."""
        (f,) = findings.broker_unavailable(Inputs(None, broker_error="broker checks unavailable: NOPERM"))
        assert (f.severity, f.title) == ("info", "broker checks unavailable")


class TestOrderingAndExit:
    def test_errors_first_and_worst(self) -> None:
        """Findings are sorted errors first, and worst() names the top severity."""
        inputs = Inputs(_census(no_ttl=5), memory=_memory(policy="allkeys-lru", maxmemory=MiB))
        found = findings.evaluate(inputs)
        assert found[0].severity == "error"
        assert findings.worst(found) == "error"
        assert findings.worst([]) is None

    def test_tls_without_verification(self) -> None:
        """rediss:// with ssl_cert_reqs=none warns; verified or plain connections do not."""
        assert _codes(Inputs(None, tls_verifies=False)) == {"tls_not_verified": "warning"}
        assert _codes(Inputs(None, tls_verifies=True)) == {}
        assert _codes(Inputs(None, tls_verifies=None)) == {}

    def test_sizes_and_durations_for_people(self) -> None:
        """Byte and time formatting used in evidence strings."""
        assert text.size(512) == "512 B"
        assert text.size(3 * MiB) == "3.0 MiB"
        assert text.size(None) == "unknown"
        assert text.duration(30) == "30 s"
        assert text.duration(7200) == "2.0 h"
        assert text.duration(10 * 86400) == "10.0 d"
