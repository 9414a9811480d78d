"""Sentinel: a real master, replica and three sentinels on loopback; passwords on both sides.

The janitor finds the master through the sentinels (kombu's ``sentinel://`` URL
spelling, JANITOR_SENTINEL_MASTER for Celery's ``master_name``), sweeps it, and
a running daemon follows a failover without a restart.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from janitor import cli, config
from janitor.dev import embedded
from tests.support import wait_for
from tests.support.daemons import Janitor, launch, old_results, stop_all
from tests.support.servers import ENGINES

MASTER_PW = "m@ster-pw"
SENTINEL_PW = "sentinel-pw"
NAME = "mymaster"


@dataclass
class SentinelSet:
    master: embedded.Server
    replica: embedded.Server
    sentinels: list[int]

    @property
    def url(self) -> str:
        first, *rest = self.sentinels
        return ";".join(
            [f"sentinel://:{MASTER_PW}@127.0.0.1:{first}/0"] + [f"sentinel://127.0.0.1:{p}/0" for p in rest]
        )

    def env(self) -> dict[str, str]:
        return {
            "JANITOR_REDIS_URL": self.url,
            "JANITOR_SENTINEL_MASTER": NAME,
            "JANITOR_SENTINEL_PASSWORD": SENTINEL_PW,
        }

    def sentinel(self, port: int | None = None) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=port or self.sentinels[0], password=SENTINEL_PW, decode_responses=True
        )

    def master_port(self) -> int:
        return int(self.sentinel().sentinel_get_master_addr_by_name(NAME)[1])

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, password=MASTER_PW)


@pytest.fixture(name="sentinels", params=ENGINES)
def _sentinels(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SentinelSet]:
    auth = ("--requirepass", MASTER_PW, "--masterauth", MASTER_PW)
    with (
        embedded.running(request.param, *auth) as master,
        embedded.running(request.param, *auth, "--replicaof", "127.0.0.1", str(master.port)) as replica,
    ):
        procs = []
        ports = [embedded.free_port() for _ in range(3)]
        try:
            for port in ports:
                conf = tmp_path / f"sentinel-{port}.conf"
                conf.write_text(
                    f"port {port}\nbind 127.0.0.1\nrequirepass {SENTINEL_PW}\n"
                    f"sentinel monitor {NAME} 127.0.0.1 {master.port} 2\n"
                    f"sentinel auth-pass {NAME} {MASTER_PW}\n"
                    f"sentinel down-after-milliseconds {NAME} 1000\n"
                    f"sentinel failover-timeout {NAME} 4000\n"
                )
                exe = embedded.binary(request.param)
                assert exe is not None
                procs.append(
                    subprocess.Popen(  # our own server binary
                        [exe, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                    )
                )
            found = SentinelSet(master, replica, ports)
            wait_for(lambda: _knows_replica(found), 20, "the sentinels to see the replica")
            yield found
        finally:
            for proc in procs:
                proc.kill()
                proc.wait(10)


def _knows_replica(found: SentinelSet) -> bool:
    with contextlib.suppress(redis.RedisError):
        return all(
            len(found.sentinel(p).sentinel_slaves(NAME)) == 1 and found.sentinel(p).sentinel_sentinels(NAME)
            for p in found.sentinels
        )
    return False


def test_sweep_finds_the_master_through_the_sentinels(
    sentinels: SentinelSet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sweep` with a sentinel URL cleans the master; no password appears in anything it prints."""
    master = sentinels.client(sentinels.master.port)
    old = old_results(master, 50, "s")
    for key, value in sentinels.env().items():
        monkeypatch.setenv(key, value)
    assert cli.main(["sweep", "--json"]) == 0
    out = capsys.readouterr()
    assert not any(master.exists(k) for k in old)
    assert MASTER_PW not in out.out + out.err
    assert SENTINEL_PW not in out.out + out.err
    assert cli.main(["config"]) == 0
    shown = capsys.readouterr().out
    assert SENTINEL_PW not in shown
    assert MASTER_PW not in shown


def test_a_sentinel_url_needs_the_master_name() -> None:
    with pytest.raises(config.ConfigError, match="JANITOR_SENTINEL_MASTER"):
        config.load({"JANITOR_REDIS_URL": "sentinel://127.0.0.1:26379/0;sentinel://127.0.0.1:26380/0"})


def test_wrong_sentinel_password_is_one_clear_line(
    sentinels: SentinelSet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in (sentinels.env() | {"JANITOR_SENTINEL_PASSWORD": "wrong"}).items():
        monkeypatch.setenv(key, value)
    assert cli.main(["sweep"]) == 2
    err = capsys.readouterr().err
    assert "wrong" not in err
    assert MASTER_PW not in err
    assert err.count("\n") == 1, err


def test_daemon_follows_a_failover(sentinels: SentinelSet, tmp_path: Path) -> None:
    """The master fails over while the daemon runs: it keeps sweeping, now on the new master, without a restart."""
    before = sentinels.client(sentinels.master.port)
    first = old_results(before, 200, "before")
    janitor = launch(tmp_path / "janitor.log", **sentinels.env())
    try:
        _follow(sentinels, janitor, before, first)
    finally:
        stop_all([janitor])


def _follow(sentinels: SentinelSet, janitor: Janitor, before: redis.Redis, first: list[bytes]) -> None:
    wait_for(lambda: not any(before.exists(k) for k in first), 20, "the first sweep on the master")

    sentinels.sentinel().execute_command("SENTINEL", "FAILOVER", NAME)
    wait_for(lambda: sentinels.master_port() == sentinels.replica.port, 20, "the sentinels to promote the replica")
    after = sentinels.client(sentinels.replica.port)
    wait_for(lambda: after.info("replication")["role"] == "master", 20, "the replica to be master")
    second = old_results(after, 200, "after")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(after.exists(k) for k in second):
        time.sleep(0.2)
    assert not any(after.exists(k) for k in second), janitor.log()[-3000:]
    assert janitor.process.poll() is None
    assert janitor.get("/readyz")[0] == 200
    assert MASTER_PW not in janitor.log()
    assert SENTINEL_PW not in janitor.log()
