"""What the daemon's jobs last saw, kept for the status page at ``/``.

The page reads only this: viewing it sends nothing to Redis.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from janitor.config import Settings
from janitor.operations.beat import BeatReport
from janitor.operations.broker import BrokerReport
from janitor.operations.census import Census
from janitor.operations.sweep import SweepReport
from janitor.redis_io.connection import tls_verifies
from janitor.reports import findings
from janitor.service import status_page

KEEP_SWEEPS = 10


@dataclass(frozen=True)
class Live:
    """What the page asks the running daemon at each view; none of these sends anything to Redis."""

    redis: Callable[[], status_page.RedisState]
    leader: Callable[[], bool]
    ready: Callable[[], tuple[bool, str]]  # what /readyz answers
    next_sweep: Callable[[], dt.datetime | None]
    watch: Callable[[], str] | None = None  # watch mode or full passes only, and why
    budget: Callable[[], str] | None = None  # JANITOR_DAILY_COMMAND_BUDGET's plan, when one is set


@dataclass
class StatusBook:
    settings: Settings
    live: Live | None = None  # without it (tests, tools) the page has no banner
    sweeps: collections.deque[status_page.SweepRun] = field(
        default_factory=lambda: collections.deque(maxlen=KEEP_SWEEPS)
    )
    skips: tuple[int, str, dt.datetime] | None = None  # sweeps skipped since the last that ran
    census: Census | None = None
    census_at: dt.datetime | None = None
    broker: BrokerReport | None = None
    broker_at: dt.datetime | None = None
    redbeat: BeatReport | None = None
    workers: findings.Workers | None = None
    info: Mapping[str, Any] | None = None
    info_at: dt.datetime | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def swept(self, report: SweepReport) -> None:
        with self._lock:
            self.sweeps.appendleft(status_page.SweepRun(_now(), report))
            self.skips = None

    def skipped_sweep(self, reason: str) -> None:
        with self._lock:
            count = self.skips[0] if self.skips is not None else 0
            self.skips = (count + 1, reason, _now())

    def counted(self, census: Census) -> None:
        with self._lock:
            self.census, self.census_at = census, _now()

    def checked_beat(self, report: BeatReport) -> None:
        with self._lock:
            self.redbeat = report

    def checked_broker(self, report: BrokerReport, workers: findings.Workers | None) -> None:
        with self._lock:
            self.broker, self.broker_at, self.workers = report, _now(), workers

    def read_info(self, info: Mapping[str, Any]) -> None:
        with self._lock:
            self.info, self.info_at = info, _now()

    def state(self) -> status_page.StatusState:
        # Asked before taking the book's lock: these take the daemon's own locks.
        live = self.live
        banner = None
        if live is not None:
            banner = status_page.Banner(
                live.redis(),
                live.ready(),
                live.leader(),
                next_sweep=live.next_sweep(),
                watch=live.watch() if live.watch is not None else None,
                budget=live.budget() if live.budget is not None else None,
            )
        not_read = "not checked yet"
        if banner is not None and banner.redis.up is False:
            not_read = f"not checked: Redis is down ({banner.redis.reason})"
        with self._lock:
            memory = findings.MemoryInfo.from_info(self.info) if self.info else None
            found = findings.evaluate(
                findings.Inputs(
                    census=self.census,
                    memory=memory,
                    broker=self.broker,
                    broker_error="" if self.broker is not None else not_read,
                    workers=self.workers,
                    redbeat=self.redbeat,
                    visibility_timeout=self.settings.visibility_timeout,
                    tls_verifies=tls_verifies(self.settings.redis_url),
                )
            )
            return status_page.StatusState(
                generated_at=_now(),
                redis_url=self.settings.masked_url,
                broker_url=self.settings.masked_broker_url if self.settings.broker_apart else "",
                sweeps=tuple(self.sweeps),
                census=self.census,
                census_at=self.census_at,
                findings=found,
                broker=self.broker,
                broker_at=self.broker_at,
                workers=self.workers,
                banner=None if banner is None else dataclasses.replace(banner, memory=memory, info_at=self.info_at),
                skips=self.skips,
            )

    def page(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        """The WSGI answer for ``/``: 404 when turned off, 401 without the token, else the page."""
        if not self.settings.status_page:
            return "404 Not Found", [("Content-Type", "text/plain")], b"status page turned off\n"
        headers = {k[5:].replace("_", "-"): v for k, v in environ.items() if k.startswith("HTTP_")}
        if not status_page.authorize(self.settings, headers, environ.get("QUERY_STRING", "")):
            challenge = [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")]
            return "401 Unauthorized", challenge, b"token required: ?token= or Authorization: Bearer\n"
        return "200 OK", list(status_page.HEADERS.items()), status_page.render(self.state())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


__all__ = ["StatusBook"]
