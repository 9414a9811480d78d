"""Whether Redis can have been written since an earlier reading, from what it already counts.

``INFO commandstats`` counts every call of every command, including the ones run inside
scripts, functions and MULTI blocks, since the server started or since ``CONFIG
RESETSTAT``. Two readings of one server (same ``run_id``) whose calls of a set of
commands are all equal prove that no command of that set ran in between. A job whose
work can only appear through such commands may then skip its run: nothing it would
find can be new. A restart, a failover, a reset or a missing section makes the
readings incomparable, and the job runs.

No I/O: :class:`Mark` is built from an INFO reply (``INFO everything`` as redis-py
parses it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Every command that can leave a key of a kind the sweep handles without a TTL: create or
# overwrite one (strings: results, groups, chord sizes and counters; lists and sorted sets:
# chord joins, pidbox replies; sets: chord dedup), take its TTL away, or bring one into the
# database. Celery writes results and groups with SET, chord parts with RPUSH/ZADD/INCR/SADD,
# kombu replies with LPUSH; the rest are here because nothing stops another client using them.
RESULT_WRITES = frozenset(
    {
        "set", "setnx", "setrange", "append", "getset", "getex", "mset", "msetnx", "persist",
        "rename", "renamenx", "copy", "move", "restore", "restore-asking", "swapdb", "migrate",
        "incr", "incrby", "decr", "decrby", "incrbyfloat", "setbit", "bitop", "bitfield", "pfadd", "pfmerge",
        "lpush", "rpush", "lmove", "blmove", "rpoplpush", "brpoplpush", "sort",
        "zadd", "zincrby", "zunionstore", "zinterstore", "zdiffstore", "zrangestore", "georadius",
        "georadiusbymember", "geosearchstore", "geoadd", "sadd", "smove", "sinterstore", "sunionstore",
        "sdiffstore",
    }
)  # fmt: skip

# The ones of those that publish a ``set`` keyevent: what watch mode hears. A key the others write
# (RESTORE, RENAME, COPY, SETRANGE, PERSIST...) is left to a full pass.
NOTIFIED_AS_SET = frozenset({"set", "setnx", "mset", "msetnx", "getset"})

# In cap mode a pass also shortens TTLs that are too long, so every way of setting one counts too.
TTL_WRITES = frozenset({"setex", "psetex", "expire", "pexpire", "expireat", "pexpireat"})

# Every command that can change what the broker check reads: kombu's queues (lists), its
# unacked hash and index, its bindings (sets), RedBeat's keys. TTL changes are left out: the
# lease's own renewal is one, and a broker key that expires only ever makes a finding stale
# in the safe direction until the next full check.
BROKER_WRITES = RESULT_WRITES | frozenset(
    {
        "del", "unlink", "getdel", "flushdb", "flushall", "hset", "hsetnx", "hmset", "hdel", "hincrby",
        "hincrbyfloat", "lpushx", "rpushx", "lpop", "rpop", "blpop", "brpop", "lmpop", "blmpop", "lrem",
        "ltrim", "lset", "linsert", "srem", "spop", "zrem", "zremrangebyscore", "zremrangebyrank",
        "zremrangebylex", "zpopmin", "zpopmax", "bzpopmin", "bzpopmax", "zmpop", "bzmpop",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Mark:
    """One reading of a server's command counters."""

    run_id: str
    calls: Mapping[str, int]  # command name (lower case) -> calls; a command never called is absent

    @classmethod
    def of(cls, info: Mapping[str, Any]) -> Mark | None:
        """The mark in an ``INFO everything`` reply; None when it has no run_id or no command stats
        (a managed server that hides them: then nothing is ever skipped)."""
        run_id = info.get("run_id")
        stats = {k[len("cmdstat_") :]: v for k, v in info.items() if k.startswith("cmdstat_")}
        if not run_id or not stats:
            return None
        calls: dict[str, int] = {}
        for name, value in stats.items():
            count = value.get("calls") if isinstance(value, Mapping) else None
            if isinstance(count, int):
                # Subcommands are listed as "config|set"; renamed or module commands keep their names.
                calls[name.lower()] = count
        return cls(str(run_id), calls)

    def unchanged_since(self, earlier: Mark, commands: Iterable[str]) -> bool:
        """No command of ``commands`` ran between ``earlier`` and this reading, on the same server."""
        if self.run_id != earlier.run_id:
            return False
        return all(self.calls.get(c, 0) == earlier.calls.get(c, 0) for c in commands)
