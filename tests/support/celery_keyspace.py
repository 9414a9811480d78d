"""A keyspace written by real Celery 5.7: real ``celery worker`` processes, one per result profile.

:func:`generated` runs the workers once per test session on a private server, back-dates
some results, adds keys that are not Celery's, and keeps a DUMP of every key;
:func:`restore` loads that keyspace into a test's (flushed) server. Redis 7.0 writes it,
so both Redis 7 and Valkey 8 can RESTORE it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery, chord, group

from janitor.dev import embedded
from tests.celery_app import PROFILES, make_app, queue_of
from tests.support import ROOT, wait_for

SEP = "\x06\x16"
DAY = 86400
# Ages given to ready results, cycled per profile and state: fresh, past result_ttl
# but within failure_ttl (janitor defaults: 1 day, 7 days), past both.
AGES = (0.0, 2.0 * DAY, 10.0 * DAY)
READY = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
# Successes per profile: thousands where production has thousands (json, pickle), a few elsewhere.
BULK = {"plain": 2000, "pickle": 1000}
# Profiles whose results have no TTL; "ttl" keeps Celery's own expiry.
NO_TTL = tuple(p for p, conf in PROFILES.items() if conf.get("result_expires") is None)
PREFIXES = {"myapp": "myapp_", "other": "other_"}
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# Key names of Celery's result backend, written independently of janitor.celery_model.keyspace.
RESULT_KEY = re.compile(
    rb"^(?P<prefix>|myapp_|other_)(?:celery-task-meta-(?P<tid>[^*?\[\]\x00-\x1f]+)"
    rb"|celery-taskset-meta-(?P<gid>" + UUID.encode() + rb")(?P<sfx>\.[jstdc])?)$"
)
CUSTOM_ID = "nightly-report:2026-01-01 (eu)"
# Keys of other software, some with "celery" in their names (the janitor SCANs *celery*).
FOREIGN: dict[bytes, tuple[str, Any, int]] = {
    b"session:42": ("string", b'{"user": 42}', -1),
    b"cache:celery-task-meta-report": ("string", b"<html>report</html>", -1),
    b"celery-task-meta": ("hash", {b"owner": b"someone else"}, -1),
    b"x-celery-taskset-meta-" + str(uuid.UUID(int=7)).encode(): ("string", b"not ours", -1),
    b"app:celery:stats": ("hash", {b"runs": b"3"}, 5_000_000),
    b"redbeat::schedule": ("zset", {b"nightly": 1.0}, -1),
    b"celerybeat-schedule-lock": ("string", b"1", 900_000),
}


# -- workers ---------------------------------------------------------------------
def sigkill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker's whole process group: nothing is acked or restored on the way out."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


@contextlib.contextmanager
def workers(url: str, profiles: list[str]) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """One real ``celery worker`` (solo pool) per profile, each in its own process group; all killed on exit."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for profile in profiles:
            env = os.environ | {"CELERY_APP_PROFILE": profile, "CELERY_APP_URL": url}
            args = [sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", "-P", "solo"]
            args += ["-n", f"{profile}@ks", "-Q", queue_of(profile), "-l", "warning"]
            args += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
            procs[profile] = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
            )
        yield procs
    finally:
        for proc in procs.values():
            sigkill(proc)


# -- reading and rewriting results the way Celery does ------------------------------
def result_key(app: Celery, task_id: str) -> bytes:
    return app.backend.get_key_for_task(task_id)


def group_key(app: Celery, group_id: str, suffix: str = "") -> bytes:
    return app.backend.get_key_for_group(group_id, suffix)


def join_length(client: redis.Redis, key: bytes) -> int:
    """Parts a chord has joined: a zset, or a list with ``result_chord_ordered=False``."""
    return {b"zset": client.zcard, b"list": client.llen}.get(client.type(key), lambda _k: 0)(key)


def meta(client: redis.Redis, app: Celery, task_id: str) -> dict[str, Any] | None:
    """The stored meta, decoded by the app's own backend (decompression and serializer included)."""
    raw = client.get(result_key(app, task_id))
    return None if raw is None else app.backend.decode(raw)


def state(client: redis.Redis, app: Celery, task_id: str) -> str | None:
    found = meta(client, app, task_id)
    return None if found is None else found["status"]


def backdate(client: redis.Redis, app: Celery, key: bytes, age_s: float) -> None:
    """Move a real result's ``date_done`` ``age_s`` seconds into the past, re-encoded exactly as Celery encodes.

    The TTL, if any, is kept (SET KEEPTTL), so only the value changes.
    """
    raw = client.get(key)
    assert raw is not None, key
    decoded = app.backend.decode(raw)
    assert encode(app, decoded) == raw, f"{key!r}: re-encoding is not byte-exact"
    done = dt.datetime.fromisoformat(decoded["date_done"])
    decoded["date_done"] = (done - dt.timedelta(seconds=age_s)).isoformat()
    client.set(key, encode(app, decoded), keepttl=True)


def encode(app: Celery, value: Any) -> bytes:
    """What the app's backend hands to Redis for ``value`` (text serializers return str; redis-py sends UTF-8)."""
    out = app.backend.encode(value)
    return out.encode() if isinstance(out, str) else bytes(out)


# -- the generated keyspace ------------------------------------------------------------
@dataclass
class Keyspace:
    """Every key a real Celery run left, as DUMPs, and what each test needs to know about them."""

    engine: str
    dumps: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)  # key -> (pttl, DUMP)
    tasks: dict[str, dict[str, str]] = field(default_factory=dict)  # profile -> role -> task id
    groups: dict[str, dict[str, str]] = field(default_factory=dict)  # profile -> role -> group id
    ages: dict[bytes, float] = field(default_factory=dict)  # result key -> seconds it was back-dated
    owner: dict[bytes, str] = field(default_factory=dict)  # result key -> profile that wrote it
    values: dict[bytes, bytes] = field(default_factory=dict)  # every string value as Celery left it
    seconds: float = 0.0

    def app(self, profile: str, url: str) -> Celery:
        return make_app(profile, url, tasks=False)


def _roles(app: Celery, profile: str) -> tuple[dict[str, str], dict[str, Any]]:
    """Send what every profile runs: successes, failures, a saved group; return ids and pending handles."""
    tasks: dict[str, str] = {}
    handles: dict[str, Any] = {}
    for i in range(BULK.get(profile, 3)):
        tasks[f"ok{i}"] = app.send_task("ks.add", (i, i)).id
    for i in range(3):
        tasks[f"fail{i}"] = app.send_task("ks.fail", (f"kaboom {i}",)).id
    saved = group(app.signature("ks.add", (i, 10)) for i in range(3)).apply_async()
    saved.save()
    handles["saved"] = saved
    return tasks, handles


def _chords(app: Celery) -> dict[str, Any]:
    """A chord that completes (leaves ``.c``), one whose header never completes (``.j .s .d`` stay)."""
    add, tsum = "ks.add", "ks.tsum"
    done = chord([app.signature(add, (i, i)) for i in range(3)], app.signature(tsum)).apply_async()
    stuck = chord(
        [app.signature(add, (1, 1)), app.signature(add, (2, 2), countdown=3600)], app.signature(tsum)
    ).apply_async()
    return {"chord_done": done, "chord_stuck": stuck}


def _generate(server: embedded.Server) -> Keyspace:
    client = server.client()
    apps = {profile: make_app(profile, server.url, tasks=False) for profile in PROFILES}
    for app in apps.values():
        # A producer that never waits on results: no pub/sub subscription per sent task.
        app.backend.on_task_call = lambda *_args, **_kwargs: None
    ks = Keyspace(server.engine)
    started = time.monotonic()
    with workers(server.url, list(PROFILES)) as procs:
        handles: dict[str, dict[str, Any]] = {}
        for profile, app in apps.items():
            ks.tasks[profile], handles[profile] = _roles(app, profile)
        plain = apps["plain"]
        for profile in ("plain", "ttl", "myapp"):
            handles[profile] |= _chords(apps[profile])
            ks.tasks[profile]["progress"] = apps[profile].send_task("ks.progress", (3, 10)).id
        held = ks.tasks["plain"]
        held["eta"] = plain.send_task("ks.add", (5, 5), countdown=3600).id
        held["retried_ok"] = plain.send_task("ks.flaky", (2,)).id
        held["retried_fail"] = plain.send_task("ks.flaky", (5,)).id
        held["retry_waiting"] = plain.send_task("ks.flaky", (1, 3600)).id
        held["custom_id"] = plain.send_task("ks.add", (4, 4), task_id=CUSTOM_ID).id
        held["expired"] = plain.send_task("ks.add", (0, 0), expires=dt.datetime.now(dt.UTC) - dt.timedelta(1)).id
        held["revoked"] = str(uuid.uuid4())
        wait_for(lambda: plain.control.ping(["plain@ks"], timeout=0.5), 30, "the plain worker's control channel")
        replies = plain.control.revoke(held["revoked"], reply=True, destination=["plain@ks"], timeout=30)
        assert replies, "the plain worker did not confirm the revoke"
        plain.send_task("ks.add", (0, 0), task_id=held["revoked"])

        expected: dict[str, dict[str, str]] = {p: {} for p in PROFILES}
        for profile, roles in ks.tasks.items():
            for role, tid in roles.items():
                expected[profile][tid] = {
                    "ok": "SUCCESS",
                    "fail": "FAILURE",
                    "progress": "PROGRESS",
                    "eta": "",
                    "custom_id": "SUCCESS",
                    "retried_ok": "SUCCESS",
                    "retried_fail": "FAILURE",
                    "retry_waiting": "RETRY",
                    "expired": "REVOKED",
                    "revoked": "REVOKED",
                }[role.rstrip("0123456789")]
        for profile in apps:
            for name, handle in handles[profile].items():
                ks.groups.setdefault(profile, {})[name] = handle.parent.id if name.startswith("chord") else handle.id
                if name == "chord_stuck":
                    expected[profile][handle.parent.results[0].id] = "SUCCESS"
                    continue
                for child in handle.parent.results if name.startswith("chord") else handle.results:
                    expected[profile][child.id] = "SUCCESS"
                if name == "chord_done":
                    expected[profile][handle.id] = "SUCCESS"

        def all_written() -> bool:
            return all(
                state(client, apps[p], tid) == want for p, ids in expected.items() for tid, want in ids.items() if want
            )

        wait_for(all_written, 60, "every task to reach its final state")
        ks.owner = {result_key(apps[p], tid): p for p, ids in expected.items() for tid, want in ids.items() if want}
        for profile in ("plain", "ttl", "myapp"):
            jkey = group_key(apps[profile], ks.groups[profile]["chord_stuck"], ".j")
            wait_for(lambda jkey=jkey: join_length(client, jkey) == 1, 10, f"{profile}: the stuck chord's first part")
        wait_for(lambda: client.hlen("unacked") >= 4, 10, "the held ETA messages in unacked")

        # Last: kill two workers mid-task (STARTED stays), the others while idle.
        for profile in ("plain", "ttl"):
            tid = apps[profile].send_task("ks.die").id
            ks.tasks[profile]["killed"] = tid
            procs[profile].wait(30)
            assert state(client, apps[profile], tid) == "STARTED"
            ks.owner[result_key(apps[profile], tid)] = profile
    # Messages nobody consumed (the plain worker is dead): a queue and a priority sub-queue.
    ks.tasks["plain"]["queued"] = plain.send_task("ks.add", (7, 7)).id
    ks.tasks["plain"]["queued_prio"] = plain.send_task("ks.add", (8, 8), priority=6).id

    _backdate_all(client, apps, ks)
    for key, (rtype, value, pttl) in FOREIGN.items():
        {"string": client.set, "hash": client.hset, "zset": client.zadd}[rtype](
            key, **({"value": value} if rtype == "string" else {"mapping": value})
        )
        if pttl > 0:
            client.pexpire(key, pttl)
    for key in client.scan_iter(count=1000):
        dump = client.dump(key)
        assert dump is not None
        ks.dumps[key] = (client.pttl(key), dump)
        if client.type(key) == b"string":
            ks.values[key] = client.get(key)
    ks.seconds = time.monotonic() - started
    client.close()
    for app in apps.values():
        # An AsyncResult's __del__ unsubscribes from the result backend; collected after the
        # server is gone, each would retry 20 times a second apart, in whatever test runs then.
        app.backend.remove_pending_result = lambda result: result
        app.close()
    return ks


def _backdate_all(client: redis.Redis, apps: dict[str, Celery], ks: Keyspace) -> None:
    """Give ready results of the no-TTL profiles the ages in :data:`AGES`, cycled per profile and state."""
    seen: dict[tuple[str, str], int] = {}
    for key, profile in sorted(ks.owner.items()):
        if profile not in NO_TTL:
            continue
        status = apps[profile].backend.decode(client.get(key))["status"]
        if status not in READY:
            continue
        n = seen[profile, status] = seen.get((profile, status), -1) + 1
        ks.ages[key] = AGES[n % len(AGES)]
        if ks.ages[key]:
            backdate(client, apps[profile], key, ks.ages[key])
    # A result that already has a TTL keeps it however old it is.
    old = result_key(apps["ttl"], ks.tasks["ttl"]["ok0"])
    backdate(client, apps["ttl"], old, AGES[-1])
    ks.ages[old] = AGES[-1]


@functools.cache
def generated() -> Keyspace:
    """The session's keyspace: generated once, on Redis 7 when installed (Valkey 8 restores its dumps)."""
    engines = embedded.available_engines()
    with embedded.running("redis" if "redis" in engines else engines[0]) as server:
        return _generate(server)


def restore(client: redis.Redis, ks: Keyspace) -> None:
    """Load the generated keyspace into an empty server, each key with its remaining TTL as dumped."""
    pipe = client.pipeline(transaction=False)
    for key, (pttl, dump) in ks.dumps.items():
        pipe.restore(key, max(pttl, 0), dump)
    pipe.execute()


Snapshot = dict[bytes, tuple[bytes, int, bytes]]


def snapshot(client: redis.Redis) -> Snapshot:
    """Every key's TYPE, PTTL and DUMP."""
    out: Snapshot = {}
    for key in client.scan_iter(count=1000):
        pipe = client.pipeline(transaction=False)
        pipe.type(key).pttl(key).dump(key)
        rtype, pttl, dump = pipe.execute()
        out[key] = (rtype, pttl, dump)
    return out
