"""Queue browse, the undoable purge, dead letters, backlog and head wait: real servers, real Celery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from janitor import cli, config
from janitor.dev import embedded
from janitor.operations import broker, dead_letters, queues
from janitor.redis_io import scripts
from janitor.redis_io.heartbeats import WorkerTracker
from janitor.redis_io.lease import Lease
from janitor.service.jobs.base import Context
from janitor.service.jobs.broker import BrokerJob
from janitor.service.metrics import Metrics, Seen
from janitor.service.status_book import StatusBook
from tests import broker_app
from tests.support import ROOT, wait_for
from tests.support.celery import celery_worker, deliver_without_ack, janitor_settings, producer, snapshot


def fresh(name: str) -> str:
    """A queue name not yet declared by this process (kombu binds a queue once per process); it contains
    'celery', so docs/acl.md's janitor grant covers writing it."""
    return f"celery.{name}.{uuid.uuid4().hex[:6]}"


def ids_in(client: redis.Redis, key: str) -> list[str]:
    return [json.loads(m)["headers"]["id"] for m in client.lrange(key, 0, -1)]


def executions(client: redis.Redis) -> dict[str, int]:
    """Task id -> how many times a worker completed it (tests.broker_app counts each)."""
    keys = [k.decode() if isinstance(k, bytes) else str(k) for k in client.keys("test:done:*")]
    return {k.removeprefix("test:done:"): int(client.get(k) or 0) for k in keys}


def publish(url: str, queue: str, plan: list[tuple[str, int, int]], **headers: Any) -> list[str]:
    """``plan``: (task name, priority, how many); returns the task ids, in publish order."""
    app = producer(url)
    ids = []
    with app.producer_pool.acquire(block=True) as prod:
        for name, priority, n in plan:
            for _ in range(n):
                args = (0.0,) if name == "broker_app.work" else ()
                ids.append(app.send_task(name, args, queue=queue, priority=priority, producer=prod, headers=headers).id)
    return ids


# -- queues --------------------------------------------------------------------
class TestBrowse:
    def test_tally_by_priority_and_task(
        self, client: redis.Redis, settings: config.Settings, server: embedded.Server
    ) -> None:
        """Each priority list is tallied by task name with positions from the head; the bindings name the queue."""
        q = fresh("browse")
        publish(server.url, q, [("app.report", 0, 3), ("app.mail", 0, 2), ("app.report", 6, 4), ("app.urgent", 9, 1)])
        tally = scripts.ReadOnlyTally()
        seen = queues.browse(client, settings.model_copy(update={"unacked_page": 10}), now=time.time(), tally=tally)

        views = {v.priority: v for v in seen.queues[q]}
        assert {p: v.waiting for p, v in views.items()} == {0: 5, 6: 4, 9: 1}
        rows = {p: {t.task: (t.count, t.first_position, t.last_position) for t in v.tasks} for p, v in views.items()}
        # Published report x3 then mail x2: kombu consumes the right end, so report is at the head (0..2).
        assert rows[0] == {"app.report": (3, 0, 2), "app.mail": (2, 3, 4)}
        assert rows[6] == {"app.report": (4, 0, 3)}
        assert rows[9] == {"app.urgent": (1, 0, 0)}
        assert all(t.oldest_age_s is None for v in views.values() for t in v.tasks)  # stock Celery stamps none
        assert set(tally.commands) <= {"EVALSHA_RO", "SCRIPT LOAD", "SCAN", "SSCAN"}

    def test_pages_and_stamps(self, client: redis.Redis, settings: config.Settings, server: embedded.Server) -> None:
        """A list longer than a page is tallied across pages; a publisher's timestamp gives ages."""
        q = fresh("pages")
        stamp = time.time() - 100
        publish(server.url, q, [("app.a", 0, 25), ("app.b", 0, 12)], timestamp=stamp)
        seen = queues.browse(client, settings.model_copy(update={"unacked_page": 10}), now=stamp + 100, queues=[q])
        (view,) = seen.queues[q]
        rows = {t.task: t for t in view.tasks}
        assert (rows["app.a"].count, rows["app.a"].first_position, rows["app.a"].last_position) == (25, 0, 24)
        assert (rows["app.b"].count, rows["app.b"].first_position, rows["app.b"].last_position) == (12, 25, 36)
        assert rows["app.a"].oldest_age_s == pytest.approx(100, abs=0.01)

    def test_cli_text_and_json(
        self, client: redis.Redis, server: embedded.Server, capsys: pytest.CaptureFixture[str]
    ) -> None:
        q = fresh("cli")
        publish(server.url, q, [("app.report", 0, 2), ("app.urgent", 9, 1)])
        env = {"JANITOR_REDIS_URL": server.url}
        assert cli.main(["queues"], env) == 0
        text = capsys.readouterr().out
        assert f"{q}: 3 waiting" in text
        assert "app.urgent  positions 0..0" in text
        assert cli.main(["queues", "--json", "--queue", q], env) == 0
        doc = json.loads(capsys.readouterr().out)
        assert [(x["name"], x["waiting"]) for x in doc["queues"]] == [(q, 3)]


# -- purge and dead letters ----------------------------------------------------
class TestPurge:
    def test_purge_by_task_then_replay(
        self, client: redis.Redis, settings: config.Settings, server: embedded.Server
    ) -> None:
        """Only the named task moves, to janitor.dead.<queue>, oldest first; replay puts each back in its
        priority list, byte for byte; list shows why and when."""
        q = fresh("undo")
        publish(server.url, q, [("app.report", 0, 15), ("app.mail", 0, 5), ("app.report", 6, 7)])
        keys = broker.BrokerKeys.of(settings)
        before = {k: client.lrange(k, 0, -1) for k in keys.sublists(q)}
        small = settings.model_copy(update={"unacked_page": 10})

        done = queues.purge(client, small, queue=q, now=1000.0, dry_run=False, task="app.report")

        assert (done.total, dict(done.moved)) == (22, {"app.report": 22})
        assert client.llen(q) == 5
        assert client.llen(keys.q_for_pri(q, 6)) == 0
        assert client.llen(keys.dead_list(q)) == 22
        rows, lengths = dead_letters.listing(
            client, small, queues=[q], now=1030.0, limit=50, tally=scripts.ReadOnlyTally()
        )
        assert lengths == {q: 22}
        assert {(r.task_name, r.reason, r.age_s) for r in rows} == {("app.report", "purged", 30.0)}

        back = dead_letters.move(client, small, action=scripts.Move.REPLAY, queues=[q], dry_run=False)
        assert back.total == 22
        assert client.llen(keys.dead_list(q)) == 0
        assert client.hlen(dead_letters.record_key(keys, q)) == 0
        after = {k: client.lrange(k, 0, -1) for k in keys.sublists(q)}
        assert {k: sorted(v) for k, v in after.items()} == {k: sorted(v) for k, v in before.items()}

    def test_older_than_needs_a_stamp(
        self, client: redis.Redis, settings: config.Settings, server: embedded.Server
    ) -> None:
        """--older-than moves stamped messages past the age, leaves younger ones and unstamped ones (counted)."""
        q = fresh("age")
        publish(server.url, q, [("app.old", 0, 3)], timestamp=1000.0)
        publish(server.url, q, [("app.new", 0, 2)], timestamp=1900.0)
        publish(server.url, q, [("app.plain", 0, 4)])
        done = queues.purge(client, settings, queue=q, now=2000.0, dry_run=False, older_than=600)
        assert (dict(done.moved), done.unstamped) == ({"app.old": 3}, 4)
        assert client.llen(q) == 6

    def test_dry_runs_write_nothing(
        self, client: redis.Redis, settings: config.Settings, server: embedded.Server
    ) -> None:
        """purge, replay and drop dry runs report what would move and leave every key as it was."""
        q = fresh("dry")
        publish(server.url, q, [("app.a", 0, 12), ("app.b", 3, 4)])
        queues.purge(client, settings, queue=q, now=1000.0, dry_run=False, task="app.b")
        before = snapshot(client)
        small = settings.model_copy(update={"unacked_page": 10})
        purge = queues.purge(client, small, queue=q, now=1000.0, dry_run=True)
        replay = dead_letters.move(client, small, action=scripts.Move.REPLAY, queues=[q], dry_run=True)
        drop = dead_letters.move(client, small, action=scripts.Move.DROP, queues=[q], dry_run=True, limit=3)
        assert snapshot(client) == before
        assert (dict(purge.moved), replay.total, drop.total) == ({"app.a": 12}, 4, 3)
        assert "EVALSHA" not in purge.tally.commands  # EVALSHA_RO only: Redis refuses any write

    def test_drop_and_trim(self, client: redis.Redis, settings: config.Settings, server: embedded.Server) -> None:
        """drop deletes the oldest N; trimming keeps JANITOR_DEAD_MAX and drops what is past JANITOR_DEAD_MAX_AGE."""
        q = fresh("trim")
        ids = publish(server.url, q, [("app.a", 0, 10)])
        keys = broker.BrokerKeys.of(settings)
        queues.purge(client, settings, queue=q, now=1000.0, dry_run=False)
        gone = dead_letters.move(client, settings, action=scripts.Move.DROP, queues=[q], dry_run=False, limit=2)
        assert gone.total == 2
        assert ids_in(client, keys.dead_list(q))[::-1] == ids[2:]  # the oldest two went
        capped = settings.model_copy(update={"dead_max": 5})
        tally = scripts.Tally()
        assert dead_letters.trim(client, capped, queues=[q], now=1100.0, tally=tally) == {q: 3}
        assert ids_in(client, keys.dead_list(q))[::-1] == ids[5:]
        aged = settings.model_copy(update={"dead_max_age": 600})
        assert dead_letters.trim(client, aged, queues=[q], now=1500.0, tally=tally) == {}
        assert dead_letters.trim(client, aged, queues=[q], now=1700.0, tally=tally) == {q: 5}
        assert client.llen(keys.dead_list(q)) == 0
        assert client.hlen(dead_letters.record_key(keys, q)) == 0


class Unhurried(scripts.Tally):
    """Pauses before each script call, so the worker pops messages between the purge's pages."""

    def run(self, client: redis.Redis, script: scripts.Script, keys: list[bytes], args: list[Any]) -> Any:
        time.sleep(0.05)
        return super().run(client, script, keys, args)


class TestWithWorkers:
    """A real worker consumes while the janitor purges and replays: every message runs once or is dead."""

    def test_purge_racing_a_consumer(self, client: redis.Redis, server: embedded.Server) -> None:
        total = 600
        ids = publish(server.url, "celery", [("broker_app.work", 0, total)])
        settings = janitor_settings(server.url, unacked_page="10")
        keys = broker.BrokerKeys.of(settings)
        with celery_worker(server.url, "race@%h", concurrency=4):
            wait_for(lambda: len(client.keys("test:done:*")) >= 20, timeout=60)
            done = queues.purge(client, settings, queue="celery", now=time.time(), dry_run=False, tally=Unhurried())
            wait_for(lambda: client.llen("celery") == 0 and client.hlen("unacked") == 0, timeout=120)
            time.sleep(1)
        executed = executions(client)
        dead = ids_in(client, keys.dead_list("celery"))
        assert done.total == len(dead) > 0
        assert set(executed.values()) == {1}  # none ran twice
        assert len(set(dead)) == len(dead)
        assert set(executed) & set(dead) == set()
        assert len(executed) + len(dead) + client.llen("celery") == total
        assert set(executed) | set(dead) == set(ids)

    def test_round_trip_runs_each_once(self, client: redis.Redis, server: embedded.Server) -> None:
        """purge -> janitor.dead.celery -> replay -> a worker runs every task exactly once."""
        client.set(broker_app.RELEASE_KEY, 1)
        ids = publish(server.url, "celery", [("broker_app.work", 0, 30), ("broker_app.hold", 6, 20)])
        settings = janitor_settings(server.url)
        keys = broker.BrokerKeys.of(settings)
        purged = queues.purge(client, settings, queue="celery", now=time.time(), dry_run=False)
        assert dict(purged.moved) == {"broker_app.work": 30, "broker_app.hold": 20}
        assert client.llen(keys.dead_list("celery")) == 50
        replayed = dead_letters.move(client, settings, action=scripts.Move.REPLAY, queues=["celery"], dry_run=False)
        assert replayed.total == 50
        assert (client.llen("celery"), client.llen(keys.q_for_pri("celery", 6))) == (30, 20)
        with celery_worker(server.url, "replay@%h", concurrency=4):
            wait_for(lambda: len(client.keys("test:done:*")) == 50, timeout=120)
            wait_for(lambda: client.hlen("unacked") == 0, timeout=60)
        executed = executions(client)
        assert executed == dict.fromkeys(ids, 1)
        assert client.llen(keys.dead_list("celery")) == 0


class TestConfirmation:
    def run_cli(self, url: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = os.environ | {"JANITOR_REDIS_URL": url}
        return subprocess.run(
            [sys.executable, "-m", "janitor", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def test_no_terminal_refuses_without_yes(self, client: redis.Redis, server: embedded.Server) -> None:
        """Off a terminal a moving verb refuses in one line, exit 2, nothing moved; --dry-run and --yes go on."""
        q = fresh("tty")
        publish(server.url, q, [("app.a", 0, 3)])
        before = snapshot(client)
        for verb in (["purge", "--queue", q], ["dead", "replay"], ["dead", "drop", "--queue", q]):
            done = self.run_cli(server.url, *verb)
            assert done.returncode == 2, done.stderr
            assert len(done.stderr.strip().splitlines()) == 1
            assert "--yes" in done.stderr
        assert snapshot(client) == before
        dry = self.run_cli(server.url, "purge", "--queue", q, "--dry-run")
        assert dry.returncode == 0
        assert "would be moved to janitor.dead." in dry.stdout
        assert snapshot(client) == before
        yes = self.run_cli(server.url, "purge", "--queue", q, "--yes", "--json")
        assert yes.returncode == 0, yes.stderr
        assert json.loads(yes.stdout.splitlines()[-1])["moved"] == 3
        assert client.llen(f"janitor.dead.{q}") == 3

    def test_terminal_asks_and_shows_what_will_move(self, client: redis.Redis, server: embedded.Server) -> None:
        """On a terminal, purge shows what would move and moves nothing unless the answer is yes."""
        q = fresh("ask")
        publish(server.url, q, [("app.a", 0, 2), ("app.b", 0, 1)])
        for answer, code, left in ((b"n\n", 1, 3), (b"y\n", 0, 0)):
            primary, secondary = os.openpty()
            with os.fdopen(primary, "wb", buffering=0) as typed:
                typed.write(answer)
                done = subprocess.run(
                    [sys.executable, "-m", "janitor", "purge", "--queue", q],
                    cwd=ROOT,
                    env=os.environ | {"JANITOR_REDIS_URL": server.url},
                    stdin=secondary,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
            os.close(secondary)
            assert done.returncode == code, done.stderr
            assert "would be moved to janitor.dead." in done.stdout
            assert "app.a" in done.stdout
            assert client.llen(q) == left


# -- backlog and head wait -----------------------------------------------------
class TestAutoscalerFigures:
    def test_backlog_and_head_wait(self, client: redis.Redis, server: embedded.Server) -> None:
        """backlog = waiting + unacked of the queue; head wait grows while one id stays at the head, by the
        injected clock, and starts again when the head moves on. Exported by the broker job's report."""
        settings = janitor_settings(server.url)
        publish(server.url, "celery", [("app.a", 0, 5)])
        q2 = fresh("other")
        publish(server.url, q2, [("app.b", 0, 2)])
        deliver_without_ack(server.url, 2)  # two delivered, not acked: prefetched or running
        queues.purge(client, settings, queue=q2, now=900.0, dry_run=False, task="app.b")
        publish(server.url, q2, [("app.b", 0, 1)])
        clock = [1000.0]
        lease = Lease.for_prefix(client, "", ttl=30)
        lease.step()
        metrics = Metrics(CollectorRegistry())
        ctx = Context(
            settings=settings.model_copy(update={"queues": f"celery,{q2}"}),
            client=client,
            broker=client,
            lease=lease,
            metrics=metrics,
            book=StatusBook(settings),
            workers=WorkerTracker(),
            clock=lambda: clock[0],
        )
        job = BrokerJob(ctx.settings)
        job.run(ctx)
        clock[0] = 1045.0
        job.run(ctx)
        text = generate_latest(metrics.registry).decode()
        assert 'janitor_queue_backlog{queue_name="celery"} 5.0' in text
        assert f'janitor_queue_backlog{{queue_name="{q2}"}} 1.0' in text
        assert 'janitor_unacked_messages_by_queue{queue_name="celery",state="active"} 2.0' in text
        assert 'janitor_queue_head_wait_seconds{queue_name="celery"} 45.0' in text
        assert f'janitor_dead_letters{{queue="{q2}"}} 2.0' in text
        assert 'janitor_unacked_messages{state="active"} 2.0' in text  # the old series stays
        deliver_without_ack(server.url, 1)  # the head is taken: the next message starts its wait
        clock[0] = 1100.0
        job.run(ctx)
        text = generate_latest(metrics.registry).decode()
        assert 'janitor_queue_head_wait_seconds{queue_name="celery"} 0.0' in text
        assert 'janitor_queue_backlog{queue_name="celery"} 5.0' in text
        lease.release()

    def test_head_watch_is_pure(self) -> None:
        watch = queues.HeadWatch()

        def report(now: float, head: str) -> broker.BrokerReport:
            r = broker.BrokerReport(now=now, visibility_timeout=60)
            r.queues = [broker.QueueDepth("q", 1 if head else 0, {}, None, head)]
            return r

        assert watch.observe(report(0, "a")) == {"q": 0}
        assert watch.observe(report(30, "a")) == {"q": 30}
        assert watch.observe(report(50, "b")) == {"q": 0}
        assert watch.observe(report(60, "")) == {"q": 0}
        assert watch.observe(report(70, "b")) == {"q": 0}
        seen = Seen()
        r = report(80, "b")
        r.head_wait_s = {"q": 12.5}
        seen.update(broker=r)
        names = {m.name: m for m in seen.collect()}
        assert names["janitor_queue_head_wait_seconds"].samples[0].value == 12.5
