"""Whether the results' Redis is usable, why not, and since when: one log line per change of state."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from janitor import errors
from janitor.service import status_page
from janitor.service.metrics import Metrics

log = structlog.get_logger("janitor.daemon")


@dataclass
class RedisHealth:
    """Up or down, and why; logs and exports only changes of state."""

    metrics: Metrics
    url: str
    on_recover: Callable[[], None]
    _state: str | None = None  # None: not known yet, "": up, else the error label
    _reason: str = "not checked yet"
    _since: float | None = None  # clock() at the last change between up and down
    _lock: threading.Lock = field(default_factory=threading.Lock)
    clock: Callable[[], float] = time.time

    @property
    def up(self) -> bool:
        return self._state == ""

    def snapshot(self) -> status_page.RedisState:
        """For the status page: up, down or unknown, why, and since when."""
        with self._lock:
            state, reason, since = self._state, self._reason, self._since
        return status_page.RedisState(
            None if state is None else state == "",
            "" if state == "" else reason,
            None if since is None else dt.datetime.fromtimestamp(since, dt.UTC),
        )

    @property
    def reason(self) -> str:
        return self._reason

    def ok(self) -> None:
        with self._lock:
            before, self._state, self._reason = self._state, "", "ok"
            if before != "":
                self._since = self.clock()
        if before != "":
            self.metrics.gauge("janitor_redis_up").set(1)
            log.info("redis.up", url=self.url, recovered=before is not None)
            if before is not None:
                self.on_recover()

    def failed(self, exc: BaseException) -> None:
        failure = errors.classify(exc)
        label = failure.label
        self.metrics.counter("janitor_redis_errors_total").labels(label).inc()
        with self._lock:
            before, self._state, self._reason = self._state, label, failure.message
            if before in {None, ""}:  # a new reason while down keeps the time it went down
                self._since = self.clock()
        if before != label:
            self.metrics.gauge("janitor_redis_up").set(0)
            log.error("redis.down", url=self.url, error=label, detail=self._reason, retrying=True)
