"""Server-side batch scripts, and the command tally every Redis call goes through.

``DECIDE`` reads every key's TTL, decides and acts on plain JSON task results
inside Redis, one call per batch, and hands back the keys with no TTL it is not
certain about (and groups, chords and replies with no TTL). Those take two more
calls: ``INSPECT`` reads type, TTL and value, :func:`janitor.sweeps.rules.decide` decides in Python, and ``ACT``
applies the decisions, re-checking each key inside the same atomic call so a
key Celery rewrote in between is left alone.
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


# The retention rules of janitor.sweeps.rules for the common case, evaluated where
# the values are, so they never cross the network: a JSON task result with no TTL.
# KEYS[1]: fence key, KEYS[2..]: the batch, task result keys first. ARGV: fence
# token ('' = none), '1' for a dry run, now (us since the epoch), result/failure/
# pending TTL (ms), future tolerance (us), largest value, length of the key prefix
# before the id, number of task result keys, byte budget for values in the reply.
# Returns a flat list, two items per key: 0, 0 nothing to do (has a TTL, or gone);
# 1, ms TTL set; 2, bytes deleted. A key with no TTL that is not a task result, or
# one DECIDE is not certain about, is left for janitor.sweeps.rules with what
# INSPECT would have read: 3, type (not a string); 5, size (a string too large to
# read); 6, value; or 4, 0 when the reply's byte budget is spent (INSPECT it).
# "Certain" is narrow on purpose: printable ASCII, strict JSON numbers, shallow
# nesting, date_done in the exact ISO forms Celery writes and a valid calendar
# date; anything else costs one more round trip, never a different decision.
# tests/test_decide_script.py checks it against decide().
DECIDE = r"""
local token, dry, now = ARGV[1], ARGV[2] == '1', tonumber(ARGV[3])
local rttl, fttl, pending = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local tol, maxv, idat = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]) + 1
local last_task, budget = tonumber(ARGV[10]) + 1, tonumber(ARGV[11])
if not dry and token ~= '' and redis.call('GET', KEYS[1]) ~= token then
  return redis.error_reply('FENCED lease lost before this batch')
end
local find, match, sub, floor, tonum = string.find, string.match, string.sub, math.floor, tonumber
local mdays = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local doy = floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
  return era * 146097 + yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy - 719468
end
-- Microseconds since the epoch, or nil for anything but Celery's isoformat().
local function parse(s)
  if type(s) ~= 'string' then return nil end
  local y, mo, d, h, mi, sec, rest = match(s, '^(%d%d%d%d)%-(%d%d)%-(%d%d)[T ](%d%d):(%d%d):(%d%d)(.*)$')
  if not y then return nil end
  y, mo, d, h, mi, sec = tonum(y), tonum(mo), tonum(d), tonum(h), tonum(mi), tonum(sec)
  if y < 1971 or y > 9998 or mo < 1 or mo > 12 or d < 1 or h > 23 or mi > 59 or sec > 59 then return nil end
  local leap = y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)
  if d > mdays[mo] + ((mo == 2 and leap) and 1 or 0) then return nil end
  local us, off = 0, 0
  local frac, tail = match(rest, '^%.(%d+)(.*)$')
  if frac then
    if #frac > 6 then return nil end
    us, rest = tonum(frac) * 10 ^ (6 - #frac), tail
  end
  if rest ~= '' and rest ~= 'Z' then
    local sign, oh, om = match(rest, '^([+-])(%d%d):(%d%d)$')
    if not sign or tonum(oh) > 23 or tonum(om) > 59 then return nil end
    off = (tonum(oh) * 60 + tonum(om)) * 60
    if sign == '-' then off = -off end
  end
  return (((days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60 + sec - off) * 1000000 + us
end
-- A private decoder with cjson's strict numbers (+1, 0x1, 01, inf, nan refused) and
-- a depth Python's json always reaches; the shared cjson's settings stay as they are.
local json = cjson.new and cjson.new()
if json then
  json.decode_invalid_numbers(false)
  json.decode_max_depth(100)
end
-- What both decoders read alike: printable ASCII only (Python's json sniffs the
-- encoding of bytes and refuses raw control characters in strings) and no number
-- strtod takes but JSON does not: -.5, and 1. (a dot before , ] } space e E).
local dots = {'-.', '.,', '.]', '.}', '. ', '.e', '.E'}
local function certain(v)
  if not json or sub(v, 1, 1) ~= '{' or find(v, '[^\32-\126]') then return false end
  for _, dot in ipairs(dots) do
    if find(v, dot, 1, true) then return false end
  end
  return true
end
-- The retention rule for a certain task result: 1, ms or 2, bytes; nil if unsure.
local function rule(k, v)
  local ok, m = pcall(json.decode, v)
  if not ok or type(m) ~= 'table' then return nil end
  local st, tid = m.status, m.task_id
  if type(st) ~= 'string' or #st > 64 or not find(st, '^[A-Za-z][A-Za-z0-9_%-]*$') or m.result == nil
      or not (tid == nil or tid == cjson.null or tid == sub(k, idat)) then
    return nil
  end
  if st ~= 'SUCCESS' and st ~= 'FAILURE' and st ~= 'REVOKED' then return 1, pending end
  local done = parse(m.date_done)
  if not done or now - done < -tol then return nil end
  local age = now - done
  if age < 0 then age = 0 end
  local left = (st == 'FAILURE' and fttl or rttl) * 1000 - age
  left = (left - left % 1000) / 1000
  if left <= 0 then return 2, #v end
  return 1, left
end
local out = {}
for i = 2, #KEYS do
  local k = KEYS[i]
  local code, x = 0, 0
  if redis.call('PTTL', k) == -1 then
    local v = redis.pcall('GETRANGE', k, 0, maxv)
    local t = type(v) == 'string' and 'string' or redis.call('TYPE', k)['ok']
    code = nil
    if t == 'string' and i <= last_task and #v <= maxv and certain(v) then code, x = rule(k, v) end
    if code then
      if dry then
      elseif code == 2 then
        redis.call('UNLINK', k)
      else
        redis.call('PEXPIRE', k, x)
      end
    elseif t ~= 'string' then
      code, x = 3, t
    elseif #v > maxv then
      code, x = 5, redis.call('STRLEN', k)
    elseif #v <= budget or i == 2 then
      code, x, budget = 6, v, budget - #v
    else
      code = 4
    end
  end
  out[2 * i - 3], out[2 * i - 2] = code, x
end
return out
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
        digest = sha1(source.encode())
        try:
            return self._ro(client, digest, keys, args)
        except redis.exceptions.NoScriptError:
            self.commands["SCRIPT LOAD"] += 1
            client.script_load(source)
            return self._ro(client, digest, keys, args)
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
