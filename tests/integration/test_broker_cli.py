"""``celery-janitor restore`` on a real server."""

from __future__ import annotations

import json
import time

import pytest
import redis

from janitor import cli
from janitor.dev import embedded
from janitor.errors import Exit
from tests.support.celery import deliver_without_ack, producer, snapshot


@pytest.fixture(name="stuck")
def _stuck(client: redis.Redis, server: embedded.Server) -> dict[str, str]:
    """Two messages a dead consumer took, past a 1 s visibility timeout."""
    app = producer(server.url)
    for _ in range(2):
        app.send_task("app.t")
    deliver_without_ack(server.url, 2)
    time.sleep(1.1)
    return {"JANITOR_REDIS_URL": server.url, "JANITOR_VISIBILITY_TIMEOUT": "1", "JANITOR_LOG_LEVEL": "error"}


class TestRestoreCommand:
    """The restore verb moves back what is stuck on two passes, and --dry-run only says so."""

    def test_dry_run(self, client: redis.Redis, stuck: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
        """--dry-run --json reports two restores and leaves the keyspace as it was."""
        before = snapshot(client)

        code = cli.main(["restore", "--dry-run", "--json", "--wait", "0.1"], stuck)

        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert code == Exit.OK
        assert out["detect"]["by_state"]["stuck"] == 2
        assert out["restore"]["restored"] == {"celery": 2}
        assert snapshot(client) == before

    def test_restores(self, client: redis.Redis, stuck: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
        """A real run puts both messages back on their queue."""
        code = cli.main(["restore", "--wait", "0.1"], stuck)

        assert code == Exit.OK
        assert "restored (were): {'celery': 2}" in capsys.readouterr().out
        assert client.llen("celery") == 2
        assert client.hlen("unacked") == 0
