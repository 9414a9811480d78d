"""Celery from the outside: a producer that publishes like the user's app, a consumer that dies
without acking, real ``celery worker`` processes (``tests.broker_app``), and reads of what they left."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import kombu
import redis
from celery import Celery

from janitor import config
from janitor.operations import broker
from tests.support import ROOT


def producer(url: str, **transport: Any) -> Celery:
    """A bare Celery client (no tasks imported) that publishes like the user's app would."""
    app = Celery("producer", broker=url, backend=url, set_as_current=False)
    app.conf.broker_transport_options = transport
    return app


def deliver_without_ack(url: str, count: int, queue: str = "celery", **transport: Any) -> list[str]:
    """Take ``count`` messages the way a consumer does, then vanish without acking (a dead worker)."""
    tags = []
    with kombu.Connection(url, transport_options=transport) as conn:
        chan = conn.channel()
        for _ in range(count):
            msg = chan.basic_get(queue=queue, no_ack=False)
            assert msg is not None
            tags.append(msg.delivery_tag)
        chan.do_restore = False  # a SIGKILLed worker restores nothing on its way out
        chan.close()
    return tags


@contextlib.contextmanager
def celery_worker(
    url: str,
    name: str,
    *,
    pool: str = "threads",
    concurrency: int = 4,
    backend: str = "",
    kombu_restore_every: int | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``celery worker`` subprocess in its own process group; killed on exit.

    ``kombu_restore_every``: seconds between kombu's own restore sweeps in the worker (default: none
    during a test)."""
    env = os.environ | {"BROKER_APP_URL": url, "BROKER_APP_BACKEND": backend or url, "BROKER_APP_VT": "3"}
    if kombu_restore_every is not None:
        env["BROKER_APP_KOMBU_RESTORE"] = str(kombu_restore_every)
    args = [sys.executable, "-m", "celery", "-A", "tests.broker_app", "worker", "-P", pool, "-c", str(concurrency)]
    args += ["-n", name, "--without-mingle", "--without-gossip", "-l", "warning"]
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        yield proc
    finally:
        sigkill(proc)


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def status(client: redis.Redis, task_id: str) -> str | None:
    raw = client.get(f"celery-task-meta-{task_id}")
    return json.loads(raw)["status"] if raw else None


def message_ids(client: redis.Redis, queue: str = "celery") -> list[str]:
    """Task ids of every message in the queue's lists and in ``unacked`` (duplicates kept)."""
    ids = []
    for key in broker.BrokerKeys.of(config.load({})).sublists(queue):
        ids += [json.loads(m)["headers"]["id"] for m in client.lrange(key, 0, -1)]
    ids += [json.loads(v)[0]["headers"]["id"] for v in client.hvals("unacked")]
    return ids


def janitor_settings(url: str, **env: str) -> config.Settings:
    return config.load({"JANITOR_REDIS_URL": url, **{f"JANITOR_{k.upper()}": v for k, v in env.items()}})


def snapshot(client: redis.Redis) -> dict[bytes, Any]:
    """Every key and its DUMP: equal snapshots mean nothing was written."""
    return {k: client.dump(k) for k in sorted(client.scan_iter(count=1000))}
