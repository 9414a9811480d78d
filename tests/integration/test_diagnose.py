"""`celery-janitor diagnose` on real servers: numbers, findings, exit codes, and that it never writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
import redis
from celery import Celery

from janitor import config
from janitor.dev import demo, embedded
from janitor.errors import Exit
from janitor.operations.sweep import sweep
from janitor.reports import diagnose
from tests.support import ROOT, wait_for

ARTIFACTS = ROOT / "artifacts"


def _env(url: str, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.endswith("REDIS_URL") and not k.startswith("JANITOR_")}
    return base | {"JANITOR_REDIS_URL": url, "JANITOR_LOG_FORMAT": "json"} | extra


def _diagnose(url: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "janitor", "diagnose", *args],
        env=_env(url, **extra),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def _json(url: str, *args: str) -> tuple[int, dict[str, Any]]:
    proc = _diagnose(url, "--json", *args)
    assert proc.returncode != Exit.UNREACHABLE, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def _codes(doc: dict[str, Any]) -> dict[str, str]:
    return {f["code"]: f["severity"] for f in doc["findings"]}


class TestDirtyKeyspace:
    def test_json_numbers_match_what_was_written(self, server: embedded.Server, client: redis.Redis) -> None:
        """Counts per category equal what demo.fill wrote; queues and unacked are measured; warnings exit 0."""
        written = demo.fill(client, results=1000)
        code, doc = _json(server.url, "--listen", "0")
        assert code == Exit.OK  # only warnings: nothing loses work right now
        cats = doc["keyspace"]["categories"]
        for family, n in written.items():
            if family.startswith("result:"):
                assert cats[f"task:{family.split(':')[1]}"]["keys"] == n
        assert cats["group"]["keys"] == written["group"]
        assert cats["pidbox_reply"]["without_ttl"] == written["pidbox_reply"]
        assert cats["other"]["keys"] == written["other"]
        assert cats["queue"]["keys"] == 1
        assert cats["unacked"]["keys"] == 2
        assert doc["keyspace"]["total"] == doc["keyspace"]["dbsize"] == client.dbsize()
        assert sum(doc["keyspace"]["result_age"].values()) > 0
        assert cats["task:SUCCESS"]["est_bytes"] > 0
        assert doc["broker"]["queues"] == [
            {"name": "celery", "total": 40, "by_priority": {"0": 40}, "oldest_age_s": None}
        ]
        assert doc["broker"]["unacked_total"] == 10
        codes = _codes(doc)
        for expected in ("results_without_ttl", "groups_without_ttl", "leaked_pidbox_replies", "no_beat_keys"):
            assert expected in codes
        no_ttl = sum(c["without_ttl"] for k, c in cats.items() if k.startswith("task:"))
        titles = [f["title"] for f in doc["findings"]]
        assert any(t.startswith(f"{no_ttl:,} result keys have no TTL (") for t in titles)
        assert doc["summary"]["exit_code"] == 0
        assert doc["connection"]["source"] == "JANITOR_REDIS_URL"
        assert doc["connection"]["server"] == ("Valkey" if server.engine == "valkey" else "Redis")
        assert doc["connection"]["role"] == "primary"
        assert doc["keyspace"]["commands"].get("EVALSHA_RO", 0) > 0

    def test_broker_on_another_database(self, server: embedded.Server, client: redis.Redis) -> None:
        """CELERY_BROKER_URL on db 0, CELERY_RESULT_BACKEND on db 1: the census counts db 1's results, the
        broker checks read db 0's queue, and both URLs are shown, masked."""
        base = server.url.rsplit("/", 1)[0]
        results = redis.Redis.from_url(f"{base}/1")
        written = demo.fill(results, results=200)
        app = Celery("producer", broker=f"{base}/0", backend=f"{base}/1", set_as_current=False)
        for _ in range(5):
            app.send_task("app.t")
        # JANITOR_QUEUES: kombu's process-wide connection pool may have declared the queue (its binding)
        # for an earlier test on this server, flushed since.
        env = {"CELERY_BROKER_URL": f"{base}/0", "CELERY_RESULT_BACKEND": f"{base}/1", "JANITOR_QUEUES": "celery"}
        proc = subprocess.run(
            [sys.executable, "-m", "janitor", "diagnose", "--json", "--listen", "0"],
            env=_env("", **env),
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        doc = json.loads(proc.stdout)
        assert doc["connection"]["source"] == "CELERY_RESULT_BACKEND"
        assert doc["connection"]["db"] == 1
        assert (doc["connection"]["broker_url"], doc["connection"]["broker_source"]) == (
            f"{base}/0",
            "CELERY_BROKER_URL",
        )
        assert doc["keyspace"]["categories"]["task:SUCCESS"]["keys"] == written["result:SUCCESS"]
        queues = {q["name"]: q["total"] for q in doc["broker"]["queues"]}
        assert queues["celery"] == 5  # db 0's, not the 40 demo.fill queued in db 1
        results.close()

    def test_kombu_reply_binding_is_not_a_reply_list(self, server: embedded.Server, client: redis.Redis) -> None:
        """A control client's reply queue (declared as ``celery inspect`` does, then left by a client that
        died) is kombu's ``_kombu.binding.reply.celery.pidbox`` set: a binding, not a leaked reply list, so
        no finding advises a sweep for it and a sweep skips nothing."""
        app = Celery("control", broker=server.url, set_as_current=False)
        with app.connection_for_write() as conn:
            app.control.mailbox(conn).reply_queue(conn.default_channel).declare()
        assert client.type("_kombu.binding.reply.celery.pidbox") == b"set"
        _, doc = _json(server.url, "--listen", "0")
        assert "leaked_pidbox_replies" not in _codes(doc)
        assert doc["keyspace"]["categories"].get("pidbox_reply", {}).get("keys", 0) == 0
        report = sweep(client, config.load({"JANITOR_REDIS_URL": server.url}))
        assert dict(report.skipped) == {}

    def test_text_report(self, server: embedded.Server, client: redis.Redis) -> None:
        """The text report has the sections, the keyspace table, the queue and each finding with its fix."""
        demo.fill(client, results=500)
        proc = _diagnose(server.url, "--listen", "0")
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        for needle in ("Connection", "Memory", "Keyspace", "Broker", "Findings", "results by age (date_done)"):
            assert needle in out
        assert "queue      celery: 40 waiting (p0: 40)" in out
        assert "result keys have no TTL" in out
        assert "fix:  set `result_expires`" in out
        assert "workers    not checked (--listen 0)" in out

    def test_no_worker_and_waiting_messages_exit_1(self, server: embedded.Server, client: redis.Redis) -> None:
        """Messages waiting and no heartbeat heard is an error: exit 1."""
        demo.fill(client, results=100)
        code, doc = _json(server.url, "--listen", "4", "--sample", "0")
        assert _codes(doc)["no_worker_heartbeat"] == "error"
        assert doc["workers"] == {"listened_s": pytest.approx(4, abs=0.6), "alive": []}
        assert code == Exit.FINDINGS
        assert doc["keyspace"]["commands"].get("MEMORY USAGE", 0) == 0  # --sample 0: no sizes


class TestCleanKeyspace:
    def test_after_sweep_no_result_findings(self, server: embedded.Server, client: redis.Redis) -> None:
        """After a sweep (and with the broker drained) diagnose finds nothing to fix in the results: exit 0."""
        demo.fill(client, results=500)
        client.delete("celery", "unacked", "unacked_index")
        sweep(client, config.load({"JANITOR_REDIS_URL": server.url}))
        code, doc = _json(server.url, "--listen", "0")
        assert code == 0
        assert set(_codes(doc)) <= {"no_beat_keys"}
        assert doc["keyspace"]["result_ttl"]["none"] == 0


class TestServerSettings:
    def test_allkeys_policy_is_an_error(self, server: embedded.Server) -> None:
        """A server that may evict queues (allkeys-lru with a maxmemory) exits 1 naming noeviction."""
        with embedded.running(server.engine, "--maxmemory-policy", "allkeys-lru", "--maxmemory", "64mb") as srv:
            code, doc = _json(srv.url, "--listen", "0")
        assert code == Exit.FINDINGS
        (f,) = [f for f in doc["findings"] if f["code"] == "eviction_policy_unsafe"]
        assert f["severity"] == "error"
        assert "noeviction" in f["fix"]
        assert doc["memory"]["policy"] == "allkeys-lru"
        assert doc["memory"]["maxmemory"] == 64 * 1024 * 1024

    def test_unreachable_exit_2(self) -> None:
        """An unreachable server exits 2 with one masked line, no traceback."""
        url = f"redis://u:Sekr1t@127.0.0.1:{embedded.free_port()}/0"
        proc = _diagnose(url)
        assert proc.returncode == Exit.UNREACHABLE
        assert "cannot reach Redis" in proc.stderr
        assert "Sekr1t" not in proc.stderr + proc.stdout
        assert "Traceback" not in proc.stderr


class TestReadOnly:
    def test_commandstats_show_no_write(self, server: embedded.Server, client: redis.Redis) -> None:
        """Every command diagnose sends (scripts' inner commands included) is one the server flags read-only."""
        demo.fill(client, results=500)
        client.config_resetstat()
        settings = config.load({"JANITOR_REDIS_URL": server.url})
        with redis.Redis.from_url(server.url) as own:
            diagnose.collect(own, settings, sample=10, listen_s=0.5, progress=False)
        names = [k.removeprefix("cmdstat_") for k in client.info("commandstats")]
        flags = client.execute_command("COMMAND", "INFO", *names)
        writes = [n for n in names if "write" in flags[n]["flags"]]
        assert writes == []
        assert "evalsha_ro" in names
        assert "evalsha" not in names

    def test_runs_as_a_user_without_write_commands(self, server: embedded.Server, client: redis.Redis) -> None:
        """An ACL user denied every write command and EVAL/EVALSHA gets the full report."""
        demo.fill(client, results=300)
        client.acl_setuser(
            "diag",
            enabled=True,
            passwords=["+diag-pass"],
            keys=["~*"],
            channels=["&*"],
            commands=["+@all", "-@write", "-@admin", "-eval", "-evalsha", "-fcall"],
        )
        try:
            code, doc = _json(f"redis://diag:diag-pass@127.0.0.1:{server.port}/0", "--listen", "0")
        finally:
            client.acl_deluser("diag")
        assert code == 0
        assert doc["connection"]["acl_user"] == "diag"
        assert doc["connection"]["url"] == f"redis://diag:***@127.0.0.1:{server.port}/0"
        assert doc["keyspace"]["total"] == doc["keyspace"]["dbsize"]
        assert doc["broker"] is not None
        assert doc["broker"]["unacked_total"] == 10


@pytest.mark.celery
class TestRealCelery:
    def test_worker_keyspace(self) -> None:
        """A real worker with result_expires=None: results without TTL, the worker heard, an ETA past the
        visibility timeout flagged as an error; after the worker stops, 'no worker heartbeat'."""
        pytest.importorskip("celery")
        with embedded.running("redis") as srv:
            env = _env(srv.url, DIAG_APP_URL=srv.url)
            worker = subprocess.Popen(
                [
                    *(sys.executable, "-m", "celery", "-A", "tests.diag_app", "worker", "-P", "solo", "-n", "diag@%h"),
                    *("--loglevel", "warning", "--without-mingle", "--without-gossip"),
                ],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                os.environ["DIAG_APP_URL"] = srv.url
                from tests import diag_app

                diag_app.app.conf.broker_url = diag_app.app.conf.result_backend = srv.url
                results = [diag_app.add.delay(i, i) for i in range(20)] + [diag_app.fail.delay() for _ in range(3)]
                for r in results:
                    r.get(timeout=60, propagate=False)
                diag_app.add.apply_async((1, 1), countdown=7200)  # held in unacked by the worker
                client = srv.client()
                wait_for(lambda: client.zcard("unacked_index") == 1, 30, "the worker to take the message")
                code, doc = _json(srv.url, "--listen", "3")
                text = _diagnose(srv.url, "--listen", "3")
                ARTIFACTS.mkdir(exist_ok=True)
                (ARTIFACTS / "diagnose-real-celery.txt").write_text(text.stdout)
            finally:
                worker.terminate()
                try:
                    worker.wait(20)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
            cats = doc["keyspace"]["categories"]
            assert cats["task:SUCCESS"]["without_ttl"] == 20
            assert cats["task:FAILURE"]["without_ttl"] == 3
            codes = _codes(doc)
            assert codes["results_without_ttl"] == "warning"
            assert codes["eta_beyond_visibility_timeout"] == "error"
            assert "no_worker_heartbeat" not in codes
            assert any(h.startswith("diag@") for h in doc["workers"]["alive"])
            assert doc["broker"]["by_state"]["held"] == 1
            assert code == Exit.FINDINGS
            assert "23 result keys have no TTL (100%)" in text.stdout
            assert "tasks will run twice" in text.stdout
            code, doc = _json(srv.url, "--listen", "2")
            assert "no_worker_heartbeat" in _codes(doc)
