"""The server-side scripts, one typed wrapper each, and the command tally every Redis call goes through.

The Lua lives in ``janitor/redis_io/lua/<name>.lua`` (package data), each file documenting its
KEYS, ARGV and reply at the top. Callers never see a script's source, its positional
ARGV or its reply layout: each script has one wrapper here, named after it, taking
keyword arguments and returning a small typed reply. Every call goes through a
:class:`Tally` (EVALSHA, the script loaded again on NOSCRIPT) or a
:class:`ReadOnlyTally` (EVALSHA_RO), so every command is counted.

The result sweep: :func:`decide` SCANs a page (or takes a batch by name), reads every
key's TTL, decides and acts on plain JSON task results inside Redis, one call per
batch, and hands back the Celery keys with no TTL it is not certain about, with what
it read. :func:`janitor.operations.rules.decide` decides those in Python; :func:`inspect`
reads type, TTL and value of what DECIDE could not read (and of every key in cap
mode), and :func:`act` applies the decisions, re-checking each key inside the same
atomic call so a key Celery rewrote in between is left alone.
"""

from __future__ import annotations

import collections
import enum
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Generic, TypeVar

import redis

from janitor.celery_model.payload import Edges

Key = bytes | str
T = TypeVar("T")


def sha1(value: bytes) -> str:
    return hashlib.sha1(value, usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class Script:
    """A script's source and its SHA-1, as EVALSHA names it (worked out once per script)."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", sha1(self.source.encode()))

    @classmethod
    def packaged(cls, name: str) -> Script:
        """``janitor/redis_io/lua/<name>.lua``, read from the installed package."""
        source = (resources.files("janitor.redis_io") / "lua" / f"{name}.lua").read_text(encoding="utf-8")
        return cls(name, source)


DECIDE = Script.packaged("decide")
INSPECT = Script.packaged("inspect")
ACT = Script.packaged("act")
ACQUIRE = Script.packaged("acquire")
RENEW = Script.packaged("renew")
RELEASE = Script.packaged("release")
SUMMARY = Script.packaged("summary")
RESULT_HEADS = Script.packaged("result_heads")
HASH_ORPHANS = Script.packaged("hash_orphans")
QUEUE_DEPTH = Script.packaged("queue_depth")
RESTORE = Script.packaged("restore")
QUEUE_TALLY = Script.packaged("queue_tally")
MOVE_PAGE = Script.packaged("move_page")
DEAD_PAGE = Script.packaged("dead_page")
DEAD_TRIM = Script.packaged("dead_trim")


# -- the tally -----------------------------------------------------------------------------
@dataclass
class Tally:
    """Counts every command sent to Redis, by name (Upstash bills each one)."""

    commands: collections.Counter[str] = field(default_factory=collections.Counter)

    def scan(self, client: redis.Redis, cursor: int, match: str, count: int) -> tuple[int, list[bytes]]:
        self.commands["SCAN"] += 1
        next_cursor, keys = client.scan(cursor, match=match, count=count)
        return int(next_cursor), [k if isinstance(k, bytes) else k.encode() for k in keys]

    def run(self, client: redis.Redis, script: Script, keys: list[bytes], args: list[Any]) -> Any:
        """EVALSHA, loading the script once on NOSCRIPT (after a restart or SCRIPT FLUSH)."""
        self.commands["EVALSHA"] += 1
        try:
            return client.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self.load(client, script)
            self.commands["EVALSHA"] += 1
            return client.evalsha(script.sha, len(keys), *keys, *args)

    def load(self, client: redis.Redis, script: Script) -> None:
        """SCRIPT LOAD, after a NOSCRIPT reply (a restart, a failover, SCRIPT FLUSH)."""
        self.commands["SCRIPT LOAD"] += 1
        client.script_load(script.source)

    def send(
        self, client: redis.Redis, script: Script, keys: list[bytes], args: list[Any], parse: Callable[[Any], T]
    ) -> Sent[T]:
        """EVALSHA on a connection of the pool's own, without waiting for the reply: Redis runs the script
        while the caller goes on (its other calls take other connections). :meth:`Sent.reply` reads it."""
        pool = client.connection_pool
        connection: Any = pool.get_connection()  # redis-py's Connection; typed differently between releases
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            # One more try on a connection the server had closed, as the client's own Retry does.
            connection.retry.call_with_retry(
                lambda: connection.send_command(*command), lambda _error: connection.disconnect()
            )
        except BaseException:
            pool.release(connection)
            raise
        self.commands["EVALSHA"] += 1
        return Sent(self, client, script, command, parse, connection)


@dataclass
class Sent(Generic[T]):
    """A script call on its way: sent, its reply not read yet. Holds its connection until then."""

    tally: Tally
    client: redis.Redis
    script: Script
    command: tuple[Any, ...]
    parse: Callable[[Any], T]
    connection: Any
    open: bool = True

    def ready(self) -> bool:
        """Whether the reply is here already: the call then took at most the time since it was sent."""
        try:
            return bool(self.connection.can_read(timeout=0))
        except (redis.ConnectionError, OSError):
            return False  # reply() meets the same error, and closes the connection

    def reply(self) -> T:
        """The parsed reply; on NOSCRIPT (a restart, SCRIPT FLUSH) the script is loaded and sent again, once."""
        try:
            try:
                raw = self.connection.read_response()
            except redis.exceptions.NoScriptError:
                self.tally.load(self.client, self.script)
                self.tally.commands["EVALSHA"] += 1
                self.connection.send_command(*self.command)
                raw = self.connection.read_response()
        except redis.ResponseError:
            self._release()  # the error was the whole reply: the connection is clean
            raise
        except BaseException:
            self.abandon()
            raise
        self._release()
        return self.parse(raw)

    def abandon(self) -> None:
        """Give the connection back closed, its reply unread: no later command may read it as its own."""
        if self.open:
            self.connection.disconnect()
            self._release()

    def _release(self) -> None:
        if self.open:
            self.open = False
            self.client.connection_pool.release(self.connection)


@dataclass
class ReadOnlyTally(Tally):
    """A tally whose scripts run as EVALSHA_RO (Redis 7+, Valkey): the server rejects writes in them.

    Falls back to EVALSHA, once, on a server that does not know the command;
    the scripts it runs only read either way.
    """

    read_only: bool | None = None  # None until the server has answered

    def run(self, client: redis.Redis, script: Script, keys: list[bytes], args: list[Any]) -> Any:
        if self.read_only is False:
            return super().run(client, script, keys, args)
        try:
            return self._ro(client, script.sha, keys, args)
        except redis.exceptions.NoScriptError:
            self.load(client, script)
            return self._ro(client, script.sha, keys, args)
        except redis.ResponseError as exc:
            if "unknown command" not in str(exc).lower():
                raise
            self.read_only = False
            return super().run(client, script, keys, args)

    def _ro(self, client: redis.Redis, digest: str, keys: list[bytes], args: list[Any]) -> Any:
        self.commands["EVALSHA_RO"] += 1
        result = client.evalsha_ro(digest, len(keys), *keys, *args)
        self.read_only = True
        return result


# -- the result sweep: DECIDE, INSPECT, ACT ------------------------------------------------
class Code(enum.IntEnum):
    """Why DECIDE hands a key back (its reply's per-key code)."""

    SET_TTL = 1  # dry run: it would set the TTL ``ms``
    DELETE = 2  # dry run: it would delete the value, ``size`` bytes
    NOT_STRING = 3  # no TTL, not a string: ``type`` says what it is
    UNREAD = 4  # no TTL, and the reply's byte budget is spent: INSPECT it
    EDGES = 5  # no TTL, a string too large to read whole: ``value`` is its Edges
    VALUE = 6  # no TTL, a string it is not certain about: ``value`` is the string
    BY_NAME = 7  # a name under neither prefix, or one it is unsure of with a TTL: ``pttl``
    OVER_LIMIT = 8  # past the most keys one call looks at: not read, DECIDE it again by name

    @property
    def dry_run(self) -> bool:
        """A dry run's list of what DECIDE would do itself (already in its totals)."""
        return self in {Code.SET_TTL, Code.DELETE}

    @property
    def read(self) -> bool:
        """DECIDE read the key: the row holds what INSPECT would have read."""
        return self in {Code.NOT_STRING, Code.EDGES, Code.VALUE}


@dataclass(frozen=True, slots=True)
class Retention:
    """What DECIDE applies during a pass: janitor.operations.rules' TTLs, and how much it may read and return."""

    result_ttl_ms: int
    failure_ttl_ms: int
    pending_ttl_ms: int
    future_tolerance_us: int
    max_value: int  # largest value read (bytes)
    task_prefix: bytes
    group_prefix: bytes
    budget: int  # reply byte budget
    naive_utc: bool  # a naive date_done is UTC (else DECIDE hands it to Python)
    edge: int  # bytes of a too-large value's head and tail to return
    group_ttl_ms: int = 0  # the TTL DECIDE gives a saved group (0: groups go to Python)
    edge_first: int = 0  # a task result this long is judged from its edges first (0: never)
    deadline_us: int = 0  # a call hands back the keys left after this long (0: no limit)


@dataclass(frozen=True, slots=True)
class Handed:
    """A key DECIDE hands back, with what it read (see :class:`Code`)."""

    key: bytes
    code: Code
    type: str = ""  # NOT_STRING: the key's type; EDGES, VALUE: "string"
    pttl: int = -1  # BY_NAME: the key's PTTL; every other code but OVER_LIMIT is about a key with none
    value: bytes | Edges | None = None
    ms: int = 0  # SET_TTL
    size: int = 0  # DELETE


@dataclass(frozen=True, slots=True)
class Decided:
    """One DECIDE call: what it did itself, and the keys it left to Python."""

    cursor: bytes  # the next SCAN cursor (b"0" at the end), b"" when given keys by name
    scanned: int
    celery: int  # Celery keys it judged
    ttl_set: int
    deleted: int
    freed: int  # bytes deleted
    handed: list[Handed]
    group_ttl_set: int = 0  # saved groups it gave a TTL (ttl_set counts task results)


def decide(
    tally: Tally,
    client: redis.Redis,
    retention: Retention,
    *,
    fence: bytes,
    token: str,
    dry_run: bool,
    now_us: int,
    limit: int,
    cursor: bytes = b"",
    count: int = 0,
    match: str = "",
    keys: Sequence[bytes] = (),
) -> Sent[Decided]:
    """DECIDE over the SCAN page at ``cursor`` (``count``, ``match``), or, with ``cursor`` b"", over ``keys``:
    sent, not waited for; ``.reply()`` waits for what it did.

    Looks at ``limit`` keys at most; refused (``FENCED``) unless ``fence`` holds ``token`` ("" = no fence).
    """
    args = decide_argv(
        retention, cursor=cursor, count=count, match=match, limit=limit, token=token, dry_run=dry_run, now_us=now_us
    )
    return tally.send(client, DECIDE, [fence, *keys], args, _decided)


def _decided(reply: list[Any]) -> Decided:
    after, scanned, celery, ttl_set, deleted, freed, group_ttl_set = reply[:7]
    handed = [_handed(k, c, d) for k, c, d in zip(reply[7::3], reply[8::3], reply[9::3], strict=True)]
    return Decided(after, scanned, celery, ttl_set, deleted, freed, handed, group_ttl_set)


def decide_argv(
    r: Retention, *, cursor: bytes, count: int, match: str, limit: int, token: str, dry_run: bool, now_us: int
) -> list[Any]:
    """DECIDE's ARGV (lua/decide.lua)."""
    args: list[Any] = [cursor, count, match, limit, token, int(dry_run), now_us]
    args += [r.result_ttl_ms, r.failure_ttl_ms, r.pending_ttl_ms, r.future_tolerance_us, r.max_value]
    args += [r.task_prefix, r.group_prefix, r.budget, int(r.naive_utc), r.edge, r.group_ttl_ms, r.edge_first]
    return [*args, r.deadline_us]


def _handed(key: bytes, code: int, detail: Any) -> Handed:
    c = Code(code)
    if c is Code.BY_NAME:
        return Handed(key, c, pttl=int(detail))
    if c is Code.NOT_STRING:
        return Handed(key, c, type=_text(detail))
    if c is Code.EDGES:
        return Handed(key, c, type="string", value=Edges.of(detail))
    if c is Code.VALUE:
        return Handed(key, c, type="string", value=detail)
    if c is Code.SET_TTL:
        return Handed(key, c, ms=int(detail))
    if c is Code.DELETE:
        return Handed(key, c, size=int(detail))
    return Handed(key, c)


@dataclass(frozen=True, slots=True)
class Inspected:
    """INSPECT's row for one key."""

    key: bytes
    type: str  # "none": gone; "": has a TTL and was not read (unless read_ttl); else its type
    pttl: int
    value: bytes | Edges | None  # the string, a too-large string's edges, or nothing read


def inspect(
    tally: Tally, client: redis.Redis, *, keys: Sequence[bytes], max_value: int, budget: int, read_ttl: bool, edge: int
) -> list[Inspected]:
    """Type, TTL and value of ``keys``; a prefix of them once the ``budget`` bytes are spent.

    ``read_ttl``: read keys that have a TTL too (cap mode, census). A string over ``max_value``
    bytes comes back as its length and ``edge`` bytes of head and tail."""
    rows = tally.run(client, INSPECT, list(keys), [max_value, budget, int(read_ttl), edge])
    return [Inspected(k, _text(t), int(p), _value(v)) for k, (t, p, v) in zip(keys, rows, strict=False)]


def _value(value: Any) -> bytes | Edges | None:
    if isinstance(value, list):
        return Edges.of(value)
    return value if isinstance(value, bytes) else None


class Op(enum.StrEnum):
    """What ACT does to one key (the wire values are ACT's)."""

    SET_TTL = "x"  # set a TTL on a key that has none
    CAP_TTL = "c"  # shorten a longer TTL
    DELETE = "d"  # unlink a key with no TTL
    DELETE_ANY = "D"  # unlink, whatever its TTL (cap mode)


@dataclass(frozen=True, slots=True)
class Write:
    """One ACT target: ``op`` with TTL ``ms``, applied only if ``guard`` holds (see janitor/redis_io/lua/act.lua)."""

    key: bytes
    op: Op
    ms: int
    guard: str


def act(tally: Tally, client: redis.Redis, *, fence: bytes, token: str, writes: Sequence[Write]) -> list[bool]:
    """Apply ``writes``; per write, whether it was applied (False: the key changed, left alone).

    Refused whole (``FENCED``) unless ``fence`` holds ``token`` ("" = no fence)."""
    args: list[Any] = [token]
    for w in writes:
        args += [w.op.value, w.ms, w.guard]
    return [bool(ok) for ok in tally.run(client, ACT, [fence, *(w.key for w in writes)], args)]


# -- abandoned STARTED results -------------------------------------------------------------
STARTED = Script.packaged("started")
REAP = Script.packaged("reap")


@dataclass(frozen=True, slots=True)
class StartedPage:
    """One STARTED page: the next cursor, how many keys it scanned, and the values that may be STARTED."""

    cursor: bytes
    scanned: int
    too_large: int  # values whose head says STARTED, over max_bytes: never read
    values: list[tuple[bytes, bytes]]  # (key, value)

    @property
    def last(self) -> bool:
        return self.cursor == b"0"


def started(
    tally: Tally, client: redis.Redis, *, cursor: bytes, match: str, count: int, max_bytes: int, head: int = 64
) -> StartedPage:
    """One SCAN page (``cursor``, ``match``, ``count``) of string keys, with the values whose first
    ``head`` bytes hold ``STARTED`` and that are at most ``max_bytes`` long."""
    reply = tally.run(client, STARTED, [], [cursor, match, count, max_bytes, head])
    rest = reply[3:]
    return StartedPage(_key(reply[0]), int(reply[1]), int(reply[2]), list(zip(rest[::2], rest[1::2], strict=True)))


def reap(
    tally: Tally, client: redis.Redis, *, fence: bytes, token: str, key: bytes, read: bytes, value: bytes, ttl_ms: int
) -> bool:
    """Write ``value`` to ``key`` for ``ttl_ms`` and PUBLISH it on ``key``, if ``key`` still holds
    exactly ``read``; False when it changed (left alone). Refused (``FENCED``) unless ``fence`` holds ``token``."""
    args = [token, len(read), sha1(read), value, ttl_ms]
    return bool(tally.run(client, REAP, [fence, key], args))


# -- RedBeat ---------------------------------------------------------------------------------
REDBEAT_DUE = Script.packaged("redbeat_due")


@dataclass(frozen=True, slots=True)
class DueEntry:
    """One due RedBeat entry: its key, when it was due, its interval (None: not an interval schedule)."""

    key: bytes
    due_at: float
    every: float | None
    enabled: bool


@dataclass(frozen=True, slots=True)
class BeatSchedule:
    entries: int  # in the schedule zset
    due: list[DueEntry]  # the oldest due first, at most the limit asked for


def redbeat_due(
    tally: Tally, client: redis.Redis, *, schedule: Key, now: float, limit: int, max_bytes: int
) -> BeatSchedule:
    """The entries of RedBeat's ``schedule`` due by ``now`` (``limit`` at most), with their intervals."""
    reply = tally.run(client, REDBEAT_DUE, [_key(schedule)], [repr(now), limit, max_bytes])
    rows = reply[1:]
    due = [
        DueEntry(_key(k), float(s), None if float(e) < 0 else float(e), bool(int(on)))
        for k, s, e, on in zip(rows[::4], rows[1::4], rows[2::4], rows[3::4], strict=True)
    ]
    return BeatSchedule(int(reply[0]), due)


# -- the lease -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Acquired:
    """ACQUIRE's reply: our new token, or, while another holds the lease, how long it has left."""

    token: str = ""
    holder_pttl: int = 0  # ms, when token is ""


def acquire(tally: Tally, client: redis.Redis, *, lease: bytes, epoch: bytes, nonce: str, ttl_ms: int) -> Acquired:
    """Take the lease if it is free: token ``<INCR epoch>:<nonce>``, for ``ttl_ms``."""
    reply = tally.run(client, ACQUIRE, [lease, epoch], [nonce, ttl_ms])
    if isinstance(reply, bytes):
        return Acquired(token=reply.decode())
    return Acquired(holder_pttl=int(reply))


def renew(tally: Tally, client: redis.Redis, *, lease: bytes, token: str, ttl_ms: int) -> bool:
    """Give the lease ``ttl_ms`` more if it still holds ``token``."""
    return bool(tally.run(client, RENEW, [lease], [token, ttl_ms]))


def release(tally: Tally, client: redis.Redis, *, lock: Key, token: str) -> bool:
    """Delete ``lock`` (the lease, kombu's unacked_mutex) if it still holds ``token``."""
    return bool(tally.run(client, RELEASE, [_key(lock)], [token]))


# -- the broker ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Summarised:
    """SUMMARY's row for one delivery tag."""

    found: bool  # the unacked hash has an entry for it
    fields: bytes | None  # the summary as JSON; None when the entry is not kombu's JSON


def summary(tally: Tally, client: redis.Redis, *, unacked: Key, tags: Sequence[str]) -> list[Summarised]:
    """The headers the janitor needs of each of ``tags`` (at least one), summarised on the server."""
    rows = tally.run(client, SUMMARY, [_key(unacked)], list(tags))
    return [Summarised(row is not None, None if row in {None, b"!"} else row) for row in rows]


def result_heads(tally: Tally, client: redis.Redis, *, keys: Sequence[bytes], max_bytes: int) -> list[bytes | None]:
    """Each key's value when it is a string of at most ``max_bytes``, else None (never read)."""
    return [v if isinstance(v, bytes) else None for v in tally.run(client, RESULT_HEADS, list(keys), [max_bytes])]


@dataclass(frozen=True, slots=True)
class OrphanPage:
    """One HSCAN page of the unacked hash: the next cursor, and the fields with no index entry."""

    cursor: bytes
    orphans: list[bytes]

    @property
    def last(self) -> bool:
        return self.cursor == b"0"


def hash_orphans(
    tally: Tally, client: redis.Redis, *, unacked: Key, index: Key, cursor: bytes, count: int
) -> OrphanPage:
    """The ``unacked`` fields of one HSCAN page (at ``cursor``, COUNT ``count``) missing from ``index``."""
    next_cursor, orphans = tally.run(client, HASH_ORPHANS, [_key(unacked), _key(index)], [cursor, count])
    return OrphanPage(_key(next_cursor), list(orphans))


@dataclass(frozen=True, slots=True)
class SublistDepth:
    """QUEUE_DEPTH's row for one priority sub-list."""

    length: int
    stamp: float | None  # the next message's timestamp, when it has one
    head_id: str = ""  # the next message's task id, when it has one


def queue_depth(tally: Tally, client: redis.Redis, *, lists: Sequence[Key]) -> list[SublistDepth]:
    """Length of each of a queue's priority ``lists``, and the timestamp of its next message."""
    rows = tally.run(client, QUEUE_DEPTH, [_key(k) for k in lists], [])
    return [
        SublistDepth(int(n), float(row[0]) if row[0] else None, _text(row[1]) if len(row) > 1 and row[1] else "")
        for n, *row in rows
    ]


class Outcome(enum.StrEnum):
    """What RESTORE did with one message."""

    RESTORED = "restored"  # pushed back to its queues
    DEAD = "dead"  # pushed to the dead-letter list
    GONE = "gone"  # no hash entry any more (acked, or restored by kombu)
    CHANGED = "changed"  # re-delivered since it was read


@dataclass(frozen=True, slots=True)
class Restored:
    outcome: Outcome
    restores: int = 0  # RESTORED, DEAD: restores counted so far, this one included


def restore(
    tally: Tally,
    client: redis.Redis,
    *,
    unacked: Key,
    index: Key,
    mutex: Key,
    counter: Key,
    dead_list: Key,
    targets: Sequence[Key],
    tag: str,
    mutex_token: str,
    entry: bytes,
    new_payload: str,
    delivered_at: float,
    max_restores: int,
    counter_ttl_s: int,
    dead_letter: bool,
) -> Restored:
    """Move the message ``tag`` back to ``targets`` (or to ``dead_list``: past ``max_restores``, or
    ``dead_letter``), if its hash ``entry`` and delivery score are still as read; refused
    (``FENCED``) unless ``mutex`` holds ``mutex_token``."""
    keys = [_key(k) for k in (unacked, index, mutex, counter, dead_list, *targets)]
    args = [tag, mutex_token, sha1(entry), new_payload, repr(delivered_at), max_restores, counter_ttl_s]
    reply = tally.run(client, RESTORE, keys, [*args, "1" if dead_letter else "0"])
    outcome, _, n = _text(reply).partition(":")
    return Restored(Outcome(outcome), int(n or 0))


# -- the ETA and running-task guards -------------------------------------------------------
RESCORE = Script.packaged("rescore")


class Rescored(enum.StrEnum):
    """What RESCORE did with one message."""

    RAISED = "raised"  # its score is now the new one
    GONE = "gone"  # acked or restored since it was read
    CHANGED = "changed"  # another copy of the entry, or another score, since it was read
    LOWER = "lower"  # already scored at least that high: never lowered


def rescore(
    tally: Tally,
    client: redis.Redis,
    *,
    unacked: Key,
    index: Key,
    mutex: Key,
    tag: str,
    mutex_token: str,
    entry: bytes,
    read_score: float,
    new_score: float,
) -> Rescored:
    """Raise ``tag``'s ``index`` score to ``new_score`` if its hash ``entry`` and score are still as read;
    refused (``FENCED``) unless ``mutex`` holds ``mutex_token``."""
    keys = [_key(k) for k in (unacked, index, mutex)]
    reply = tally.run(client, RESCORE, keys, [tag, mutex_token, sha1(entry), repr(read_score), repr(new_score)])
    return Rescored(_text(reply))


def _key(key: Key) -> bytes:
    return key if isinstance(key, bytes) else key.encode()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# -- queue browse, purge and dead letters --------------------------------------------------
@dataclass(frozen=True, slots=True)
class NameTally:
    """One task name's messages in a page: how many, where (positions from the head) and their stamps."""

    name: str
    count: int
    first: int  # nearest the head (the next consumed is 0)
    last: int
    oldest_stamp: float | None
    newest_stamp: float | None


@dataclass(frozen=True, slots=True)
class TallyPage:
    length: int  # LLEN when the page was read
    read: int
    names: list[NameTally]


def queue_tally(tally: Tally, client: redis.Redis, *, list_key: Key, start: int, size: int) -> TallyPage:
    """QUEUE_TALLY: positions ``start``..``start+size-1`` from the head of ``list_key``, tallied by task name."""
    reply = tally.run(client, QUEUE_TALLY, [_key(list_key)], [start, size])
    rows = reply[2:]
    names = [
        NameTally(
            _text(rows[i]), int(rows[i + 1]), int(rows[i + 2]), int(rows[i + 3]), _num(rows[i + 4]), _num(rows[i + 5])
        )
        for i in range(0, len(rows), 6)
    ]
    return TallyPage(int(reply[0]), int(reply[1]), names)


class Move(enum.StrEnum):
    """What MOVE_PAGE does with the messages of a page that match."""

    PURGE = "purge"  # to the dead-letter list
    REPLAY = "replay"  # back to the queue's priority list
    DROP = "drop"  # deleted
    COUNT = "count"  # nothing: what would move (read-only)


@dataclass(frozen=True, slots=True)
class Moved:
    read: int
    moved: int
    unstamped: int  # not matched: no stamp to compare with the cutoff
    length: int  # LLEN before the call
    by_name: dict[str, int]


def move_page(
    tally: Tally,
    client: redis.Redis,
    *,
    mode: Move,
    source: Key,
    record: Key,
    targets: Sequence[Key] = (),
    steps: Sequence[int] = (),
    start: int,
    size: int,
    task: str = "",
    stamp_before: float | None = None,
    most: int,
    tombstone: str,
    note: str = "",
) -> Moved:
    """MOVE_PAGE: the matching messages of one page of ``source`` moved in one atomic call (see the script).

    ``targets``: the dead-letter list (PURGE), or the queue's lists at ``steps`` (REPLAY). COUNT writes
    nothing; run it through a :class:`ReadOnlyTally`."""
    keys = [_key(source), _key(record), *(_key(t) for t in targets)]
    cutoff = "" if stamp_before is None else repr(stamp_before)
    args: list[Any] = [mode.value, start, size, task, cutoff, most, tombstone, note, *steps]
    reply = tally.run(client, MOVE_PAGE, keys, args)
    rest = reply[4:]
    by_name = {_text(rest[i]): int(rest[i + 1]) for i in range(0, len(rest), 2)}
    return Moved(int(reply[0]), int(reply[1]), int(reply[2]), int(reply[3]), by_name)


@dataclass(frozen=True, slots=True)
class DeadEntry:
    task_name: str
    task_id: str
    tag: str
    record: str  # '<reason> <unix time>' or ''
    stamp: float | None


def dead_page(
    tally: Tally, client: redis.Redis, *, dead_list: Key, record: Key, start: int, size: int, task: str = ""
) -> tuple[int, list[DeadEntry]]:
    """DEAD_PAGE: entries read, and those matching ``task`` (oldest first), without their bodies."""
    reply = tally.run(client, DEAD_PAGE, [_key(dead_list), _key(record)], [start, size, task])
    rows = reply[1:]
    entries = [
        DeadEntry(_text(rows[i]), _text(rows[i + 1]), _text(rows[i + 2]), _text(rows[i + 3]), _num(rows[i + 4]))
        for i in range(0, len(rows), 5)
    ]
    return int(reply[0]), entries


def dead_trim(
    tally: Tally,
    client: redis.Redis,
    *,
    dead_list: Key,
    record: Key,
    keep: int,
    before: float | None,
    note: str,
    most: int,
) -> tuple[int, bool]:
    """DEAD_TRIM: (entries dropped, more to drop) for a cap of ``keep`` (0: none) and an age cutoff ``before``."""
    cutoff = "" if before is None else repr(before)
    dropped, more = tally.run(client, DEAD_TRIM, [_key(dead_list), _key(record)], [keep, cutoff, note, most])
    return int(dropped), bool(more)


def _num(value: Any) -> float | None:
    text = _text(value) if isinstance(value, bytes | str) else ""
    try:
        return float(text) if text else None
    except ValueError:
        return None
