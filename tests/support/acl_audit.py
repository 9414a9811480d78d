"""Every command the janitor sends anywhere in a test run, checked against the documented ACL.

tests/integration/test_acl.py runs every verb and the daemon as the users docs/acl.md defines.
The rest of the suite hands the janitor an admin client that it also uses to set
keyspaces up, so here every command sent from janitor code (found on the call
stack; the demo writer excluded) is recorded, and at the end of the run each
distinct one is replayed as ``ACL DRYRUN janitor ...`` on a server that has the
documented users; every command the janitor's Lua scripts call is looked up in
the same grant.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import redis
import redis.client

from janitor.dev import embedded
from janitor.redis_io import scripts
from tests.support import ROOT

DOC = ROOT / "docs" / "acl.md"
PASSWORD = "acl-test-Pa55"
SAMPLES_PER_COMMAND = 25
# janitor modules that write keyspaces for demos and tests, not the janitor's own work
NOT_THE_JANITOR = ("janitor.dev.demo", "janitor.dev.embedded")
LUA_CALL = re.compile(r"redis\.p?call\(\s*'([A-Za-z_]+)'")
EVENTS = re.compile(r"[^*?\[\]]*/\d+\.celeryev/worker\.\*")  # <global_keyprefix>/<db>.celeryev/worker.*


def acl_lines() -> dict[str, list[str]]:
    """The ``ACL SETUSER`` rules of docs/acl.md, by user, with the test password."""
    lines = re.findall(r"^ACL SETUSER (\S+) (.+)$", DOC.read_text(), re.MULTILINE)
    return {user: rules.replace("<password>", PASSWORD).split() for user, rules in lines}


def _from_janitor(frame: FrameType | None) -> bool:
    for _ in range(20):
        if frame is None:
            return False
        name = frame.f_globals.get("__name__", "")
        if name.startswith("tests."):  # test code, even when the janitor calls it back
            return False
        if name.startswith("janitor"):
            return not name.startswith(NOT_THE_JANITOR)
        frame = frame.f_back
    return False


def _documented_extras(name: str, args: tuple[Any, ...]) -> list[str]:
    """The grants docs/acl.md tells a user to add: kombu's event channel for their prefix and
    db, ``~<queue>*`` for each queue not named like ``*celery*`` that restore pushes to,
    ``+config|set`` with JANITOR_WATCH=on, and the optional ``+config|get``."""
    if name == "PSUBSCRIBE" and EVENTS.fullmatch(str(args[1])):
        return [f"&{args[1]}"]
    if name == "CONFIG SET" and _text(args[1]) == "notify-keyspace-events":  # JANITOR_WATCH=on
        return ["+config|set"]
    if name == "CONFIG GET" and _text(args[1]) == "notify-keyspace-events":  # optional: the probe does without
        return ["+config|get"]
    if name == "EVALSHA" and args[1] == scripts.RESTORE.sha:
        queues = args[3 + 5 : 3 + int(args[2])]  # KEYS: unacked, index, mutex, counter, dead list, queues...
        return [f"~{_text(q)}*" for q in queues if b"celery" not in _bytes(q)]
    return []


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class Recorder:
    """Wraps redis-py's command entry points while installed; thread-safe (the heartbeat listener)."""

    def __init__(self) -> None:
        self.samples: dict[str, list[tuple[Any, ...]]] = {}
        self.seen = 0
        self._lock = threading.Lock()
        self._saved: list[tuple[type, Callable[..., Any]]] = []

    def install(self) -> None:
        for cls in (redis.client.Redis, redis.client.Pipeline, redis.client.PubSub):
            original = cls.__dict__["execute_command"]
            self._saved.append((cls, original))
            cls.execute_command = self._wrap(original)  # type: ignore[method-assign]
        self._saved.append((scripts.Tally, scripts.Tally.send))
        scripts.Tally.send = self._wrap_send(scripts.Tally.send)  # type: ignore[method-assign]

    def uninstall(self) -> None:
        for cls, original in self._saved:
            setattr(cls, original.__name__, original)
        self._saved.clear()

    def _wrap_send(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """Scripts sent on a connection of their own (the sweep's DECIDE) bypass execute_command."""
        recorder = self

        def send(tally: Any, client: Any, script: scripts.Script, keys: list[bytes], *rest: Any) -> Any:
            args, _parse = rest
            if _from_janitor(sys._getframe(1)):
                recorder.record(("EVALSHA", script.sha, len(keys), *keys, *args))
            return original(tally, client, script, keys, *rest)

        return send

    def _wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        def execute_command(client: Any, *args: Any, **options: Any) -> Any:
            if args and _from_janitor(sys._getframe(1)):
                recorder.record(args)
            return original(client, *args, **options)

        return execute_command

    def record(self, args: tuple[Any, ...]) -> None:
        name = str(args[0].decode() if isinstance(args[0], bytes) else args[0]).upper()
        if name.startswith("SENTINEL"):  # sent to the sentinels, which have their own users, not to Redis
            return
        # Samples of each script, not of EVALSHA at large: the sweep's thousands of calls would crowd out the rest.
        sampled = f"{name} {_text(args[1])}" if name in {"EVALSHA", "EVALSHA_RO"} else name
        with self._lock:
            self.seen += 1
            kept = self.samples.setdefault(sampled, [])
            if len(kept) < SAMPLES_PER_COMMAND and args not in kept:
                kept.append(args)

    def check(self) -> tuple[list[str], str]:
        """Replay every sample as the janitor user; return the denials and a one-line summary."""
        denied = []
        grant = acl_lines()["janitor"]
        allowed = {t[1:].lower() for t in grant if t.startswith("+")}
        lua = {m.lower() for path in (ROOT / "janitor").rglob("*.lua") for m in LUA_CALL.findall(path.read_text())}
        denied += [f"Lua calls {cmd.upper()}, not in docs/acl.md's janitor grant" for cmd in sorted(lua - allowed)]
        replayed = 0
        with embedded.running() as server:
            admin = server.client()
            for user, rules in acl_lines().items():
                admin.execute_command("ACL", "SETUSER", user, *rules)
            for _sampled, samples in sorted(self.samples.items()):
                for args in samples:
                    replayed += 1
                    # redis-py sends "SCRIPT LOAD" as one name and splits it on the wire.
                    words = str(args[0].decode() if isinstance(args[0], bytes) else args[0]).split()
                    user, extra = "janitor", _documented_extras(" ".join(words).upper(), args)
                    if extra:  # what docs/acl.md tells users to add for their queues, prefix and db
                        user = "janitor-adjusted"
                        rules = [r for r in grant if not (r.startswith("&") and extra[0].startswith("&"))]
                        admin.execute_command("ACL", "SETUSER", user, "reset", *rules, *extra)
                    try:
                        reply = admin.execute_command("ACL", "DRYRUN", user, *words, *args[1:])
                    except redis.ResponseError as exc:  # a malformed replay is a finding too
                        reply = str(exc)
                    if reply not in {b"OK", "OK"}:
                        denied.append(f"{words[0].upper()} {args[1:3]!r}...: {reply!r}")
            admin.close()
        summary = (
            f"ACL audit: {self.seen:,} commands sent by janitor code in this run, {len(self.samples)} distinct "
            f"commands and scripts, {replayed} samples replayed as ACL DRYRUN janitor, {len(lua)} commands called "
            "from Lua; "
            f"{len(denied)} outside the documented grant"
        )
        return denied, summary
