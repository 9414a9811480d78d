"""The command line as a user runs it: exit codes, output, secrets."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading

import pytest
import redis

from janitor import cli, demo, embedded


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.endswith("REDIS_URL") and not k.startswith("JANITOR_")}
    return subprocess.run(
        [sys.executable, "-m", "janitor", *args],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestSweepCommand:
    def test_json_summary(self, server: embedded.Server, client: redis.Redis) -> None:
        """`sweep --json` prints one JSON document with the counts and the commands sent."""
        demo.fill(client, results=500)
        proc = _run("sweep", "--json", env={"JANITOR_REDIS_URL": server.url})
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert summary["completed"] is True
        assert summary["deleted"]["task"] > 0
        assert summary["commands_total"] == sum(summary["commands"].values())

    def test_dry_run_flag(self, server: embedded.Server, client: redis.Redis) -> None:
        """`--dry-run` reports deletions but the keys are still there."""
        demo.fill(client, results=300)
        before = client.dbsize()
        proc = _run("sweep", "--dry-run", "--json", env={"JANITOR_REDIS_URL": server.url})
        assert json.loads(proc.stdout)["deleted"]["task"] > 0
        assert client.dbsize() == before

    def test_unreachable_redis_exit_2_password_masked(self) -> None:
        """An unreachable Redis exits 2 with one line naming the setting; the password appears nowhere."""
        url = f"redis://janitor:Sup3rS3cret@127.0.0.1:{embedded.free_port()}/0"
        proc = _run("sweep", env={"REDIS_URL": url})
        assert proc.returncode == cli.EXIT_UNREACHABLE
        assert "REDIS_URL" in proc.stderr
        assert "cannot reach Redis" in proc.stderr
        assert "Sup3rS3cret" not in proc.stderr + proc.stdout

    def test_a_port_that_is_not_redis_is_one_line(self) -> None:
        """A URL pointing at an HTTP server (a wrong port, a proxy): exit 2, one line, no traceback."""
        with http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler) as httpd:
            threading.Thread(target=httpd.serve_forever, daemon=True).start()
            proc = _run("sweep", env={"REDIS_URL": f"redis://:Sup3rS3cret@127.0.0.1:{httpd.server_address[1]}/0"})
            httpd.shutdown()
        assert proc.returncode == cli.EXIT_UNREACHABLE, proc.stderr
        assert "does not speak the Redis protocol" in proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert "Sup3rS3cret" not in proc.stderr + proc.stdout

    def test_wrong_password_is_named(self, tmp_path: object) -> None:
        """A server that refuses the password gives 'authentication failed', not a stack trace."""
        with embedded.running("", "--requirepass", "right-one") as srv:
            proc = _run("sweep", env={"JANITOR_REDIS_URL": f"redis://:WrongPass99@127.0.0.1:{srv.port}/0"})
        assert proc.returncode == cli.EXIT_UNREACHABLE
        assert "authentication failed" in proc.stderr
        assert "WrongPass99" not in proc.stderr + proc.stdout
        assert "Traceback" not in proc.stderr

    def test_no_url(self) -> None:
        """Without any URL the user is told which variable to set."""
        proc = _run("sweep", env={})
        assert proc.returncode == cli.EXIT_UNREACHABLE
        assert "JANITOR_REDIS_URL" in proc.stderr

    def test_bad_setting(self) -> None:
        """A bad setting is one line naming it."""
        proc = _run("sweep", env={"JANITOR_SCAN_COUNT": "lots"})
        assert proc.returncode == cli.EXIT_UNREACHABLE
        assert proc.stderr.count("\n") == 1
        assert "JANITOR_SCAN_COUNT" in proc.stderr


class TestOtherVerbs:
    def test_config_masks_password(self) -> None:
        """`config` prints the effective settings with the password masked and the URL's source."""
        proc = _run("config", env={"UPSTASH_REDIS_URL": "rediss://default:tok3n@x.upstash.io:6379"})
        shown = json.loads(proc.stdout)
        assert shown["redis_url"] == "rediss://default:***@x.upstash.io:6379"
        assert shown["redis_url_source"] == "UPSTASH_REDIS_URL"
        assert "tok3n" not in proc.stdout

    def test_demo(self) -> None:
        """`demo` starts its own server, sweeps a dirty keyspace and leaves no Celery key without TTL."""
        proc = _run("demo", "--results", "2000", env={})
        assert proc.returncode == 0, proc.stderr
        assert "Celery keys without a TTL after the sweep: 0" in proc.stdout

    @pytest.mark.parametrize("verb", [[], ["sweep"], ["run"], ["demo"]])
    def test_help_has_examples(self, verb: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        """Every help page reads well and the top one shows examples."""
        with pytest.raises(SystemExit) as info:
            cli.main([*verb, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "usage: celery-janitor" in out
        if not verb:
            assert "examples:" in out
