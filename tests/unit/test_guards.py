"""The guards' arithmetic and plans, pure: which unacked scores are raised, to what, and never lowered."""

from __future__ import annotations

import dataclasses

import structlog.testing

from janitor import config
from janitor.operations import guards
from janitor.operations.broker import BrokerReport, UnackedMessage
from janitor.reports import findings
from janitor.reports.findings import Inputs
from janitor.service.jobs import for_settings

VT = 3600


def _msg(tag: str, state: str, delivered: float, eta: float | None = None) -> UnackedMessage:
    return UnackedMessage(tag, "app.t", f"id-{tag}", "celery", 0, delivered, eta, None, 0, state)


def _report(now: float, *messages: UnackedMessage) -> BrokerReport:
    return BrokerReport(now=now, visibility_timeout=VT, guardable=list(messages))


class TestArithmetic:
    def test_eta_score_lets_kombu_restore_at_eta_plus_grace(self) -> None:
        """kombu restores a score s once now - vt >= s: with eta - vt + grace that is eta + grace."""
        eta, grace = 100_000.0, 60.0
        score = guards.eta_score(eta, VT, grace)
        assert score == eta - VT + grace
        restorable_from = score + VT  # kombu's ceil = now - visibility_timeout
        assert restorable_from == eta + grace

    def test_raised_never_lowers(self) -> None:
        assert guards.raised(10.0, 20.0) == 20.0
        assert guards.raised(20.0, 10.0) is None
        assert guards.raised(20.0, 20.0) is None

    def test_keeps_up_needs_three_runs_per_visibility_timeout(self) -> None:
        assert guards.keeps_up(30.0, 3600)
        assert guards.keeps_up(1.0, 3)
        assert not guards.keeps_up(1.5, 3)
        assert not guards.keeps_up(1300.0, 3600)


class TestPlans:
    def test_eta_guard_raises_held_messages_only(self) -> None:
        """A held message delivered long before its ETA is raised to eta - vt + grace; running, stuck
        and held messages already scored that high are left alone."""
        now = 10_000.0
        far = _msg("far", "held", delivered=now - 10, eta=now + 7200)
        near = _msg("near", "held", delivered=now - 10, eta=now + 60)  # eta - vt + grace is below its delivery
        done = _msg("done", "held", delivered=now + 7200 - VT + 60, eta=now + 7200)
        running = _msg("run", "running", delivered=now - 5000)
        planned = guards.plan(_report(now, far, near, done, running), "eta", grace=60.0)
        assert planned == [guards.Planned("far", "id-far", now - 10, now + 7200 - VT + 60)]

    def test_running_guard_sets_now_on_running_messages_only(self) -> None:
        now = 10_000.0
        running = _msg("run", "running", delivered=now - 5000)
        fresh = _msg("fresh", "running", delivered=now)  # already at now: nothing to raise
        ahead = _msg("ahead", "running", delivered=now + 50)  # a clock ahead of ours: never lowered
        held = _msg("held", "held", delivered=now - 10, eta=now + 7200)
        planned = guards.plan(_report(now, running, fresh, ahead, held), "running", grace=60.0)
        assert planned == [guards.Planned("run", "id-run", now - 5000, now)]

    def test_held_without_eta_is_skipped(self) -> None:
        odd = dataclasses.replace(_msg("x", "held", delivered=1.0), eta=None)
        assert guards.plan(_report(10.0, odd), "eta", grace=60.0) == []


class TestWiring:
    def test_guards_are_off_by_default_and_leader_only(self) -> None:
        base = {"JANITOR_REDIS_URL": "redis://127.0.0.1:1/0"}
        names = {j.name for j in for_settings(config.load(base))}
        assert not names & {"eta_guard", "running_guard"}
        on = config.load(base | {"JANITOR_ETA_GUARD": "true", "JANITOR_RUNNING_GUARD": "true"})
        jobs = {j.name: j for j in for_settings(on)}
        assert jobs["eta_guard"].leader_only
        assert jobs["running_guard"].leader_only
        assert jobs["eta_guard"].interval(on) == on.guard_interval == 30.0
        assert on.eta_guard_grace == 60.0

    def test_warns_at_start_when_the_interval_cannot_keep_up(self) -> None:
        """A guard interval over a third of the visibility timeout is named, with the setting to lower."""
        base = {"JANITOR_REDIS_URL": "redis://127.0.0.1:1/0", "JANITOR_RUNNING_GUARD": "true"}
        with structlog.testing.capture_logs() as slow:
            for_settings(config.load(base | {"JANITOR_VISIBILITY_TIMEOUT": "60", "JANITOR_GUARD_INTERVAL": "30"}))
        with structlog.testing.capture_logs() as fine:
            for_settings(config.load(base | {"JANITOR_VISIBILITY_TIMEOUT": "60", "JANITOR_GUARD_INTERVAL": "20"}))
        (warning,) = [e for e in slow if e["event"] == "guard.interval_too_long"]
        assert warning["guard"] == "running"
        assert "JANITOR_GUARD_INTERVAL to at most 20" in warning["fix"]
        assert not [e for e in fine if e["event"] == "guard.interval_too_long"]


class TestDiagnoseRecommendsTheGuards:
    def test_eta_beyond_visibility_names_the_eta_guard(self) -> None:
        report = BrokerReport(now=5000.0, visibility_timeout=VT, max_eta_delay_s=7200.0)
        (f,) = findings.eta_beyond_visibility(Inputs(None, broker=report, visibility_timeout=VT))
        assert "JANITOR_ETA_GUARD=true" in f.fix

    def test_running_overdue_names_the_running_guard(self) -> None:
        report = BrokerReport(now=9000.0, visibility_timeout=VT)
        report.overdue_running = [dataclasses.replace(_msg("a", "running", 1000.0), worker="w1@h")]
        (f,) = findings.running_overdue(Inputs(None, broker=report))
        assert "JANITOR_RUNNING_GUARD=true" in f.fix
