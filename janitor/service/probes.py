"""Worker probes on the metrics port: ``GET /workers`` and ``GET /workers/<hostname>/livez``.

Answered from the heartbeat listener's memory (:class:`janitor.redis_io.heartbeats.WorkerTracker`),
never from Redis, so a worker pod's liveness probe can ask its janitor instead of running
``celery inspect ping`` (which needs the app and a round trip through the broker).

``/workers`` names every worker and is behind the status token when one is set (as the status
page is). ``/workers/<hostname>/livez`` says only whether the named worker is alive, and needs
no token: a kubelet probe cannot easily send one. A worker is alive while its last heartbeat is
under 2 x its ``freq`` old (Celery's own rule). While the janitor has not listened long enough
to tell silence from death (it just started, or its subscription dropped), a worker it has not
heard answers 200 "unknown": a deaf janitor must not get healthy workers restarted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from janitor.config import Settings
from janitor.redis_io.heartbeats import DEFAULT_FREQ, WorkerTracker
from janitor.service import status_page

Answer = tuple[str, list[tuple[str, str]], bytes]
PREFIX = "/workers"
_JSON = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
_TEXT = [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")]


def liveness(
    last_seen: float | None, freq: float | None, listened_s: float, min_listen_s: float, now: float
) -> tuple[bool, str]:
    """(alive, one-line reason) for one worker; pure. Silence counts only for as long as we listened."""
    window = 2 * (freq or DEFAULT_FREQ)
    if last_seen is not None and now < last_seen + window:
        return True, f"alive: last heartbeat {now - last_seen:.1f} s ago (freq {freq:g} s)"
    if listened_s < max(window, min_listen_s if last_seen is None else 0.0):
        return True, f"unknown: the janitor has listened for heartbeats only {listened_s:.1f} s"
    if last_seen is None:
        return False, f"dead: no heartbeat in {listened_s:.0f} s of listening"
    return False, f"dead: last heartbeat {now - last_seen:.1f} s ago, over 2 x freq ({window:g} s)"


@dataclass
class Probes:
    """The WSGI answers under ``/workers``."""

    settings: Settings
    tracker: WorkerTracker
    clock: Callable[[], float] = field(default=time.time)

    def answer(self, environ: dict[str, Any]) -> Answer | None:
        """The answer for this path, or None when it is not a probe's."""
        path = environ.get("PATH_INFO", "")
        if path in {PREFIX, PREFIX + "/"}:
            return self._list(environ)
        if path.startswith(PREFIX + "/") and path.endswith("/livez"):
            host = path[len(PREFIX) + 1 : -len("/livez")]
            if host and "/" not in host:
                return self._livez(host)
        return None

    def _list(self, environ: dict[str, Any]) -> Answer:
        if self.settings.status_token and not _token_ok(self.settings, environ):
            return "401 Unauthorized", [*_TEXT, ("WWW-Authenticate", "Bearer")], b"token required\n"
        now = self.clock()
        rows = [
            {
                "hostname": host,
                "last_heartbeat": round(seen.last_seen, 3),
                "age_s": round(now - seen.last_seen, 3),
                "active": seen.active,
                "freq": seen.freq,
                "alive": seen.alive(now),
            }
            for host, seen in sorted(self.tracker.workers().items())
        ]
        return "200 OK", _JSON, json.dumps(rows).encode() + b"\n"

    def _livez(self, host: str) -> Answer:
        now = self.clock()
        seen = self.tracker.workers().get(host)
        alive, reason = liveness(
            None if seen is None else seen.last_seen,
            None if seen is None else seen.freq,
            self.tracker.listened_for(now),
            self.tracker.min_listen_s,
            now,
        )
        return ("200 OK" if alive else "503 Service Unavailable"), _TEXT, f"{host} {reason}\n".encode()


def _token_ok(settings: Settings, environ: dict[str, Any]) -> bool:
    """The status page's token rule (?token= or Bearer), whether or not the page itself is on."""
    headers = {k[5:].replace("_", "-"): v for k, v in environ.items() if k.startswith("HTTP_")}
    return status_page.authorize(
        settings.model_copy(update={"status_page": True}), headers, environ.get("QUERY_STRING", "")
    )
