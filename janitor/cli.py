"""Command line: ``celery-janitor {sweep,run,demo,config}``. Exit codes, not tracebacks."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import redis
import structlog

from janitor import __version__, census, config, connection, demo, embedded, logs
from janitor.sweeps.results import SweepReport, sweep

EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 2

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
  celery-janitor run                            the long-running service"""


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
    verbs.add_parser("run", help="the long-running service: scheduled sweeps, metrics, health endpoints")
    dm = verbs.add_parser("demo", help="start a private server, fill it with a dirty Celery keyspace, sweep it")
    dm.add_argument("--results", type=int, default=20_000, help="result keys to write (default 20000)")
    verbs.add_parser("config", help="print the effective settings (password masked)")
    return parser


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = config.load(environ)
    except config.ConfigError as exc:
        print(f"celery-janitor: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    logs.configure(settings.log_level, settings.log_format)
    if args.verb == "config":
        shown = settings.model_dump() | {
            "redis_url": settings.masked_url,
            "redis_url_source": settings.redis_url_source,
        }
        print(json.dumps(shown, indent=2))
        return EXIT_OK
    if args.verb == "demo":
        return _demo(settings, args.results)
    if args.verb == "run":
        from janitor import daemon  # noqa: PLC0415 - the daemon's imports are only paid by `run`

        return daemon.run(settings)
    return _sweep(settings, dry_run=args.dry_run or settings.dry_run, as_json=args.json)


def _sweep(settings: config.Settings, *, dry_run: bool, as_json: bool) -> int:
    log = structlog.get_logger("janitor.sweep")
    if not settings.redis_url:
        print(
            "celery-janitor: no Redis URL: set JANITOR_REDIS_URL (or REDIS_URL) to redis://[user:password@]host:port/db",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    try:
        client = connection.connect(settings.redis_url, socket_timeout=settings.socket_timeout)
        report = sweep(client, settings, dry_run=dry_run)
    except connection.URLError as exc:
        print(f"celery-janitor: JANITOR_REDIS_URL: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError, OSError) as exc:
        print(
            f"celery-janitor: {settings.redis_url_source} {settings.masked_url}: {connection.describe_error(exc)}",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    except redis.ResponseError as exc:
        print(f"celery-janitor: Redis refused the sweep: {connection.describe_error(exc)}", file=sys.stderr)
        return EXIT_FAILED
    log.info("sweep.finished", url=settings.masked_url, **report.as_dict())
    if as_json:
        print(json.dumps(report.as_dict()))
    elif sys.stdout.isatty():
        _print_report(report, sys.stdout)
    return EXIT_OK


def _print_report(report: SweepReport, out: TextIO) -> None:
    data: dict[str, Any] = report.as_dict()
    verb = "would be" if report.dry_run else "were"
    print(
        f"\nscanned {data['scanned']:,} keys ({data['celery_keys']:,} Celery) in {data['duration_s']:.2f} s", file=out
    )
    for title, counts in (
        ("given a TTL", data["ttl_applied"]),
        ("TTL shortened", data["ttl_capped"]),
        ("deleted", data["deleted"]),
        ("skipped (left alone)", data["skipped"]),
    ):
        if counts:
            print(f"  {title} ({verb}): " + ", ".join(f"{k} {v:,}" for k, v in counts.items()), file=out)
    print(f"  value bytes freed: {data['bytes_deleted']:,}; Redis commands sent: {data['commands_total']:,}", file=out)


def _demo(settings: config.Settings, results: int) -> int:
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
            f"{sum(v for k, v in after.without_ttl.items() if k != 'other')}"
        )
    return EXIT_OK


def _print_census(before: census.Census, after: census.Census) -> None:
    cats = [row[0] for row in before.rows()]
    print(f"{'category':<20}{'before: TTL':>12}{'no TTL':>9}{'after: TTL':>13}{'no TTL':>9}")
    for cat in cats:
        print(
            f"{cat:<20}{before.with_ttl[cat]:>12,}{before.without_ttl[cat]:>9,}"
            f"{after.with_ttl[cat]:>13,}{after.without_ttl[cat]:>9,}"
        )
