"""The Celery app the result-sweep tests run real workers with (``celery -A tests.celery_app worker``).

One module, several result configurations ("profiles"): the worker picks its own from
``CELERY_APP_PROFILE`` and its server from ``CELERY_APP_URL``; the test process builds
the same apps with :func:`make_app` to publish, save groups and encode results exactly
like the worker does. Each profile has its own queue, so several workers share one
server the way several apps share one Redis in production.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from celery import Celery
from celery.exceptions import Ignore

ACCEPT = ["json", "pickle", "msgpack", "yaml"]

# profile -> result settings. Every profile except "ttl" keeps results forever
# (result_expires=None), the configuration the janitor exists for.
PROFILES: dict[str, dict[str, Any]] = {
    "plain": {"result_expires": None, "task_track_started": True, "task_acks_late": True},
    "ttl": {"result_expires": 3600, "result_extended": True, "task_track_started": True},
    "pickle": {"result_expires": None, "result_serializer": "pickle", "result_extended": True},
    "msgpack": {"result_expires": None, "result_serializer": "msgpack", "timezone": "America/New_York"},
    "yaml": {"result_expires": None, "result_serializer": "yaml", "timezone": "Asia/Kolkata"},
    "gzip": {"result_expires": None, "result_compression": "gzip", "result_extended": True},
    "myapp": {
        "result_expires": None,
        "result_backend_transport_options": {"global_keyprefix": "myapp", "result_chord_ordered": False},
    },
    "other": {"result_expires": None, "result_backend_transport_options": {"global_keyprefix": "other"}},
}


def queue_of(profile: str) -> str:
    """The queue a profile's tasks go to; "plain" uses Celery's default queue."""
    return "celery" if profile == "plain" else f"{profile}.tasks"


def make_app(profile: str, url: str, *, tasks: bool = True) -> Celery:
    """A Celery app for ``profile`` on ``url``; the worker's has the ``ks.*`` tasks, a producer sends them by name."""
    app = Celery(f"ks_{profile}", broker=url, backend=url, set_as_current=False)
    app.conf.update(
        accept_content=["json"],
        result_accept_content=ACCEPT,
        task_default_queue=queue_of(profile),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_prefetch_multiplier=1,
        **PROFILES[profile],
    )
    if tasks:
        _register(app)
    return app


def _register(app: Celery) -> None:

    @app.task(name="ks.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="ks.tsum", shared=False)
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task(name="ks.fail", shared=False)
    def fail(message: str = "kaboom") -> None:
        raise ValueError(message)

    @app.task(name="ks.flaky", shared=False, bind=True, max_retries=2, default_retry_delay=0.1)
    def flaky(self: Any, failures: int, countdown: float = 0.1) -> str:
        """Fail ``failures`` times (retrying each time), then succeed; past max_retries it fails."""
        if self.request.retries < failures:
            raise self.retry(exc=RuntimeError(f"attempt {self.request.retries}"), countdown=countdown)
        return "finally"

    @app.task(name="ks.progress", shared=False, bind=True)
    def progress(self: Any, done: int, total: int) -> None:
        """Report a custom state and stop there, as tasks that manage their own state do."""
        self.update_state(state="PROGRESS", meta={"done": done, "total": total})
        raise Ignore()

    @app.task(name="ks.die", shared=False)
    def die() -> None:
        """Kill the worker mid-task (OOM killer, segfault): STARTED stays behind."""
        os.kill(os.getpid(), signal.SIGKILL)


app = make_app(
    os.environ.get("CELERY_APP_PROFILE", "plain"), os.environ.get("CELERY_APP_URL", "redis://127.0.0.1:6379/0")
)
