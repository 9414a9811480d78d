"""`celery-janitor diagnose`: one read-only look at a Celery Redis, for people and for scripts.

Read-only by construction: INFO, PING, ACL WHOAMI, DBSIZE, SCAN, MEMORY USAGE,
the read-only INSPECT/broker scripts run as EVALSHA_RO where the server has it,
and a PSUBSCRIBE to the heartbeat channel (no kombu consumer, so no message is
ever taken). The heartbeat listen runs while the census walks the keyspace.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import redis

from janitor import __version__, errors
from janitor.config import Settings
from janitor.dev.progress import Progress
from janitor.errors import Exit
from janitor.operations import beat, broker, census
from janitor.operations.beat import BeatReport
from janitor.operations.broker import BrokerReport
from janitor.redis_io import connection, heartbeats, notifications, scripts
from janitor.reports import findings
from janitor.reports.findings import Finding, MemoryInfo, Workers
from janitor.reports.text import duration, size

SCHEMA = 1
DEFAULT_LISTEN_S = 5.0


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """Where we connected and what answered; the URL is masked."""

    source: str
    url: str
    scheme: str
    tls: bool
    tls_verifies: bool | None
    server: str
    version: str
    role: str
    db: int
    ping_ms: float
    acl_user: str | None
    broker_url: str = ""  # masked; "" when the broker is the results' server and database
    broker_source: str = ""
    notify_keyspace_events: str | None = None  # None: CONFIG GET refused

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Diagnosis:
    """Everything one diagnose run saw, and what it concluded."""

    generated_at: dt.datetime
    duration_s: float
    connection: ConnectionInfo
    memory: MemoryInfo | None
    dbsize: int
    census: census.Census
    broker: BrokerReport | None
    broker_error: str
    workers: Workers | None
    findings: list[Finding]

    @property
    def exit_code(self) -> Exit:
        return Exit.FINDINGS if findings.worst(self.findings) == "error" else Exit.OK

    def as_dict(self) -> dict[str, Any]:
        """The `--json` document (schema in docs/diagnose.md)."""
        counts = {s: sum(1 for f in self.findings if f.severity == s) for s in findings.SEVERITIES}
        return {
            "schema": SCHEMA,
            "version": __version__,
            "generated_at": self.generated_at.isoformat(timespec="seconds"),
            "duration_s": round(self.duration_s, 3),
            "connection": self.connection.as_dict(),
            "memory": None if self.memory is None else asdict(self.memory),
            "keyspace": {"dbsize": self.dbsize, **self.census.as_dict()},
            "broker": None if self.broker is None else self.broker.as_dict(),
            "broker_error": self.broker_error or None,
            "workers": None
            if self.workers is None
            else {
                "listened_s": round(self.workers.listened_s, 1),
                "alive": sorted(self.workers.alive),
            },
            "findings": findings.as_dicts(self.findings),
            "summary": counts | {"exit_code": int(self.exit_code)},
        }


def collect(
    client: redis.Redis,
    settings: Settings,
    *,
    sample: int = census.DEFAULT_SAMPLE,
    listen_s: float = DEFAULT_LISTEN_S,
    progress: bool | None = None,
    broker_client: redis.Redis | None = None,
) -> Diagnosis:
    """Run every read-only check; connection errors propagate (the CLI maps them to exit 2).

    ``broker_client``: the broker's Redis when it is not ``client``'s server and database
    (``JANITOR_BROKER_URL``); the census reads ``client``, the broker checks read it.
    """
    started = time.monotonic()
    generated_at = dt.datetime.now(dt.UTC)
    info = _info(client)  # first: an unreachable server fails here, before any thread starts
    conn = _connection(client, settings, info)
    memory = MemoryInfo.from_info(info)
    tracker = _start_listening(settings.for_broker(), listen_s)
    tally = scripts.ReadOnlyTally()
    try:
        dbsize = int(client.dbsize())
        with Progress(dbsize, label="census", enabled=progress) as bar:
            seen = census.take(client, settings, sample=sample, on_page=bar.update, tally=tally)
        if tracker is not None:
            _listen_out(tracker, listen_s)
    finally:
        if tracker is not None:
            tracker.stop()
    now = time.time()
    workers = None
    if tracker is not None:
        workers = Workers(tracker.alive(now), tracker.listened_for(now))
    report, broker_error = _broker(client, broker_client, settings, now, tracker)
    redbeat = _redbeat(broker_client or client, settings, now) if report is not None else None
    found = findings.evaluate(
        findings.Inputs(
            census=seen,
            memory=memory,
            broker=report,
            broker_error=broker_error,
            workers=workers,
            redbeat=redbeat,
            visibility_timeout=settings.visibility_timeout,
            tls_verifies=conn.tls_verifies,
        )
    )
    return Diagnosis(
        generated_at,
        time.monotonic() - started,
        conn,
        memory,
        dbsize,
        seen,
        report,
        broker_error,
        workers,
        found,
    )


def _info(client: redis.Redis) -> dict[str, Any]:
    """INFO (all default sections) in one call; a server that refuses it gives {} (fields show unknown)."""
    try:
        return dict(client.info())
    except redis.ResponseError:
        client.ping()  # still raises for an unreachable or refusing server
        return {}


def _connection(client: redis.Redis, settings: Settings, info: dict[str, Any]) -> ConnectionInfo:
    pings = []
    for _ in range(3):
        t = time.perf_counter()
        client.ping()
        pings.append((time.perf_counter() - t) * 1000)
    try:
        user: str | None = _text(client.acl_whoami())
    except redis.ResponseError:  # Redis < 6, or a managed server that hides ACL commands
        user = None
    if info.get("server_name") == "valkey" or "valkey_version" in info:
        server, version = "Valkey", str(info.get("valkey_version", "?"))
    else:
        server, version = "Redis", str(info.get("redis_version", "?"))
    role = {"master": "primary", "slave": "replica"}.get(str(info.get("role", "")), str(info.get("role", "unknown")))
    scheme = urlsplit(settings.redis_url).scheme.lower()
    return ConnectionInfo(
        source=settings.redis_url_source or "(given)",
        url=settings.masked_url,
        scheme=scheme,
        tls=scheme == "rediss",
        tls_verifies=connection.tls_verifies(settings.redis_url) if settings.redis_url else None,
        server=server,
        version=version,
        role=role,
        db=int(client.connection_pool.connection_kwargs.get("db", 0)),
        ping_ms=round(statistics.median(pings), 3),
        acl_user=user,
        broker_url=settings.masked_broker_url if settings.broker_apart else "",
        broker_source=settings.broker_url_source if settings.broker_apart else "",
        notify_keyspace_events=_notify_flags(client),
    )


def _notify_flags(client: redis.Redis) -> str | None:
    flags = notifications.read(client, scripts.ReadOnlyTally())
    return None if flags.state is notifications.Read.REFUSED else flags.flags


def _start_listening(settings: Settings, listen_s: float) -> heartbeats.WorkerTracker | None:
    """A heartbeat tracker subscribed in the background, or None when not asked for."""
    if listen_s <= 0 or not settings.redis_url:
        return None
    # The user chose how long to listen: judging "dead" after that long (not the
    # daemon's 10 s floor) is what they asked for; 2 x freq still applies.
    tracker = heartbeats.WorkerTracker(min_listen_s=min(listen_s, heartbeats.MIN_LISTEN_S))
    return tracker.start(settings.redis_url, settings)


def _listen_out(tracker: heartbeats.WorkerTracker, listen_s: float) -> None:
    """Wait until the subscription has lasted ``listen_s`` (the census time counts), or give up 3 s late."""
    deadline = time.monotonic() + listen_s + 3.0
    while tracker.listened_for() < listen_s and time.monotonic() < deadline:
        time.sleep(0.05)


def _broker(
    client: redis.Redis,
    broker_client: redis.Redis | None,
    settings: Settings,
    now: float,
    tracker: heartbeats.WorkerTracker | None,
) -> tuple[BrokerReport | None, str]:
    on = broker_client or client
    try:
        report = broker.detect(on, settings, now=now, workers=tracker, tally=scripts.ReadOnlyTally(), results=client)
    except redis.ResponseError as exc:  # e.g. NOPERM for a restricted ACL user
        return None, f"broker checks unavailable: Redis refused them ({errors.classify(exc).message})"
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        if broker_client is None:
            raise
        where = f"{settings.broker_url_source} {settings.masked_broker_url}"
        return None, f"broker checks unavailable: cannot reach the broker at {where} ({errors.classify(exc).message})"
    return report, ""


def _redbeat(client: redis.Redis, settings: Settings, now: float) -> BeatReport | None:
    """RedBeat's schedule, when there is one (read-only); None when Redis refuses the read."""
    try:
        return beat.check(client, settings, now=now, tally=scripts.ReadOnlyTally())
    except redis.ResponseError:
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- text ---------------------------------------------------------------------------
_LABEL = {"error": "ERROR", "warning": "WARN", "info": "info"}


def render_text(d: Diagnosis) -> str:
    """The report for a terminal: sections, a keyspace table, then the findings with their fixes."""
    c, out = d.connection, []
    out.append(f"celery-janitor diagnose {__version__}  {d.generated_at:%Y-%m-%d %H:%M:%S} UTC  ({d.duration_s:.1f} s)")
    out += ["", "Connection"]
    out.append(f"  url        {c.url}  (from {c.source})")
    if c.broker_url:
        out.append(f"  broker     {c.broker_url}  (from {c.broker_source})")
    tls = "off" if not c.tls else ("on, server verified" if c.tls_verifies else "on, NOT verified")
    out.append(f"  server     {c.server} {c.version}, {c.role}, db {c.db}; TLS {tls}")
    out.append(f"  ping       {c.ping_ms:.2f} ms; ACL user {c.acl_user or 'unknown'}")
    out.append(f"  watch      {_watch_line(c.notify_keyspace_events)}")
    out += ["", "Memory"]
    m = d.memory
    if m is None:
        out.append("  unknown (INFO memory not available)")
    else:
        limit = size(m.maxmemory) if m.maxmemory else "no limit"
        pct = f" ({m.used_fraction:.0%})" if m.used_fraction is not None else ""
        out.append(f"  used       {size(m.used)}{pct} of {limit}; peak {size(m.peak)}")
        frag = f"{m.fragmentation:.2f}" if m.fragmentation is not None else "unknown"
        out.append(f"  policy     {m.policy}; evicted keys {m.evicted_keys:,}; fragmentation {frag}")
    out += ["", *_keyspace_lines(d.census, d.dbsize), "", *_broker_lines(d), "", *_finding_lines(d.findings)]
    return "\n".join(out) + "\n"


def _watch_line(flags: str | None) -> str:
    """What `celery-janitor run` would do here with JANITOR_WATCH=auto."""
    if flags is None:
        return (
            "unknown: CONFIG GET notify-keyspace-events refused; the daemon SETs a probe key of its own and "
            "watches if the server publishes it, else runs full passes only"
        )
    if notifications.covers_string_sets(flags):
        return f"available (notify-keyspace-events={flags}): the daemon gives new results their TTL as they are written"
    return (
        f"off (notify-keyspace-events={flags!r}): the daemon runs full passes only; to {notifications.HOW_TO_TURN_ON}"
    )


def _keyspace_lines(cz: census.Census, dbsize: int) -> list[str]:
    sampled = "sizes estimated from MEMORY USAGE samples" if cz.memory_usage else "sizes unknown (no MEMORY USAGE)"
    out = [f"Keyspace  {cz.total:,} keys (DBSIZE {dbsize:,}), one SCAN in {cz.duration_s:.1f} s; {sampled}"]
    out.append(f"  {'category':<22}{'keys':>10}{'no TTL':>10}{'est. size':>13}")
    for cat in cz.categories():
        est = cz.est_bytes(cat)
        out.append(
            f"  {cat:<22}{cz.count(cat):>10,}{cz.without_ttl[cat]:>10,}{size(est) if est is not None else '-':>13}"
        )
    if cz.tasks():
        ages = "  ".join(f"{label} {cz.result_age[label]:,}" for label, _ in census.AGE_BUCKETS)
        ttls = "  ".join(
            f"{label} {cz.result_ttl[label]:,}" for label in [census.NO_TTL, *(b for b, _ in census.TTL_BUCKETS)]
        )
        out.append(f"  results by age (date_done): {ages}")
        out.append(f"  results by TTL:             {ttls}")
    return out


def _broker_lines(d: Diagnosis) -> list[str]:
    out = ["Broker"]
    b = d.broker
    if b is None:
        out.append(f"  {d.broker_error or 'not checked'}")
    else:
        if not b.queues:
            out.append("  queues     none found (no _kombu.binding.* and no JANITOR_QUEUES)")
        for q in b.queues:
            pri = ", ".join(f"p{p}: {n:,}" for p, n in sorted(q.by_priority.items()))
            old = f"; oldest {duration(q.oldest_age_s)}" if q.oldest_age_s is not None else ""
            out.append(f"  queue      {q.name}: {q.total:,} waiting" + (f" ({pri})" if pri else "") + old)
        states = ", ".join(f"{s} {n:,}" for s, n in sorted(b.by_state.items()) if n)
        oldest = f"; oldest {duration(b.oldest_unacked_age_s)}" if b.oldest_unacked_age_s is not None else ""
        out.append(f"  unacked    {b.unacked_total:,}" + (f" ({states})" if states else "") + oldest)
        if b.max_eta_delay_s is not None:
            out.append(
                f"  ETA        longest {duration(b.max_eta_delay_s)} after delivery; "
                f"visibility_timeout {duration(b.visibility_timeout)}"
            )
        for m in b.stuck[:5]:
            out.append(
                f"  stuck      {m.task_name} {m.task_id} on {m.queue or '?'}, delivered "
                f"{duration(b.now - m.delivered_at)} ago"
            )
        if len(b.stuck) > 5:
            out.append(f"  stuck      ... and {len(b.stuck) - 5:,} more (see --json)")
    w = d.workers
    if w is None:
        out.append("  workers    not checked (--listen 0)")
    elif w.listened_s <= 0:
        out.append("  workers    unknown: could not subscribe to the heartbeat channel")
    elif w.alive:
        out.append(f"  workers    {len(w.alive)} alive: {', '.join(sorted(w.alive)[:8])}")
    else:
        out.append(f"  workers    none heard in {w.listened_s:.0f} s")
    return out


def _finding_lines(found: list[Finding]) -> list[str]:
    if not found:
        return ["Findings", "  none: nothing to fix"]
    counts = ", ".join(f"{n} {s}" for s in findings.SEVERITIES if (n := sum(f.severity == s for f in found)))
    out = [f"Findings  ({counts})"]
    for f in found:
        out.append(f"  {_LABEL[f.severity]:<6} {f.title}")
        out.append(f"         seen: {f.evidence}")
        out.append(f"         fix:  {f.fix}")
    return out
