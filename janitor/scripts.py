"""Server-side batch scripts, and the command tally every Redis call goes through.

Two scripts per batch keep the janitor at two round trips per SCAN page:
``INSPECT`` reads type, TTL and (when needed) the value of every key in the
batch; ``ACT`` applies the decisions, re-checking each key inside the same
atomic call so a key Celery rewrote in between is left alone.
"""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass, field
from typing import Any

import redis

# KEYS: the batch. ARGV[1]: largest value to return; ARGV[2]: byte budget for the
# reply; ARGV[3]: '1' to read keys that already have a TTL (cap mode, census).
# Returns {type, pttl, value | size | false} per key, stopping early (a prefix of
# KEYS) once the budget is spent, so no reply is unbounded. A key with a TTL is
# only PTTL'd (type ''): the sweep leaves it alone, so one call is all it costs.
# GETRANGE under pcall reads a string and learns its type in one call; it returns
# at most max+1 bytes, so a huge value is measured (STRLEN), never shipped.
INSPECT = """
local max_value = tonumber(ARGV[1])
local budget = tonumber(ARGV[2])
local all_keys = ARGV[3] == '1'
local out = {}
for i = 1, #KEYS do
  local k = KEYS[i]
  local pttl = redis.call('PTTL', k)
  local t, v = '', false
  if pttl == -2 then
    t = 'none'
  elseif pttl == -1 or all_keys then
    v = redis.pcall('GETRANGE', k, 0, max_value)
    if type(v) == 'table' then
      t, v = redis.call('TYPE', k)['ok'], false
    elseif #v > max_value then
      t, v = 'string', redis.call('STRLEN', k)
    else
      if #v > budget and i > 1 then break end
      t, budget = 'string', budget - #v
    end
  end
  out[i] = {t, pttl, v}
end
return out
"""

# KEYS[1]: fence key, KEYS[2..]: targets. ARGV[1]: expected fence token ('' = none);
# then per target: op, milliseconds, guard. Ops: 'x' set a TTL on a key that has
# none, 'c' shorten a longer TTL, 'd' unlink a key with no TTL, 'D' unlink
# regardless of TTL. Guards, checked inside this atomic call: 'S<sha1>' the value
# INSPECT read is unchanged (deletes: losing a fresh rewrite would be data loss);
# 'L<n>' its length is unchanged (TTLs: O(1), and the TTL check already catches
# Celery's SETEX rewrites); '' none (non-string keys). Returns 1/0 per target:
# applied, or left alone because it changed.
ACT = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED lease lost before this batch')
end
local done = {}
for i = 2, #KEYS do
  local k = KEYS[i]
  local j = (i - 2) * 3 + 2
  local op, ms, guard = ARGV[j], tonumber(ARGV[j + 1]), ARGV[j + 2]
  local pttl = redis.call('PTTL', k)
  local ok = pttl ~= -2
  local g = string.sub(guard, 1, 1)
  if ok and g == 'S' then
    local v = redis.pcall('GET', k)
    ok = type(v) == 'string' and redis.sha1hex(v) == string.sub(guard, 2)
  elseif ok and g == 'L' then
    local n = redis.pcall('STRLEN', k)
    ok = type(n) == 'number' and n == tonumber(string.sub(guard, 2))
  end
  if ok then
    if op == 'x' and pttl == -1 then
      redis.call('PEXPIRE', k, ms)
    elseif op == 'c' and pttl > ms then
      redis.call('PEXPIRE', k, ms)
    elseif (op == 'd' and pttl == -1) or op == 'D' then
      redis.call('UNLINK', k)
    else
      ok = false
    end
  end
  done[i - 1] = ok and 1 or 0
end
return done
"""


def sha1(value: bytes) -> str:
    return hashlib.sha1(value, usedforsecurity=False).hexdigest()


@dataclass
class Tally:
    """Counts every command sent to Redis, by name (Upstash bills each one)."""

    commands: collections.Counter[str] = field(default_factory=collections.Counter)

    def scan(self, client: redis.Redis, cursor: int, match: str, count: int) -> tuple[int, list[bytes]]:
        self.commands["SCAN"] += 1
        next_cursor, keys = client.scan(cursor, match=match, count=count)
        return int(next_cursor), [k if isinstance(k, bytes) else k.encode() for k in keys]

    def run(self, client: redis.Redis, source: str, keys: list[bytes], args: list[Any]) -> Any:
        """EVALSHA, loading the script once on NOSCRIPT (after a restart or SCRIPT FLUSH)."""
        digest = sha1(source.encode())
        self.commands["EVALSHA"] += 1
        try:
            return client.evalsha(digest, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self.commands["SCRIPT LOAD"] += 1
            client.script_load(source)
            self.commands["EVALSHA"] += 1
            return client.evalsha(digest, len(keys), *keys, *args)
