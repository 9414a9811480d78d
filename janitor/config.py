"""Settings: environment only (12-factor), ``JANITOR_`` prefix, validated at start-up.

:func:`load` is the one reader of the environment: it finds the Redis URLs among the
variables Celery and hosting platforms set, names the variable behind every error,
and validates everything through :class:`Settings`.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import zoneinfo
from collections.abc import Mapping
from typing import Annotated, Literal
from urllib.parse import urlsplit

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from redis.retry import Retry

from janitor.celery_model.keyspace import KOMBU_PRIORITY_STEPS, KOMBU_SEP, Layout
from janitor.redis_io import connection
from janitor.redis_io.connection import mask_url

# Where the Redis URL may come from, in order. Celery's own variables come last
# and only count when they name a Redis server.
URL_SOURCES = ("JANITOR_REDIS_URL", "REDIS_URL", "UPSTASH_REDIS_URL", "CELERY_RESULT_BACKEND", "CELERY_BROKER_URL")
_REDIS_SCHEMES = {"redis", "rediss", "unix", "socket", "sentinel"}
NO_URL = "celery-janitor: no Redis URL: set JANITOR_REDIS_URL (or REDIS_URL) to redis://[user:password@]host:port/db"

# JANITOR_* variables read outside Settings; any other is reported as unknown. The test suite's own is here so
# a run of it does not warn.
READ_ELSEWHERE = ("JANITOR_FAULTS_REPORT",)
# Settings fields that no variable sets (filled in by load()).
_NOT_VARIABLES = {"redis_url_source", "broker_url_source"}

Seconds = Annotated[int, Field(ge=1, le=10 * 365 * 86400)]


class ConfigError(Exception):
    """A setting is missing or wrong; the message names it and says what to do."""


class Settings(BaseModel):
    """Every setting the janitor reads. Env name = ``JANITOR_`` + field name, upper case."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    redis_url: str = Field(default="", repr=False)
    redis_url_source: str = Field(default="", exclude=True)
    # The broker's Redis when it is not the results' (another db or server): unacked, queues,
    # heartbeats and restore go there; sweeps, census and the lease stay on redis_url.
    broker_url: str = Field(default="", repr=False)
    broker_url_source: str = Field(default="", exclude=True)
    # With a sentinel:// URL: the master's name (Celery's master_name transport
    # option) and the sentinels' own password, when they have one (sentinel_kwargs).
    sentinel_master: str = ""
    sentinel_password: str = Field(default="", repr=False)
    # The URL names one node of a Redis Cluster: `sweep` and `run` discover and sweep every primary.
    redis_cluster: bool = False
    key_prefix: str = ""
    broker_key_prefix: str = ""
    result_ttl: Seconds = 86400
    failure_ttl: Seconds = 604800
    group_ttl: Seconds = 86400
    pending_ttl: Seconds = 604800
    reply_ttl: Seconds = 300
    cap_ttl: bool = False
    future_tolerance: Annotated[int, Field(ge=0)] = 300
    # IANA zone a date_done with no UTC offset is written in (stock Celery <= 5.3: UTC).
    naive_timezone: str = "UTC"
    scan_count: Annotated[int, Field(ge=10, le=100_000)] = 1000
    batch_bytes: Annotated[int, Field(ge=64 * 1024, le=512 * 1024 * 1024)] = 4 * 1024 * 1024
    max_value_bytes: Annotated[int, Field(ge=1024, le=512 * 1024 * 1024)] = 1024 * 1024
    max_batch_ms: Annotated[float, Field(ge=0.5, le=1000)] = 5.0
    max_keys_per_second: Annotated[int, Field(ge=0)] = 0
    dry_run: bool = False
    socket_timeout: Annotated[float, Field(gt=0, le=600)] = 10.0
    log_level: str = "info"
    log_format: str = "auto"
    # daemon (`celery-janitor run`): seconds between runs of each job, random extra
    # delay as a fraction of the interval, the HTTP server, shutdown and lease timing.
    sweep_interval: Annotated[float, Field(gt=0, le=7 * 86400)] = 300.0
    census_interval: Annotated[float, Field(gt=0, le=7 * 86400)] = 3600.0
    info_interval: Annotated[float, Field(gt=0, le=86400)] = 120.0
    broker_interval: Annotated[float, Field(gt=0, le=86400)] = 300.0
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.1
    # Commands a day the daemon may send (0: no budget): it stretches the intervals above to fit
    # (janitor.service.budget), and says what freshness that buys.
    daily_command_budget: Annotated[int, Field(ge=0)] = 0
    # Watch mode (janitor.service.watcher): new results get their TTL from keyspace notifications;
    # full passes then run every safety_sweep_interval while it is unbroken, else every sweep_interval.
    watch: Literal["auto", "on", "off"] = "auto"
    safety_sweep_interval: Annotated[float, Field(gt=0, le=30 * 86400)] = 86400.0
    metrics_host: str = ""
    metrics_port: Annotated[int, Field(ge=1, le=65535)] = 9810
    shutdown_timeout: Annotated[float, Field(gt=0, le=3600)] = 10.0
    lease_ttl: Annotated[float, Field(ge=1, le=3600)] = 300.0
    # Abandoned STARTED results (janitor.operations.reap): rewritten to FAILURE (WorkerLostError) once
    # their worker has been silent reap_after seconds and their message is not in unacked.
    reap_abandoned: bool = False
    reap_after: Annotated[float, Field(ge=1, le=7 * 86400)] = 300.0
    reap_interval: Annotated[float, Field(gt=0, le=86400)] = 60.0
    # RedBeat (janitor.operations.beat): its key prefix (redbeat_key_prefix) and how late an entry whose
    # interval its definition does not state (crontab, rrule, solar) may be before beat counts as stopped.
    redbeat_prefix: str = "redbeat:"
    beat_overdue_after: Annotated[float, Field(gt=0, le=30 * 86400)] = 300.0
    # broker: must match the workers' broker_transport_options (kombu's defaults shown)
    visibility_timeout: Seconds = 3600
    queues: str = ""  # comma-separated queue names, added to those found in _kombu.binding.*
    broker_sep: str = KOMBU_SEP
    priority_steps: str = ",".join(map(str, KOMBU_PRIORITY_STEPS))
    unacked_key: str = "unacked"
    unacked_index_key: str = "unacked_index"
    unacked_mutex_key: str = "unacked_mutex"
    # The guards (janitor.operations.guards) raise unacked_index scores so kombu's own restore
    # waits: held ETA messages until eta + eta_guard_grace, running tasks while their worker lives.
    eta_guard: bool = False
    eta_guard_grace: Annotated[float, Field(ge=0, le=86400)] = 60.0
    running_guard: bool = False
    guard_interval: Annotated[float, Field(gt=0, le=86400)] = 30.0
    unacked_mutex_expire: Seconds = 300
    unacked_page: Annotated[int, Field(ge=10, le=5000)] = 500  # Lua unpack() limit is ~8000
    restore_stuck: bool = False
    max_restores: Annotated[int, Field(ge=0, le=1000)] = 3
    broker_db: Annotated[int, Field(ge=0)] | None = None  # heartbeat channel /<db>.celeryev; default: the URL's db
    # Dead-letter lists (janitor.dead.<queue>): the broker check trims each to dead_max entries and drops
    # entries recorded more than dead_max_age seconds ago, oldest first (0: no cap / no age limit).
    dead_max: Annotated[int, Field(ge=0)] = 0
    dead_max_age: Annotated[int, Field(ge=0)] = 0

    @field_validator("priority_steps")
    @classmethod
    def _steps(cls, value: str) -> str:
        try:
            steps = sorted({int(s) for s in value.split(",") if s.strip()})
        except ValueError:
            raise ValueError("must be comma-separated integers, e.g. 0,3,6,9") from None
        if not steps or steps[0] != 0 or steps[-1] > 255:
            raise ValueError("must start at 0 and stay within 0..255, e.g. 0,3,6,9")
        return ",".join(map(str, steps))

    @property
    def priority_step_list(self) -> list[int]:
        return [int(s) for s in self.priority_steps.split(",")]

    @property
    def layout(self) -> Layout:
        """The result and broker key names under the configured prefixes."""
        return Layout.for_prefixes(self.key_prefix, self.broker_key_prefix)

    @property
    def queue_list(self) -> list[str]:
        """JANITOR_QUEUES, parsed."""
        return [q.strip() for q in self.queues.split(",") if q.strip()]

    # end broker

    # status: the HTML page at / on the metrics port (janitor.service.status_page). A token,
    # when set, is required as ?token= or "Authorization: Bearer"; it is never printed.
    status_page: bool = True
    status_token: str = Field(default="", repr=False, exclude=True)
    # end status

    @field_validator("naive_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value.strip())
        except (ValueError, OSError, zoneinfo.ZoneInfoNotFoundError):
            raise ValueError("not an IANA time zone name (e.g. UTC, Europe/Berlin, Asia/Shanghai)") from None
        return value.strip()

    @property
    def naive_zone(self) -> dt.tzinfo:
        """The zone naive date_done values are read in."""
        return dt.UTC if self.naive_timezone == "UTC" else zoneinfo.ZoneInfo(self.naive_timezone)

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return value.lower()

    @field_validator("log_format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value.lower() not in {"auto", "json", "console"}:
            raise ValueError("must be one of auto, json, console")
        return value.lower()

    @property
    def masked_url(self) -> str:
        return mask_url(self.redis_url)

    @property
    def masked_broker_url(self) -> str:
        return mask_url(self.broker_url)

    @property
    def broker_apart(self) -> bool:
        """The broker lives on another server or database than the results."""
        return bool(self.broker_url) and self.broker_url != self.redis_url

    def for_broker(self) -> Settings:
        """These settings aimed at the broker's Redis (what ``connect`` and the heartbeat listener use)."""
        if not self.broker_apart:
            return self
        return self.model_copy(update={"redis_url": self.broker_url, "redis_url_source": self.broker_url_source})

    def connect(self, *, socket_timeout: float | None = None, retry: Retry | None = None) -> redis.Redis:
        """A client for the configured server (the current master, with Sentinel)."""
        return connection.connect(
            self.redis_url,
            socket_timeout=self.socket_timeout if socket_timeout is None else socket_timeout,
            sentinel_master=self.sentinel_master,
            sentinel_password=self.sentinel_password,
            retry=retry,
        )


def find_broker_url(environ: Mapping[str, str], results: tuple[str, str]) -> tuple[str, str]:
    """``JANITOR_BROKER_URL``, else ``CELERY_BROKER_URL`` when it names Redis, else the results' URL."""
    for name in ("JANITOR_BROKER_URL", "CELERY_BROKER_URL"):
        url = environ.get(name, "").strip()
        if url and (name == "JANITOR_BROKER_URL" or urlsplit(url).scheme in _REDIS_SCHEMES):
            return url, name
    return results


def find_redis_url(environ: Mapping[str, str]) -> tuple[str, str]:
    """Return ``(url, variable it came from)``, or ``("", "")`` when none is set."""
    for name in URL_SOURCES:
        url = environ.get(name, "").strip()
        if not url:
            continue
        if name.startswith("CELERY_") and urlsplit(url).scheme not in _REDIS_SCHEMES:
            continue
        return url, name
    return "", ""


def load(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build settings from the environment; raise :class:`ConfigError` with one clear line."""
    env = os.environ if environ is None else environ
    url, source = find_redis_url(env)
    # Which variable each value came from, so an error names the one the user set.
    origin = {
        name: f"JANITOR_{name.upper()}"
        for name in Settings.model_fields
        if f"JANITOR_{name.upper()}" in env and name not in _NOT_VARIABLES
    }
    values: dict[str, object] = {name: env[var] for name, var in origin.items()}
    if port_source(env) == "PORT":
        origin["metrics_port"], values["metrics_port"] = "PORT", env["PORT"]
    broker_url, broker_source = find_broker_url(env, (url, source)) if url else ("", "")
    values.update(
        redis_url=url, redis_url_source=source, broker_url=broker_url, broker_url_source=broker_source, **overrides
    )
    if urlsplit(url).scheme.lower() == "sentinel" and not values.get("sentinel_master"):
        raise ConfigError(
            f"{source} is a sentinel:// URL but JANITOR_SENTINEL_MASTER is not set: set it to the master name "
            "your sentinels monitor (Celery's master_name transport option)"
        )
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        var = origin.get(field, f"JANITOR_{field.upper()}")
        shown = "<hidden>" if field in {"redis_url", "broker_url"} else repr(err.get("input"))
        hint = " (the HTTP port while JANITOR_METRICS_PORT is unset)" if var == "PORT" else ""
        raise ConfigError(
            f"invalid setting {var}={shown}{hint}: {err['msg']}; fix it or unset it to use the default"
        ) from None


def port_source(environ: Mapping[str, str]) -> str:
    """The variable the HTTP port comes from: ``JANITOR_METRICS_PORT``, else ``PORT`` (Railway, Heroku-style hosts)."""
    if "JANITOR_METRICS_PORT" not in environ and environ.get("PORT"):
        return "PORT"
    return "JANITOR_METRICS_PORT"


def known_variables() -> list[str]:
    """Every ``JANITOR_*`` variable the janitor reads: one per setting, plus those read outside :class:`Settings`."""
    names = {var for var in URL_SOURCES if var.startswith("JANITOR_")} | set(READ_ELSEWHERE)
    for name, info in Settings.model_fields.items():
        if name not in _NOT_VARIABLES:
            names.add(f"JANITOR_{name.upper()}")
        names.update(a.upper() for a in (info.alias, info.validation_alias) if isinstance(a, str))
    return sorted(names)


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(variable, nearest known one or "")`` for each ``JANITOR_*`` variable that nothing reads (a typo, most often).

    Names are compared upper-cased, so ``janitor_result_ttl`` (which is not read either) is reported too.
    """
    known = known_variables()
    # Compared without the shared prefix, which would make any two names look alike.
    by_suffix = {var.removeprefix("JANITOR_"): var for var in known}
    found = []
    for var in sorted(environ):
        upper = var.upper()
        if upper.startswith("JANITOR_") and var not in known:
            nearest = difflib.get_close_matches(upper.removeprefix("JANITOR_"), by_suffix, n=1, cutoff=0.6)
            found.append((var, by_suffix[nearest[0]] if nearest else ""))
    return found
