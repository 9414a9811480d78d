"""Server-side batch scripts, and the command tally every Redis call goes through.

``DECIDE`` SCANs a page (or takes a batch by name), reads every key's TTL, decides
and acts on plain JSON task results inside Redis, one call per batch, and hands
back the Celery keys with no TTL it is not certain about, with what it read.
:func:`janitor.sweeps.rules.decide` decides those in Python; ``INSPECT`` reads
type, TTL and value of what DECIDE could not read (and of every key in cap mode),
and ``ACT`` applies the decisions, re-checking each key inside the same atomic
call so a key Celery rewrote in between is left alone.
"""

from __future__ import annotations

import collections
import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any

import redis

# KEYS: the batch. ARGV[1]: largest value to return; ARGV[2]: byte budget for the
# reply; ARGV[3]: '1' to read keys that already have a TTL (cap mode, census);
# ARGV[4]: bytes of a larger value's head and tail to return.
# Returns {type, pttl, value | {size, head, tail} | false} per key, stopping early (a
# prefix of KEYS) once the budget is spent, so no reply is unbounded. A key with a TTL
# is only PTTL'd (type ''): the sweep leaves it alone, so one call is all it costs.
# GETRANGE under pcall reads a string and learns its type in one call; it returns
# at most max+1 bytes, so a huge value is measured (STRLEN) and only its edges shipped
# (GETRANGE; janitor.payload.edge_result_meta judges them), never read whole.
INSPECT = """
local max_value = tonumber(ARGV[1])
local budget = tonumber(ARGV[2])
local all_keys = ARGV[3] == '1'
local edge = tonumber(ARGV[4])
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
    else
      local n = #v
      if n > max_value then
        n = redis.call('STRLEN', k)
        v = {n, string.sub(v, 1, edge), redis.call('GETRANGE', k, math.max(n - edge, 0), n - 1)}
        n = #v[2] + #v[3]
      end
      if n > budget and i > 1 then break end
      t, budget = 'string', budget - n
    end
  end
  out[i] = {t, pttl, v}
end
return out
"""

# KEYS[1]: fence key, KEYS[2..]: targets. ARGV[1]: expected fence token ('' = none);
# then per target: op, milliseconds, guard. Ops: 'x' set a TTL on a key that has
# none, 'c' shorten a longer TTL, 'd' unlink a key with no TTL, 'D' unlink
# regardless of TTL. Guards, checked inside this atomic call: 'S<length>:<sha1>' the
# value INSPECT read is unchanged (deletes: losing a fresh rewrite would be data loss;
# the length first, so a value rewritten larger meanwhile is never read whole);
# 'E<length>:<h>:<t>:<sha1>' for a value too large to read whole, its length and the
# digest of its first h and last t bytes (what the decision was taken on) are unchanged;
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
    local size, sum = string.match(guard, '^S(%d+):(%x+)$')
    local n = redis.pcall('STRLEN', k)
    ok = type(n) == 'number' and n == tonumber(size)
    if ok then
      ok = redis.sha1hex(redis.call('GET', k)) == sum
    end
  elseif ok and g == 'L' then
    local n = redis.pcall('STRLEN', k)
    ok = type(n) == 'number' and n == tonumber(string.sub(guard, 2))
  elseif ok and g == 'E' then
    local size, h, t, sum = string.match(guard, '^E(%d+):(%d+):(%d+):(%x+)$')
    local n = redis.pcall('STRLEN', k)
    size, h, t = tonumber(size), tonumber(h), tonumber(t)
    ok = type(n) == 'number' and n == size and h > 0 and t > 0 and t <= n
    if ok then
      local read = redis.call('GETRANGE', k, 0, h - 1) .. redis.call('GETRANGE', k, n - t, n - 1)
      ok = redis.sha1hex(read) == sum
    end
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


# The retention rules of janitor.sweeps.rules for the common case, evaluated where
# the values are, so they never cross the network: a JSON task result with no TTL.
# Two ways to get its keys: SCAN them itself (ARGV[1] a cursor: one call per page,
# no key crosses the network twice), or KEYS[2..] (ARGV[1] ''; Redis Cluster, where
# a call's keys must share a slot, and what a page left over).
# KEYS[1]: fence key. ARGV: cursor | '', SCAN COUNT, SCAN MATCH, most keys to look
# at (the rest are handed back, code 8), fence token ('' = none), '1' dry run, now
# (us since the epoch), result/failure/pending TTL (ms), future tolerance (us),
# largest value to read, task and group key prefixes, reply byte budget, '1' when a
# naive date_done is UTC (JANITOR_NAIVE_TIMEZONE; otherwise naive dates go to Python),
# bytes of a too-large value's head and tail to return.
# Returns {next cursor | '', keys scanned, Celery keys it judged, TTLs set, keys
# deleted, bytes deleted}, then key, code, detail for each key it hands back:
# 7, pttl: a key under neither prefix, or a Celery name it is unsure of that has a TTL
# (janitor.keyspace.Layout judges the name); a key with no TTL under a prefix that
# it is not certain about, with what INSPECT would have read: 3, type (not a
# string); 5, {size, head, tail} (a string too large to read whole); 6, value; 4, 0 the reply's byte
# budget is spent (INSPECT it); 8, 0 over the limit. A dry run also lists what it
# would do per key: 1, ms TTL; 2, bytes delete (tests/test_decide_script.py).
# "Certain" is narrow on purpose: printable ASCII, strict JSON numbers, shallow
# nesting, date_done in the exact ISO forms Celery writes and a valid calendar
# date; anything else costs one more round trip, never a different decision.
DECIDE = r"""
local cursor, token, dry = ARGV[1], ARGV[5], ARGV[6] == '1'
local now, rttl, fttl, pending = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local tol, maxv, tp, gp, budget = tonumber(ARGV[11]), tonumber(ARGV[12]), ARGV[13], ARGV[14], tonumber(ARGV[15])
local tn, gn = #tp, #gp
local naive_utc, edge = ARGV[16] == '1', tonumber(ARGV[17])
if not dry and token ~= '' and redis.call('GET', KEYS[1]) ~= token then
  return redis.error_reply('FENCED lease lost before this batch')
end
local byte, find, match, sub, floor, tonum = string.byte, string.find, string.match, string.sub, math.floor, tonumber
local maxs = ARGV[12]
local mdays = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}
-- Days since the epoch of a valid 'YYYY-MM-DD', else false; cached, as most results of
-- a page were written on a few days.
local days = setmetatable({}, {__index = function(cache, date)
  local y, mo, d = tonum(sub(date, 1, 4)), tonum(sub(date, 6, 7)), tonum(sub(date, 9, 10))
  local leap = y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)
  local n = false
  if y >= 1971 and y <= 9998 and mo >= 1 and mo <= 12 and d >= 1
      and d <= mdays[mo] + ((mo == 2 and leap) and 1 or 0) then
    local era = floor((mo <= 2 and y - 1 or y) / 400)
    local yoe = (mo <= 2 and y - 1 or y) - era * 400
    local doy = floor((153 * ((mo + 9) % 12) + 2) / 5) + d - 1
    n = era * 146097 + yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy - 719468
  end
  cache[date] = n
  return n
end})
-- Microseconds since the epoch, or nil for anything but Celery's isoformat().
local function parse(s)
  if type(s) ~= 'string' then return nil end
  local date, h, mi, sec, frac, rest = match(s, '^(%d%d%d%d%-%d%d%-%d%d)[T ](%d%d):(%d%d):(%d%d)%.?(%d*)(.*)$')
  if not date or not days[date] then return nil end
  h, mi, sec = tonum(h), tonum(mi), tonum(sec)
  if h > 23 or mi > 59 or sec > 59 then return nil end
  local us, off = 0, 0
  if frac ~= '' then
    if #frac > 6 or byte(s, 20) ~= 46 then return nil end
    us = tonum(frac) * 10 ^ (6 - #frac)
  elseif byte(s, 20) == 46 then
    return nil
  end
  if rest == '' and not naive_utc then return nil end
  if rest ~= '' and rest ~= 'Z' and rest ~= '+00:00' then
    local sign, oh, om = match(rest, '^([+-])(%d%d):(%d%d)$')
    if not sign or tonum(oh) > 23 or tonum(om) > 59 then return nil end
    off = (tonum(oh) * 60 + tonum(om)) * 60
    if sign == '-' then off = -off end
  end
  return (((days[date] * 24 + h) * 60 + mi) * 60 + sec - off) * 1000000 + us
end
-- A private decoder with cjson's strict numbers (+1, 0x1, 01, inf, nan refused) and
-- a depth Python's json always reaches; the shared cjson's settings stay as they are.
local json = cjson.new and cjson.new()
if json then
  json.decode_invalid_numbers(false)
  json.decode_max_depth(100)
end
-- What both decoders read alike: printable ASCII only (Python's json sniffs the
-- encoding of bytes and refuses raw control characters in strings; kombu's json
-- escapes both) and no number strtod takes but JSON does not: -.5, 1. and 1.e5,
-- i.e. a dot after '-', or after a digit and not before one. Anchored patterns:
-- Lua then runs one tight loop over the value, not a match attempt per byte.
local function certain(v)
  if not json or byte(v) ~= 123 or not find(v, '^[\32-\126]*$') then return false end
  local at = find(v, '.', 1, true)
  while at do
    local before, _, after = byte(v, at - 1, at + 1)
    if before == 45 or (before >= 48 and before <= 57 and not (after and after >= 48 and after <= 57)) then
      return false
    end
    at = find(v, '.', at + 1, true)
  end
  return true
end
-- The retention rule for a certain task result: 1, ms or 2, bytes; nil if unsure.
local ready = {SUCCESS = true, FAILURE = true, REVOKED = true}
-- An id no Celery name check could refuse (janitor.keyspace._plausible_id): a uuid-like one.
local function plain(k, at)
  return #k - at < 255 and find(k, '^%w[%w%-%.]*$', at) and not find(k, 'celery-task', at, true)
end
local function rule(k, at, v)
  local ok, m = pcall(json.decode, v)
  if not ok or type(m) ~= 'table' then return nil end
  local st, tid, id = m.status, m.task_id, sub(k, at)
  if m.result == nil or not (tid == nil or tid == cjson.null or tid == id) then return nil end
  -- The value names the key's id. With no escape in it, the id is bytes of a certain
  -- (printable ASCII) value, so only the other name checks are left: cheaper than plain().
  if tid == id and not find(v, '\\', 1, true) then
    if #id == 0 or #id > 255 or find(id, '*', 1, true) or find(id, '?', 1, true) or find(id, '[', 1, true)
        or find(id, ']', 1, true) or find(id, 'celery-task', 1, true) then
      return nil
    end
  elseif not plain(k, at) then
    return nil
  end
  if not ready[st] then
    if type(st) ~= 'string' or #st > 64 or not find(st, '^[A-Za-z][A-Za-z0-9_%-]*$') then return nil end
    return 1, pending
  end
  local done = parse(m.date_done)
  if not done or now - done < -tol then return nil end
  local age = now - done
  if age < 0 then age = 0 end
  local left = (st == 'FAILURE' and fttl or rttl) * 1000 - age
  left = (left - left % 1000) / 1000
  if left <= 0 then return 2, #v end
  return 1, left
end
local keys, first, after = KEYS, 2, ''
if cursor ~= '' then
  local page = redis.call('SCAN', cursor, 'MATCH', ARGV[3], 'COUNT', ARGV[2])
  keys, first, after = page[2], 1, page[1]
end
local limit = first + tonum(ARGV[4]) - 1
local celery, set, deleted, freed = 0, 0, 0, 0
local out = {after, #keys - first + 1, 0, 0, 0, 0}
local function hand(k, code, x)
  local n = #out
  out[n + 1], out[n + 2], out[n + 3] = k, code, x
end
for i = first, #keys do
  local k = keys[i]
  local task = find(k, tp, 1, true) == 1
  local at = task and tn + 1 or (find(k, gp, 1, true) == 1 and gn + 1)
  if i > limit then
    hand(k, 8, 0)
  elseif not at then
    hand(k, 7, redis.call('PTTL', k))
  else
    local pttl = redis.call('PTTL', k)
    if pttl ~= -1 then
      if plain(k, at) then celery = celery + 1 else hand(k, 7, pttl) end
    else
      celery = celery + 1
      local v = redis.pcall('GETRANGE', k, '0', maxs)
      local code, x
      if type(v) ~= 'string' then
        code, x = 3, redis.call('TYPE', k)['ok']
      elseif #v > maxv then
        local n = redis.call('STRLEN', k)
        code, x = 5, {n, sub(v, 1, edge), redis.call('GETRANGE', k, math.max(n - edge, 0), n - 1)}
      elseif task and certain(v) then
        code, x = rule(k, at, v)
      end
      if code == 1 or code == 2 then
        if dry then
          hand(k, code, x)
        elseif code == 2 then
          redis.call('UNLINK', k)
        else
          redis.call('PEXPIRE', k, x)
        end
        if code == 2 then deleted, freed = deleted + 1, freed + x else set = set + 1 end
      elseif code == 5 then
        if #x[2] + #x[3] <= budget or #out == 6 then
          hand(k, code, x)
          budget = budget - #x[2] - #x[3]
        else
          hand(k, 4, 0)
        end
      elseif code then
        hand(k, code, x)
      elseif #v <= budget or #out == 6 then
        hand(k, 6, v)
        budget = budget - #v
      else
        hand(k, 4, 0)
      end
    end
  end
end
out[3], out[4], out[5], out[6] = celery, set, deleted, freed
return out
"""


def sha1(value: bytes) -> str:
    return hashlib.sha1(value, usedforsecurity=False).hexdigest()


@functools.cache
def digest(source: str) -> str:
    """A script's SHA-1, as EVALSHA names it; worked out once per script, not once per call."""
    return sha1(source.encode())


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
        sha = digest(source)
        self.commands["EVALSHA"] += 1
        try:
            return client.evalsha(sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self.commands["SCRIPT LOAD"] += 1
            client.script_load(source)
            self.commands["EVALSHA"] += 1
            return client.evalsha(sha, len(keys), *keys, *args)


@dataclass
class ReadOnlyTally(Tally):
    """A tally whose scripts run as EVALSHA_RO (Redis 7+, Valkey): the server rejects writes in them.

    Falls back to EVALSHA, once, on a server that does not know the command;
    the scripts it runs only read either way.
    """

    read_only: bool | None = None  # None until the server has answered

    def run(self, client: redis.Redis, source: str, keys: list[bytes], args: list[Any]) -> Any:
        if self.read_only is False:
            return super().run(client, source, keys, args)
        sha = digest(source)
        try:
            return self._ro(client, sha, keys, args)
        except redis.exceptions.NoScriptError:
            self.commands["SCRIPT LOAD"] += 1
            client.script_load(source)
            return self._ro(client, sha, keys, args)
        except redis.ResponseError as exc:
            if "unknown command" not in str(exc).lower():
                raise
            self.read_only = False
            return super().run(client, source, keys, args)

    def _ro(self, client: redis.Redis, digest: str, keys: list[bytes], args: list[Any]) -> Any:
        self.commands["EVALSHA_RO"] += 1
        result = client.evalsha_ro(digest, len(keys), *keys, *args)
        self.read_only = True
        return result
