"""The Celery app the diagnose tests run a real worker with (``celery -A tests.diag_app worker -P solo``).

Configured from ``DIAG_APP_URL``. ``result_expires=None`` is the misconfiguration
diagnose must find: every result is written with a plain SET and never expires.
"""

from __future__ import annotations

import os

from celery import Celery

URL = os.environ.get("DIAG_APP_URL", "redis://127.0.0.1:6379/0")

app = Celery("diag_app", broker=URL, backend=URL)
app.conf.update(
    result_expires=None,
    task_track_started=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="diag_app.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="diag_app.fail")
def fail() -> None:
    raise ValueError("diagnose test failure")
