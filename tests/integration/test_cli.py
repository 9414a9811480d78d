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

from janitor import config
from janitor.dev import demo, embedded
from janitor.errors import Exit


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

    @pytest.mark.parametrize("dry_run", [True, False])
    def test_summary_on_piped_stdout(self, dry_run: bool, server: embedded.Server, client: redis.Redis) -> None:
        """Off a terminal (cron, CI, `| tee`) the human summary still goes to stdout; the JSON log line to stderr."""
        demo.fill(client, results=300)
        proc = _run("sweep", *(["--dry-run"] if dry_run else []), env={"JANITOR_REDIS_URL": server.url})
        assert proc.returncode == 0, proc.stderr
        assert "sweep complete:" in proc.stdout
        assert "kind / reason" in proc.stdout
        assert ("would delete" if dry_run else "deleted") in proc.stdout
        assert ("dry run: nothing was written" in proc.stdout) is dry_run
        assert '"event": "sweep.finished"' in proc.stderr
        assert "sweep.finished" not in proc.stdout

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
        assert proc.returncode == Exit.UNREACHABLE
        assert "REDIS_URL" in proc.stderr
        assert "cannot reach Redis" in proc.stderr
        assert "Sup3rS3cret" not in proc.stderr + proc.stdout

    def test_a_port_that_is_not_redis_is_one_line(self) -> None:
        """A URL pointing at an HTTP server (a wrong port, a proxy): exit 2, one line, no traceback."""
        with http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler) as httpd:
            threading.Thread(target=httpd.serve_forever, daemon=True).start()
            proc = _run("sweep", env={"REDIS_URL": f"redis://:Sup3rS3cret@127.0.0.1:{httpd.server_address[1]}/0"})
            httpd.shutdown()
        assert proc.returncode == Exit.UNREACHABLE, proc.stderr
        assert "does not speak the Redis protocol" in proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert "Sup3rS3cret" not in proc.stderr + proc.stdout

    def test_wrong_password_is_named(self, tmp_path: object) -> None:
        """A server that refuses the password gives 'authentication failed', not a stack trace."""
        with embedded.running("", "--requirepass", "right-one") as srv:
            proc = _run("sweep", env={"JANITOR_REDIS_URL": f"redis://:WrongPass99@127.0.0.1:{srv.port}/0"})
        assert proc.returncode == Exit.UNREACHABLE
        assert "authentication failed" in proc.stderr
        assert "WrongPass99" not in proc.stderr + proc.stdout
        assert "Traceback" not in proc.stderr

    def test_no_url(self) -> None:
        """Without any URL the user is told which variable to set."""
        proc = _run("sweep", env={})
        assert proc.returncode == Exit.UNREACHABLE
        assert "JANITOR_REDIS_URL" in proc.stderr

    def test_bad_setting(self) -> None:
        """A bad setting is one line naming it."""
        proc = _run("sweep", env={"JANITOR_SCAN_COUNT": "lots"})
        assert proc.returncode == Exit.UNREACHABLE
        assert proc.stderr.count("\n") == 1
        assert "JANITOR_SCAN_COUNT" in proc.stderr


class TestConfigCommand:
    def test_masks_password_under_the_urls_variable(self) -> None:
        """The URL is shown masked, under the variable it was read from."""
        proc = _run("config", env={"UPSTASH_REDIS_URL": "rediss://default:tok3n@x.upstash.io:6379"})
        assert proc.returncode == 0, proc.stderr
        shown = json.loads(proc.stdout)
        assert shown["UPSTASH_REDIS_URL"] == "rediss://default:***@x.upstash.io:6379"
        assert "JANITOR_REDIS_URL" not in shown
        assert "tok3n" not in proc.stdout
        env = {"REDIS_URL": "redis://:r3sults@h:6379/0", "JANITOR_BROKER_URL": "redis://:br0ker@b:6379/1"}
        proc = _run("config", env=env)
        shown = json.loads(proc.stdout)
        assert (shown["REDIS_URL"], shown["JANITOR_BROKER_URL"]) == ("redis://:***@h:6379/0", "redis://:***@b:6379/1")
        assert "r3sults" not in proc.stdout
        assert "br0ker" not in proc.stdout

    def test_keyed_by_the_variables_to_set(self) -> None:
        """Every key is a variable the user can set, with its typed value; the port under PORT when read from there."""
        env = {"REDIS_URL": "redis://h:6379/0", "JANITOR_RESULT_TTL": "3600", "PORT": "8080"}
        shown = json.loads(_run("config", env=env).stdout)
        assert shown["JANITOR_RESULT_TTL"] == 3600
        assert shown["JANITOR_FAILURE_TTL"] == 604800
        assert shown["PORT"] == 8080
        assert "JANITOR_METRICS_PORT" not in shown
        assert all(k.isupper() for k in shown), [k for k in shown if not k.isupper()]
        assert set(shown) - {"REDIS_URL", "PORT"} <= set(config.known_variables())

    def test_secrets_shown_as_set_or_unset(self) -> None:
        """JANITOR_STATUS_TOKEN and JANITOR_SENTINEL_PASSWORD appear as set or unset, never their value."""
        env = {"REDIS_URL": "redis://h:6379/0"}
        shown = json.loads(_run("config", env=env).stdout)
        assert (shown["JANITOR_STATUS_TOKEN"], shown["JANITOR_SENTINEL_PASSWORD"]) == ("unset", "unset")
        proc = _run("config", env=env | {"JANITOR_STATUS_TOKEN": "T0kenValue", "JANITOR_SENTINEL_PASSWORD": "S3ntinel"})
        shown = json.loads(proc.stdout)
        assert (shown["JANITOR_STATUS_TOKEN"], shown["JANITOR_SENTINEL_PASSWORD"]) == ("set", "set")
        assert "T0kenValue" not in proc.stdout + proc.stderr
        assert "S3ntinel" not in proc.stdout + proc.stderr

    def test_no_url_is_exit_2_with_one_line(self) -> None:
        """Without a URL, config says so as every verb does, instead of showing an empty URL."""
        proc = _run("config", env={})
        assert proc.returncode == Exit.UNREACHABLE
        assert proc.stdout == ""
        assert proc.stderr == config.NO_URL + "\n"

    def test_unknown_variable_warns_once_with_the_nearest(self) -> None:
        """A mistyped JANITOR_ variable is one warning line naming the nearest setting (never its value); not fatal."""
        env = {"REDIS_URL": "redis://h:6379/0", "JANITOR_RESULTTTL": "Val5ecret", "JANITOR_LOG_FORMAT": "json"}
        proc = _run("config", env=env)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, proc.stderr
        event = json.loads(lines[0])
        assert (event["event"], event["level"]) == ("config.unknown_variable", "warning")
        assert (event["variable"], event["did_you_mean"]) == ("JANITOR_RESULTTTL", "JANITOR_RESULT_TTL")
        assert "Val5ecret" not in proc.stderr
        assert json.loads(proc.stdout)["JANITOR_RESULT_TTL"] == 86400


class TestOtherVerbs:
    def test_demo(self) -> None:
        """`demo` starts its own server, sweeps a dirty keyspace and leaves no Celery key without TTL."""
        proc = _run("demo", "--results", "2000", env={})
        assert proc.returncode == 0, proc.stderr
        assert "Celery keys without a TTL after the sweep: 0" in proc.stdout
