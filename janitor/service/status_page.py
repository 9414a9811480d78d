"""The status page at ``/`` on the metrics port: plain server-rendered HTML.

A pure renderer (``render(state) -> bytes``) and an access check
(``authorize``); the HTTP server owns the socket. No JavaScript, no external
asset, every value HTML-escaped, and nothing secret: the Redis URL is shown
masked and the status token never appears. Serve it with :data:`HEADERS`.
"""

from __future__ import annotations

import datetime as dt
import hmac
import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from janitor import __version__
from janitor.operations.census import AGE_BUCKETS
from janitor.redis_io.connection import mask_url
from janitor.reports.findings import Finding, MemoryInfo, Workers
from janitor.reports.text import duration, size

if TYPE_CHECKING:
    from janitor.config import Settings
    from janitor.operations.broker import BrokerReport
    from janitor.operations.census import Census
    from janitor.operations.sweep import SweepReport

# Headers to send with the page: no caching of a page that may need a token,
# no referrer (a ?token= must not leak to other sites), and a CSP that allows
# only the inline stylesheet, so even a rendering bug cannot load or run anything.
HEADERS: dict[str, str] = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'; "
    "frame-ancestors 'none'",
}
REFRESH_S = 30
MAX_STUCK_ROWS = 50


SKIP_REASONS = {
    "no_writes": "Redis counted no write that could need one since",
    "watching": "watch mode judged every result written since",
}


@dataclass(frozen=True, slots=True)
class SweepRun:
    """One finished sweep and when it finished."""

    finished_at: dt.datetime
    report: SweepReport


@dataclass(frozen=True, slots=True)
class RedisState:
    """Redis as the daemon last found it, and since when it has been so."""

    up: bool | None  # None: not checked yet
    reason: str = ""  # why it is down
    since: dt.datetime | None = None  # the last change between up and down


@dataclass(frozen=True, slots=True)
class Banner:
    """The top of the page: is anything wrong right now."""

    redis: RedisState
    ready: tuple[bool, str] | None = None  # what /readyz answers
    leader: bool | None = None
    memory: MemoryInfo | None = None  # from the last INFO
    info_at: dt.datetime | None = None
    next_sweep: dt.datetime | None = None
    watch: str | None = None  # the results sweep's mode: watch, or full passes only and why
    budget: str | None = None  # the daily command budget and the intervals it buys


@dataclass
class StatusState:
    """What the page shows; every part is optional (the daemon fills them as its jobs run)."""

    generated_at: dt.datetime
    version: str = __version__
    redis_url: str = ""  # masked again here, whatever the caller passes
    broker_url: str = ""  # the broker's, when it is another server or database (masked again too)
    sweeps: Sequence[SweepRun] = ()  # newest first
    census: Census | None = None
    census_at: dt.datetime | None = None
    findings: Sequence[Finding] = ()
    broker: BrokerReport | None = None
    broker_at: dt.datetime | None = None
    workers: Workers | None = None
    banner: Banner | None = None
    # Runs of the sweep skipped since the last one that ran: how many, why, the last one's time.
    skips: tuple[int, str, dt.datetime] | None = None


def authorize(settings: Settings, headers: Mapping[str, str] | Any, query: str | Mapping[str, Sequence[str]]) -> bool:
    """May this request see the page? Off → never; no token set → always; else ?token= or Bearer must match.

    ``headers`` may be any mapping-like object with ``items()`` (http.server's
    message included); header names are compared case-insensitively.
    """
    if not settings.status_page:
        return False
    expected = settings.status_token
    if not expected:
        return True
    params = parse_qs(query) if isinstance(query, str) else query
    offered = [*params.get("token", ())]
    for name, value in headers.items():
        if str(name).lower() == "authorization":
            scheme, _, credential = str(value).strip().partition(" ")
            if scheme.lower() == "bearer":
                offered.append(credential.strip())
    # compare_digest on every offer: the time taken does not reveal how much of a guess matched.
    return any(hmac.compare_digest(o.encode(), expected.encode()) for o in offered)


# -- rendering ---------------------------------------------------------------------
def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _ago(now: dt.datetime, then: dt.datetime | None) -> str:
    return "never" if then is None else f"{duration((now - then).total_seconds())} ago"


def _at(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, numeric_from: int = 1) -> str:
    head = "".join(f"<th{' class=n' if i >= numeric_from else ''}>{_e(h)}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=n' if i >= numeric_from else ''}>{_e(f'{c:,}' if isinstance(c, int) else c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:1.5rem;color:#1d2330;background:#fafbfc}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:1.8rem 0 .6rem;border-bottom:1px solid #dde1e6;
padding-bottom:.25rem}.meta{color:#5b6472;margin:0}table{border-collapse:collapse;width:100%;background:#fff}
th,td{padding:.3rem .6rem;border-bottom:1px solid #eceff3;text-align:left;vertical-align:top}
th{background:#f1f3f6;font-weight:600}.n{text-align:right;font-variant-numeric:tabular-nums}
.f{border-left:5px solid;padding:.5rem .8rem;margin:.5rem 0;background:#fff}
.f.error{border-color:#c62828}.f.warning{border-color:#ef8f00}.f.info{border-color:#1e6fd9}
.sev{font-weight:700;text-transform:uppercase;font-size:.8rem;margin-right:.5rem}
.error .sev{color:#c62828}.warning .sev{color:#a86200}.info .sev{color:#1e6fd9}
.f p{margin:.25rem 0}code{background:#f1f3f6;padding:0 .2rem;border-radius:3px}.none{color:#5b6472}
.banner{border:1px solid;border-left-width:8px;padding:.6rem 1rem;margin:.8rem 0 1rem;background:#fff}
.banner.bad{border-color:#c62828;background:#fdecea}.banner.warn{border-color:#ef8f00;background:#fff6e5}
.banner.good{border-color:#2e7d32;background:#edf7ee}.banner .head{font-size:1.15rem;font-weight:700;margin:0 0 .4rem}
.bad .head{color:#b71c1c}.warn .head{color:#8a5200}.good .head{color:#1b5e20}
.banner table{background:transparent;width:auto}
.banner th,.banner td{border:0;padding:.1rem 1rem .1rem 0;background:none}
"""


def render(state: StatusState) -> bytes:
    """The whole page as UTF-8 bytes."""
    now = state.generated_at
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="refresh" content="{REFRESH_S}">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>celery-janitor status</title><style>{_CSS}</style></head><body>",
        "<h1>celery-janitor</h1>",
        _banner(state.banner, state.sweeps, now, state.skips) if state.banner is not None else "",
        f"<p class=meta>version {_e(state.version)} &middot; {_e(mask_url(state.redis_url) or 'no Redis URL')}"
        + (f" &middot; broker {_e(mask_url(state.broker_url))}" if state.broker_url else "")
        + f" &middot; page generated {_e(now.strftime('%Y-%m-%d %H:%M:%S %Z'))}</p>",
        _findings(state.findings),
        _sweeps(state.sweeps, now),
        _census(state.census, state.census_at, now),
        _broker(state.broker, state.broker_at, state.workers, now),
        "</body></html>",
    ]
    return "".join(parts).encode()


def _banner(
    b: Banner, runs: Sequence[SweepRun], now: dt.datetime, skips: tuple[int, str, dt.datetime] | None = None
) -> str:
    """Trouble first: a headline for the worst thing now, then Redis, role, memory and sweeps at a glance."""
    r = b.redis
    since = f" since {_at(r.since)} ({duration((now - r.since).total_seconds())})" if r.since else ""
    if r.up is False:
        tone, head = "bad", f"Redis is down: {r.reason}"
        redis_row = f"down{since}"
    elif r.up is None:
        tone, head = "warn", "Redis not checked yet"
        redis_row = "not checked yet"
    else:
        redis_row = f"up{since}"
        tone, head = "good", "Redis is up; ready"
        if b.ready is not None and not b.ready[0]:
            tone, head = "bad", f"Not ready: {b.ready[1]}"
    rows: list[tuple[str, str]] = [("Redis", redis_row)]
    if b.ready is not None:
        rows.append(("/readyz", "ready" if b.ready[0] else f"503 {b.ready[1]}"))
    rows.append(("Role", _role(b)))
    rows.append(("Memory", _memory(b.memory, b.info_at, now)))
    rows.append(("Last sweep", _last_sweep(runs[0] if runs else None, now) + _skips(skips, now)))
    rows.append(("Next sweep", _next_sweep(b, now)))
    if b.watch is not None:
        rows.append(("Watch mode", b.watch if b.leader else "on the leader"))
    if b.budget:
        rows.append(("Command budget", b.budget))
    body = "".join(f"<tr><th scope=row>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<div class='banner {tone}' id=banner><p class=head>{_e(head)}</p><table>{body}</table></div>"


def _role(b: Banner) -> str:
    if b.leader:
        return "leader: this janitor holds the lease and sweeps"
    if b.leader is None:
        return "unknown"
    if b.redis.up is not True:
        return "not leader: the lease lives in Redis, which cannot be reached"
    return "follower: another janitor holds the lease and sweeps; this one stands by"


def _memory(m: MemoryInfo | None, at: dt.datetime | None, now: dt.datetime) -> str:
    if m is None:
        return "not read yet" if at is None else "INFO has no memory section"
    if m.maxmemory:
        used = f"{size(m.used)} of {size(m.maxmemory)} maxmemory ({m.used / m.maxmemory:.0%})"
    else:
        used = f"{size(m.used)}, no maxmemory limit"
    return f"{used}; policy {m.policy}; {m.evicted_keys:,} keys evicted (INFO read {_ago(now, at)})"


def _last_sweep(run: SweepRun | None, now: dt.datetime) -> str:
    if run is None:
        return "none finished yet"
    r = run.report
    mode = "dry run" if r.dry_run else "live"
    done = "" if r.completed else ", stopped early"
    return (
        f"{_ago(now, run.finished_at)} ({_at(run.finished_at)}), {mode}{done}: {sum(r.deleted.values()):,} deleted, "
        f"{sum(r.ttl_applied.values()) + sum(r.ttl_capped.values()):,} TTLs set, {sum(r.skipped.values()):,} skipped"
    )


def _skips(skips: tuple[int, str, dt.datetime] | None, now: dt.datetime) -> str:
    if skips is None:
        return ""
    n, reason, at = skips
    why = SKIP_REASONS.get(reason, reason)
    return f"; {n:,} later run{'s' * (n != 1)} skipped ({why}), the last {_ago(now, at)}"


def _next_sweep(b: Banner, now: dt.datetime) -> str:
    if b.redis.up is not True:
        return "once Redis answers and this janitor holds the lease"
    if not b.leader:
        return "on the leader; this janitor sweeps as soon as it takes the lease"
    if b.next_sweep is None:
        return "not scheduled"
    return f"in {duration(max(0.0, (b.next_sweep - now).total_seconds()))} ({_at(b.next_sweep)})"


def _findings(found: Sequence[Finding]) -> str:
    out = ["<h2 id=findings>Findings</h2>"]
    if not found:
        out.append("<p class=none>No findings.</p>")
    for f in found:
        out.append(
            f"<div class='f {_e(f.severity)}'><p><span class=sev>{_e(f.severity)}</span><strong>{_e(f.title)}</strong>"
            f"</p><p>Seen: {_e(f.evidence)}</p><p>Fix: {_e(f.fix)}</p></div>"
        )
    return "".join(out)


def _sweeps(runs: Sequence[SweepRun], now: dt.datetime) -> str:
    out = ["<h2 id=sweeps>Last sweeps</h2>"]
    if not runs:
        return out[0] + "<p class=none>No sweep has finished yet.</p>"
    rows = []
    for run in runs:
        r = run.report
        rows.append(
            (
                _ago(now, run.finished_at),
                ("dry run" if r.dry_run else "live") + ("" if r.completed else ", stopped early"),
                r.scanned,
                r.celery_keys,
                sum(r.ttl_applied.values()) + sum(r.ttl_capped.values()),
                sum(r.deleted.values()),
                sum(r.skipped.values()),
                size(r.bytes_deleted),
                f"{r.duration_s:.2f} s",
            )
        )
    out.append(
        _table(
            ["finished", "mode", "scanned", "Celery keys", "TTL set", "deleted", "skipped", "freed", "took"],
            rows,
            numeric_from=2,
        )
    )
    return "".join(out)


def _census(census: Census | None, at: dt.datetime | None, now: dt.datetime) -> str:
    out = ["<h2 id=census>Keyspace census</h2>"]
    if census is None:
        return out[0] + "<p class=none>No census yet.</p>"
    out.append(f"<p class=meta>{census.total:,} keys, counted {_e(_ago(now, at))}</p>")
    rows = [
        (
            c,
            census.count(c),
            census.without_ttl[c],
            size(census.est_bytes(c)) if census.est_bytes(c) is not None else "-",
        )
        for c in census.categories()
    ]
    out.append(_table(["category", "keys", "no TTL", "est. size"], rows))
    if census.tasks():
        out.append("<p class=meta>Finished results by age (date_done)</p>")
        out.append(
            _table(
                [label for label, _ in AGE_BUCKETS], [[census.result_age[b] for b, _ in AGE_BUCKETS]], numeric_from=0
            )
        )
    return "".join(out)


def _broker(report: BrokerReport | None, at: dt.datetime | None, workers: Workers | None, now: dt.datetime) -> str:
    out = ["<h2 id=queues>Queues</h2>"]
    if report is None:
        out.append("<p class=none>Broker not checked yet.</p>")
    else:
        out.append(f"<p class=meta>read {_e(_ago(now, at))}</p>")
        rows = [
            (
                q.name,
                q.total,
                ", ".join(f"p{p}: {n:,}" for p, n in sorted(q.by_priority.items())) or "-",
                duration(q.oldest_age_s) if q.oldest_age_s is not None else "-",
            )
            for q in report.queues
        ]
        out.append(_table(["queue", "waiting", "by priority", "oldest"], rows, numeric_from=1) if rows else "")
        states = ", ".join(f"{s} {n:,}" for s, n in sorted(report.by_state.items()) if n) or "none"
        out.append(
            f"<p>Unacked: <strong>{report.unacked_total:,}</strong> ({_e(states)}); oldest "
            f"{_e(duration(report.oldest_unacked_age_s))}; "
            f"visibility timeout {_e(duration(report.visibility_timeout))}</p>"
        )
        out.append("<h2 id=stuck>Stuck messages</h2>")
        if not report.stuck:
            out.append("<p class=none>None past the visibility timeout.</p>")
        else:
            stuck_rows = [
                (m.task_name, m.task_id, m.queue, m.state, duration(report.now - m.delivered_at), m.retries)
                for m in report.stuck[:MAX_STUCK_ROWS]
            ]
            out.append(_table(["task", "id", "queue", "state", "delivered", "retries"], stuck_rows, numeric_from=5))
            if len(report.stuck) > MAX_STUCK_ROWS:
                out.append(f"<p class=meta>and {len(report.stuck) - MAX_STUCK_ROWS:,} more</p>")
    if workers is not None and workers.listened_s > 0:
        names = ", ".join(sorted(workers.alive)) or "none"
        out.append(f"<p>Workers alive (heartbeats): {_e(names)}</p>")
    return "".join(out)
