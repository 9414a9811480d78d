"""The Celery app the broker tests run real workers with (``celery -A tests.broker_app worker``).

Configured from ``BROKER_APP_URL`` (and ``BROKER_APP_BACKEND`` for results kept
elsewhere). Workers never restore by themselves during a test
(``unacked_restore_interval`` of an hour), so whatever comes back to a queue was
put there by the janitor; unless ``BROKER_APP_KOMBU_RESTORE`` sets it shorter, for
the tests of what kombu's own restore does.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import redis
from celery import Celery

URL = os.environ.get("BROKER_APP_URL", "redis://127.0.0.1:6379/0")
BACKEND = os.environ.get("BROKER_APP_BACKEND", URL)  # results on another database or server
VISIBILITY_TIMEOUT = int(os.environ.get("BROKER_APP_VT", "3"))
RELEASE_KEY = "test:release"
# Seconds between the workers' own restore_visible sweeps (kombu's, every poll when set): what the guard
# tests need on, to show kombu redelivering. An hour by default: off for the length of a test.
KOMBU_RESTORE_EVERY = int(os.environ.get("BROKER_APP_KOMBU_RESTORE", "3600"))

app = Celery("broker_app", broker=URL, backend=BACKEND)
app.conf.update(
    task_acks_late=True,
    task_track_started=True,
    worker_prefetch_multiplier=1,
    result_expires=None,
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "unacked_restore_interval": KOMBU_RESTORE_EVERY,
        # kombu's default (10) unless a test turns its restore on: then every sweep scans.
        "unacked_restore_throttle": 1 if "BROKER_APP_KOMBU_RESTORE" in os.environ else 10,
    },
    worker_hijack_root_logger=False,
)


def _redis() -> redis.Redis:
    return redis.Redis.from_url(URL)


@app.task(bind=True, name="broker_app.hold")
def hold(self: Any) -> str:
    """Wait until the test releases it, then count one execution for this task id."""
    client = _redis()
    while not client.exists(RELEASE_KEY):
        time.sleep(0.05)
    client.incr(f"test:done:{self.request.id}")
    return "done"


@app.task(bind=True, name="broker_app.hold_early", acks_late=False)
def hold_early(self: Any) -> str:
    """:func:`hold`, acked when it starts: once it runs, no message of it is left in ``unacked``."""
    client = _redis()
    while not client.exists(RELEASE_KEY):
        time.sleep(0.05)
    client.incr(f"test:done:{self.request.id}")
    return "done"


@app.task(name="broker_app.poison")
def poison() -> None:
    """Kill the whole worker process: what a segfaulting C extension or the OOM killer does."""
    _redis().incr("test:poison:runs")
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(bind=True, name="broker_app.work")
def work(self: Any, seconds: float) -> str:
    """Run for ``seconds``, counting each start and each completion of this task id."""
    client = _redis()
    client.incr(f"test:started:{self.request.id}")
    time.sleep(seconds)
    client.incr(f"test:done:{self.request.id}")
    return "done"
