"""A Celery app whose tasks return big results (``celery -A tests.big_app worker``),
for tests/integration/test_large_results.py.

``BIG_APP_URL`` names the server; ``BIG_APP_EXTENDED=1`` turns on result_extended. Results are
kept forever (result_expires=None), the configuration the janitor exists for.
"""

from __future__ import annotations

import os

from celery import Celery

QUEUE = "big.tasks"


def make_app(url: str, *, extended: bool = False) -> Celery:
    app = Celery("big", broker=url, backend=url, set_as_current=False)
    app.conf.update(
        result_expires=None,
        result_extended=extended,
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name="big.report", shared=False)  # not added to every app this process makes later
    def report(mb: int, tail: str = "") -> str:
        """A report of ``mb`` MiB whose last characters the caller chooses (e.g. text mimicking Celery's own tail)."""
        return "r" * (mb * 1024 * 1024 - len(tail)) + tail

    return app


app = make_app(
    os.environ.get("BIG_APP_URL", "redis://127.0.0.1:6379/0"), extended=os.environ.get("BIG_APP_EXTENDED") == "1"
)
