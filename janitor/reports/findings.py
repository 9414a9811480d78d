"""What `celery-janitor diagnose` concludes, as pure functions of what it collected.

Each check looks at numbers only (no I/O, no clock) and returns zero or more
:class:`Finding`, each with the evidence and the exact fix, so every rule is
unit-testable with hand-made inputs. ``error`` means Celery is losing or
duplicating work, or is about to; ``warning`` means Redis is filling up or
something needs a look; ``info`` is context.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from janitor.operations.census import BEAT, RPC_REPLY, Census
from janitor.reports.text import duration, size

if TYPE_CHECKING:
    from janitor.operations.beat import BeatReport
    from janitor.operations.broker import BrokerReport

Severity = Literal["info", "warning", "error"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")
# Policies that may evict keys without a TTL: Celery's queues, unacked and
# bindings have none, and kombu silently drops a message whose binding is gone.
UNSAFE_POLICIES = frozenset({"allkeys-lru", "allkeys-lfu", "allkeys-random"})
MEMORY_WARN, MEMORY_ERROR = 0.75, 0.90
HEARTBEAT_FREQ_S = 2.0  # Celery's default worker heartbeat interval


@dataclass(frozen=True, slots=True)
class Finding:
    """One conclusion: how bad, what was seen (numbers), and what to do."""

    severity: Severity
    code: str
    title: str
    evidence: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class MemoryInfo:
    """The INFO memory/stats fields the checks read (0 maxmemory = no limit)."""

    used: int
    peak: int
    maxmemory: int
    fragmentation: float | None
    policy: str
    evicted_keys: int

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> MemoryInfo | None:
        """From INFO (all sections); None when the server hides the memory section."""
        if "used_memory" not in info:
            return None
        frag = info.get("mem_fragmentation_ratio")
        return cls(
            used=int(info["used_memory"]),
            peak=int(info.get("used_memory_peak", 0)),
            maxmemory=int(info.get("maxmemory", 0)),
            fragmentation=float(frag) if isinstance(frag, int | float) else None,
            policy=str(info.get("maxmemory_policy", "unknown")),
            evicted_keys=int(info.get("evicted_keys", 0)),
        )

    @property
    def used_fraction(self) -> float | None:
        return self.used / self.maxmemory if self.maxmemory else None


@dataclass(frozen=True, slots=True)
class Workers:
    """Who sent a heartbeat while we listened (``listened_s`` 0: not listened)."""

    alive: dict[str, float] = field(default_factory=dict)
    listened_s: float = 0.0


@dataclass(frozen=True)
class Inputs:
    """Everything the checks look at; ``broker`` None means the broker was not read (see ``broker_error``)."""

    census: Census | None
    memory: MemoryInfo | None = None
    broker: BrokerReport | None = None
    broker_error: str = ""
    workers: Workers | None = None
    visibility_timeout: int = 3600
    tls_verifies: bool | None = None
    redbeat: BeatReport | None = None


def evaluate(inputs: Inputs) -> list[Finding]:
    """All findings, errors first."""
    found = [f for check in CHECKS for f in check(inputs)]
    return sorted(found, key=lambda f: SEVERITIES.index(f.severity))


def worst(findings: Sequence[Finding]) -> Severity | None:
    return next((s for s in SEVERITIES if any(f.severity == s for f in findings)), None)


def _pct(part: float, whole: float) -> str:
    return f"{part / whole:.0%}" if whole else "0%"


# -- memory ---------------------------------------------------------------------
def eviction_policy(i: Inputs) -> list[Finding]:
    m = i.memory
    if m is None or m.policy not in UNSAFE_POLICIES:
        return []
    limited = m.maxmemory > 0
    return [
        Finding(
            "error" if limited else "warning",
            "eviction_policy_unsafe",
            f"maxmemory-policy {m.policy} can evict Celery's queues, unacked messages and bindings",
            f"maxmemory-policy={m.policy}, maxmemory={size(m.maxmemory) if limited else 'unlimited (0)'}; "
            "queues, unacked and _kombu.binding.* have no TTL, so allkeys-* policies may evict them"
            + ("" if limited else " once a maxmemory is set"),
            "set `maxmemory-policy noeviction` (`CONFIG SET maxmemory-policy noeviction`, and in redis.conf or "
            "your provider's settings); volatile-* policies are safe too, they only evict keys with a TTL",
        )
    ]


def evictions(i: Inputs) -> list[Finding]:
    m = i.memory
    if m is None or m.evicted_keys <= 0:
        return []
    return [
        Finding(
            "warning",
            "keys_evicted",
            f"Redis has evicted {m.evicted_keys:,} keys since it started",
            f"INFO stats evicted_keys={m.evicted_keys:,} under maxmemory-policy={m.policy}",
            "free memory (`celery-janitor sweep`), raise maxmemory, and check that your queues and "
            "_kombu.binding.* keys still exist: kombu silently drops messages whose binding is gone",
        )
    ]


def memory_pressure(i: Inputs) -> list[Finding]:
    m = i.memory
    if m is None or m.used_fraction is None or m.used_fraction < MEMORY_WARN:
        return []
    reclaim = _no_ttl_result_bytes(i.census)
    hint = f" (results without a TTL take about {size(reclaim)})" if reclaim else ""
    return [
        Finding(
            "error" if m.used_fraction >= MEMORY_ERROR else "warning",
            "memory_near_max",
            f"Redis memory is at {m.used_fraction:.0%} of maxmemory",
            f"used_memory {size(m.used)} of maxmemory {size(m.maxmemory)}; policy {m.policy}",
            f"free memory with `celery-janitor sweep`{hint}, or raise maxmemory; at the limit "
            + ("writes fail with OOM errors" if m.policy == "noeviction" else f"Redis evicts keys ({m.policy})"),
        )
    ]


def fragmentation(i: Inputs) -> list[Finding]:
    m = i.memory
    if m is None or m.fragmentation is None or m.fragmentation < 1.5 or m.used < 64 * 1024 * 1024:
        return []
    return [
        Finding(
            "info",
            "memory_fragmented",
            f"memory fragmentation ratio is {m.fragmentation:.2f}",
            f"mem_fragmentation_ratio={m.fragmentation:.2f} with used_memory {size(m.used)} (often after mass deletes)",
            "`CONFIG SET activedefrag yes` (Redis/Valkey built with jemalloc), or restart the server at a quiet time",
        )
    ]


def _no_ttl_result_bytes(census: Census | None) -> int:
    if census is None:
        return 0
    total = 0
    for cat in census.categories():
        if cat.startswith("task:") or cat in {"group", "chord"}:
            est = census.est_bytes(cat)
            if est and census.count(cat):
                total += round(est * census.without_ttl[cat] / census.count(cat))
    return total


# -- result backend ---------------------------------------------------------------
def results_without_ttl(i: Inputs) -> list[Finding]:
    c = i.census
    if c is None or not c.tasks(ttl=False):
        return []
    none, total = c.tasks(ttl=False), c.tasks()
    pressure = i.memory is not None and (i.memory.used_fraction or 0) >= MEMORY_WARN
    bytes_hint = _no_ttl_result_bytes(c)
    # Keys the sweep refuses on purpose (unreadable, dated in the future) have findings of their own.
    refused = c.without_ttl["task:unreadable"] + c.future
    if refused >= none:
        sweep = (
            "`celery-janitor sweep` leaves these alone on purpose (see the findings on unreadable and "
            "future-dated results for what to do with them)"
        )
    elif refused:
        sweep = (
            f"run `celery-janitor sweep` to give {none - refused:,} of them a TTL, or `celery-janitor run` to keep "
            f"doing it; it leaves the other {refused:,} alone on purpose (see the findings on unreadable and "
            "future-dated results)"
        )
    else:
        sweep = "run `celery-janitor sweep` to give existing keys a TTL, or `celery-janitor run` to keep doing it"
    return [
        Finding(
            "error" if pressure else "warning",
            "results_without_ttl",
            f"{none:,} result keys have no TTL ({_pct(none, total)})",
            f"{none:,} of {total:,} celery-task-meta-* keys never expire"
            + (f"; with groups and chords they hold about {size(bytes_hint)}" if bytes_hint else "")
            + (f"; oldest result finished {duration(c.oldest_result_age_s)} ago" if c.oldest_result_age_s else ""),
            "set `result_expires` in your Celery config (e.g. `app.conf.result_expires = 86400`; None or 0 "
            f"means forever), and {sweep}",
        )
    ]


def groups_without_ttl(i: Inputs) -> list[Finding]:
    c = i.census
    if c is None:
        return []
    none = c.without_ttl["group"] + c.without_ttl["chord"]
    if not none:
        return []
    return [
        Finding(
            "warning",
            "groups_without_ttl",
            f"{none:,} group and chord keys have no TTL",
            f"celery-taskset-meta-*: {c.without_ttl['group']:,} groups, {c.without_ttl['chord']:,} chord keys "
            "without a TTL (Celery only sets one when result_expires > 0)",
            "set `result_expires` in your Celery config, and run `celery-janitor sweep`",
        )
    ]


def unreadable_results(i: Inputs) -> list[Finding]:
    c = i.census
    if c is None or not (n := c.count("task:unreadable")):
        return []
    return [
        Finding(
            "info",
            "unreadable_results",
            f"{n:,} result keys could not be decoded",
            f"{n:,} celery-task-meta-* values are not a Celery result the janitor can read inertly, or are "
            "larger than JANITOR_MAX_VALUE_BYTES and not readable from their head and tail"
            + (f"; {stay:,} of them have no TTL" if (stay := c.without_ttl["task:unreadable"]) else ""),
            "`celery-janitor sweep` never writes a key it cannot read, so these stay until you act: look at one "
            "(`redis-cli --scan --pattern 'celery-task-meta-*' | head`, then `redis-cli TYPE`/`STRLEN` on it); if "
            "they are results you can lose, give them a TTL by hand (`redis-cli EXPIRE <key> 86400 NX`), or raise "
            "JANITOR_MAX_VALUE_BYTES if they are just large results",
        )
    ]


def large_results(i: Inputs) -> list[Finding]:
    c = i.census
    if c is None or not c.unjudged:
        return []
    return [
        Finding(
            "warning",
            "large_results_unreadable",
            f"{c.unjudged:,} result keys holding {size(c.unjudged_bytes)} have no TTL and cannot be read safely",
            f"{c.unjudged:,} celery-task-meta-* values over JANITOR_MAX_VALUE_BYTES ({size(c.unjudged_bytes)} in all) "
            "are not JSON as Celery writes it (pickle, msgpack, YAML, compressed, or date_done further than 4 KiB "
            "from the end): the janitor reads only their first and last 4 KiB, so it never touches them",
            "set `result_expires` in your Celery config so new results expire; for these, raise "
            "JANITOR_MAX_VALUE_BYTES above their size (each is then read whole, that much memory per key), or give "
            "them a TTL by hand (Redis 7+): `redis-cli --scan --pattern '*celery-task-meta-*' | while read -r k; do "
            '[ "$(redis-cli STRLEN "$k")" -gt 1048576 ] && redis-cli EXPIRE "$k" 86400 NX; done`',
        )
    ]


def _naive_offset(c: Census) -> int | None:
    """The zone offset (seconds, a whole number of half hours) naive dates are written in, relative to
    JANITOR_NAIVE_TIMEZONE: the furthest lead of a naive date over now, just short of a half-hour step
    (the newest result of an active app is minutes old). None when the leads fit no zone."""
    lead = c.naive_ahead_max_s
    if lead is None or lead < 20 * 60:
        return None
    offset = -(-round(lead) // 1800) * 1800
    return offset if offset - lead <= 15 * 60 and offset <= 14 * 3600 else None


def _utc_offset(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"UTC+{hours}" + (f":{rest // 60:02d}" if rest else "")


def naive_local_time(i: Inputs) -> list[Finding]:
    c = i.census
    offset = _naive_offset(c) if c is not None else None
    if c is None or offset is None:
        return []
    zone = _utc_offset(offset) if c.naive_zone == "UTC" else f"{duration(offset)} ahead of {c.naive_zone}"
    return [
        Finding(
            "warning",
            "naive_local_time",
            f"results are dated in local time {zone}; set JANITOR_NAIVE_TIMEZONE",
            f"{c.naive_ahead:,} results have a date_done with no UTC offset up to {duration(c.naive_ahead_max_s)} "
            f"ahead of now, read as {c.naive_zone}: the app writes naive local time (it replaced app.now, as Django "
            "projects with USE_TZ=False do), so the janitor keeps its results that much longer and skips the "
            "newest as dated in the future",
            "set JANITOR_NAIVE_TIMEZONE to the app's time zone (Django's TIME_ZONE, an IANA name such as "
            "Asia/Shanghai for UTC+8); zones west of UTC cannot be seen this way: their results look older",
        )
    ]


def future_results(i: Inputs) -> list[Finding]:
    c = i.census
    if c is None or not c.future:
        return []
    naive = _naive_offset(c) is not None
    cause = (
        "naive local time read as " + c.naive_zone + " (see the finding above)"
        if naive
        else "a worker clock running ahead (NTP), an app that replaced app.now, or dates not written by Celery"
    )
    return [
        Finding(
            "warning",
            "future_results",
            f"{c.future:,} results without a TTL are dated in the future: {size(c.future_bytes)} the sweep skips",
            f"{c.future:,} celery-task-meta-* keys have a date_done up to {duration(c.future_max_s)} ahead of now, "
            f"beyond JANITOR_FUTURE_TOLERANCE; they hold {size(c.future_bytes)} of values and get no TTL until now "
            f"passes their date; likely cause: {cause}",
            "set JANITOR_NAIVE_TIMEZONE if the dates are naive local time; fix the workers' clocks; raise "
            "JANITOR_FUTURE_TOLERANCE to cover a known skew; or give them a TTL by hand "
            "(`redis-cli EXPIRE <key> 86400 NX`)",
        )
    ]


def pidbox_replies(i: Inputs) -> list[Finding]:
    c = i.census
    in_census = c.without_ttl["pidbox_reply"] if c is not None else 0
    leaked = max(in_census, i.broker.leaked_reply_lists if i.broker is not None else 0)
    if not leaked:
        return []
    est = c.est_bytes("pidbox_reply") if c is not None else None
    return [
        Finding(
            "warning",
            "leaked_pidbox_replies",
            f"{leaked:,} pidbox reply lists leaked (no TTL)",
            f"{leaked:,} *.reply.celery.pidbox lists without a TTL"
            + (f", about {size(est)}" if est else "")
            + "; left by inspect/control calls whose caller went away (celery#6089)",
            "`celery-janitor sweep` gives them a TTL (JANITOR_REPLY_TTL); if you never use "
            "`celery inspect`/`control`, set `worker_enable_remote_control = False`",
        )
    ]


def rpc_replies(i: Inputs) -> list[Finding]:
    c = i.census
    n = c.count(RPC_REPLY) if c is not None else 0
    if not n:
        return []
    return [
        Finding(
            "warning",
            "rpc_reply_lists",
            f"{n:,} rpc:// result lists were never read",
            f"{n:,} lists named by a bare uuid, about {size(c.est_bytes(RPC_REPLY) if c else None)}: the rpc:// "
            "result backend's replies to clients that never called .get() (celery#7801)",
            "use `ignore_result=True` for tasks whose result nobody reads, or a redis:// result_backend with "
            "result_expires; celery-janitor does not delete these lists",
        )
    ]


def beat(i: Inputs) -> list[Finding]:
    c = i.census
    if c is None or c.count(BEAT):
        return []
    return [
        Finding(
            "info",
            "no_beat_keys",
            "no celery beat / RedBeat keys in this database",
            "no redbeat:*, celery-beat* or *celerybeat* keys",
            "if you schedule periodic tasks with RedBeat, its beat process is not running here: periodic tasks "
            "are not scheduled (stock `celery beat` keeps its schedule in a local file, so this is expected then)",
        )
    ]


def beat_not_scheduling(i: Inputs) -> list[Finding]:
    b = i.redbeat
    if b is None or not b.present or not b.overdue:
        return []
    more = "at least " if b.truncated else ""
    return [
        Finding(
            "error",
            "beat_not_scheduling",
            f"beat is not scheduling: {more}{b.overdue:,} entries overdue",
            f"{more}{b.overdue:,} of {b.entries:,} RedBeat entries are late by more than their interval (or by "
            f"JANITOR_BEAT_OVERDUE_AFTER when it is not stated), the latest by {duration(b.most_late_s)}",
            "check that one `celery beat -S redbeat.RedBeatScheduler` runs against this Redis and holds its lock "
            "(RedBeat's <prefix>:lock key); if RedBeat uses another key prefix, set JANITOR_REDBEAT_PREFIX to it",
        )
    ]


# -- broker and workers -------------------------------------------------------------
def broker_unavailable(i: Inputs) -> list[Finding]:
    if i.broker is not None or not i.broker_error:
        return []
    return [
        Finding(
            "info",
            "broker_unavailable",
            "broker checks unavailable",
            i.broker_error,
            "queue depths, unacked and stuck messages were not checked; the rest of this report stands",
        )
    ]


def no_workers(i: Inputs) -> list[Finding]:
    w = i.workers
    if w is None or w.listened_s <= 0 or w.alive:
        return []
    waiting = sum(q.total for q in i.broker.queues) if i.broker is not None else 0
    # Workers beat every 2 s by default and count as gone after 2 x that: a
    # shorter listen cannot tell "dead" from "between beats", so it only warns.
    conclusive = w.listened_s >= 2 * HEARTBEAT_FREQ_S
    short = "" if conclusive else f"; {w.listened_s:.0f} s is too short to be sure (use --listen 5 or more)"
    return [
        Finding(
            "error" if waiting and conclusive else "warning",
            "no_worker_heartbeat",
            f"no worker heartbeat in {w.listened_s:.0f} s",
            "no worker-heartbeat event on the celeryev channel (workers send one every 2 s by default)"
            + (f"; {waiting:,} messages are waiting in queues" if waiting else "")
            + short,
            "start a worker (`celery -A yourapp worker`); if workers run with --without-heartbeat or on another "
            "database, set JANITOR_BROKER_DB or ignore this",
        )
    ]


def eta_beyond_visibility(i: Inputs) -> list[Finding]:
    b = i.broker
    if b is None or b.max_eta_delay_s is None or b.max_eta_delay_s <= i.visibility_timeout:
        return []
    return [
        Finding(
            "error",
            "eta_beyond_visibility_timeout",
            "visibility_timeout shorter than your longest ETA: tasks will run twice",
            f"an unacked message has an ETA {duration(b.max_eta_delay_s)} after delivery; visibility_timeout is "
            f"{duration(i.visibility_timeout)}, so kombu redelivers it while a worker still holds it (kombu#337)",
            f"raise `broker_transport_options = {{'visibility_timeout': {_next_hour(b.max_eta_delay_s) + 3600}}}` "
            "above "
            "your longest countdown/ETA (and JANITOR_VISIBILITY_TIMEOUT to match), or schedule far-future work "
            "with beat instead of an ETA, or run `celery-janitor run` with JANITOR_ETA_GUARD=true: it re-scores "
            "held ETA messages so kombu restores none before its ETA",
        )
    ]


def _next_hour(seconds: float) -> int:
    return -(-int(seconds) // 3600) * 3600


def stuck(i: Inputs) -> list[Finding]:
    b = i.broker
    if b is None or not b.stuck:
        return []
    tasks: dict[str, int] = {}
    for m in b.stuck:
        tasks[m.task_name] = tasks.get(m.task_name, 0) + 1
    top = ", ".join(f"{name} x{n}" for name, n in sorted(tasks.items(), key=lambda t: -t[1])[:3])
    return [
        Finding(
            "warning",
            "stuck_unacked",
            f"{len(b.stuck):,} unacked messages are past the visibility timeout",
            f"{len(b.stuck):,} of {b.unacked_total:,} unacked messages delivered over "
            f"{duration(b.visibility_timeout)} ago; oldest {duration(b.oldest_unacked_age_s)}; {top}",
            "a running worker consuming their queue restores them (kombu checks about every 100 s); with none, "
            "nothing ever does: start one, or run `celery-janitor restore --dry-run`, then `celery-janitor restore` "
            "(JANITOR_VISIBILITY_TIMEOUT must equal the workers')",
        )
    ]


def running_overdue(i: Inputs) -> list[Finding]:
    b = i.broker
    if b is None or not b.overdue_running:
        return []
    first = max(b.overdue_running, key=lambda m: b.now - m.delivered_at)
    more = len(b.overdue_running) - 1
    return [
        Finding(
            "error",
            "running_past_visibility_timeout",
            f"{len(b.overdue_running):,} running tasks have outlived the visibility timeout: kombu will run them twice",
            f"task {first.task_name} {first.task_id} has run {duration(b.now - first.delivered_at)} on worker "
            f"{first.worker}, longer than visibility_timeout {duration(b.visibility_timeout)}: kombu will redeliver "
            "it to another worker while this one still runs it" + (f" ({more:,} more like it)" if more else ""),
            "raise `broker_transport_options = {'visibility_timeout': ...}` above your longest task (and "
            "JANITOR_VISIBILITY_TIMEOUT to match), or run `celery-janitor run` with JANITOR_RUNNING_GUARD=true: it "
            "keeps running tasks' scores fresh while their worker lives; the janitor itself never restores a task "
            "whose worker is alive",
        )
    ]


def orphaned_started(i: Inputs) -> list[Finding]:
    b = i.broker
    if b is None or not b.orphaned_started:
        return []
    hosts = sorted({h for _, h in b.orphaned_started})
    return [
        Finding(
            "warning",
            "orphaned_started",
            f"{len(b.orphaned_started):,} tasks are STARTED on workers that sent no heartbeat",
            f"STARTED results of unacked (acks_late) messages on {', '.join(hosts[:5])}"
            + (" and others" if len(hosts) > 5 else ""),
            "the worker died mid-task; its message comes back after visibility_timeout (make the task idempotent); "
            "the STARTED result gets a TTL from `celery-janitor sweep` (JANITOR_PENDING_TTL)",
        )
    ]


def separator_mismatch(i: Inputs) -> list[Finding]:
    b = i.broker
    if b is None or not b.foreign_binding:
        return []
    return [
        Finding(
            "error",
            "broker_separator_mismatch",
            "the workers' kombu separator is not JANITOR_BROKER_SEP",
            f"binding {b.foreign_binding!r} is not routing_key, pattern and queue joined by JANITOR_BROKER_SEP: "
            "priority lists and queues are named with another separator, so the janitor misreads them and "
            "refuses to restore",
            "set JANITOR_BROKER_SEP to your workers' `broker_transport_options['sep']` (kombu's default is "
            "'\\x06\\x16')",
        )
    ]


def hash_only(i: Inputs) -> list[Finding]:
    b = i.broker
    n = b.by_state.get("hash_only", 0) if b is not None else 0
    if not n:
        return []
    return [
        Finding(
            "warning",
            "unacked_without_index",
            f"{n:,} unacked messages have no unacked_index entry",
            f"{n:,} entries of the unacked hash are missing from unacked_index, so kombu never restores them",
            "they are lost unless restored: `celery-janitor run` with JANITOR_RESTORE_STUCK=true, or inspect them "
            "with `redis-cli HGETALL unacked`",
        )
    ]


def tls(i: Inputs) -> list[Finding]:
    if i.tls_verifies is not False:
        return []
    return [
        Finding(
            "warning",
            "tls_not_verified",
            "TLS is on but the server certificate is not verified",
            "the rediss:// URL has ssl_cert_reqs=none: traffic is encrypted, but anyone in the path can pose as Redis",
            "use `ssl_cert_reqs=required` (and `ssl_ca_certs=/path/ca.pem` for a private CA) in the URL",
        )
    ]


CHECKS: tuple[Callable[[Inputs], list[Finding]], ...] = (
    eviction_policy,
    evictions,
    memory_pressure,
    fragmentation,
    results_without_ttl,
    groups_without_ttl,
    unreadable_results,
    large_results,
    naive_local_time,
    future_results,
    pidbox_replies,
    rpc_replies,
    beat,
    beat_not_scheduling,
    broker_unavailable,
    no_workers,
    eta_beyond_visibility,
    stuck,
    running_overdue,
    orphaned_started,
    separator_mismatch,
    hash_only,
    tls,
)


def as_dicts(findings: Sequence[Finding]) -> list[dict[str, Any]]:
    return [f.as_dict() for f in findings]
