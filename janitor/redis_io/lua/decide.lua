-- DECIDE: the retention rules of janitor.operations.rules for the common case, evaluated where
-- the values are, so they never cross the network: a JSON task result or saved group with no TTL.
-- Two ways to get its keys: SCAN them itself (ARGV[1] a cursor: one call per page, no key
-- crosses the network twice), or KEYS[2..] (ARGV[1] ''; Redis Cluster, where a call's keys
-- must share a slot, and what a page left over).
--
-- KEYS[1]     the fence: the lease key
-- KEYS[2..n]  the keys to judge, when ARGV[1] is ''
-- ARGV[1]     SCAN cursor, or '' to judge KEYS[2..]
-- ARGV[2]     SCAN COUNT
-- ARGV[3]     SCAN MATCH
-- ARGV[4]     most keys to look at (the rest are handed back, code 8)
-- ARGV[5]     the token the lease key must hold ('' = none; a dry run does not check it)
-- ARGV[6]     '1' dry run: write nothing, and list what it would do
-- ARGV[7]     now, microseconds since the epoch
-- ARGV[8]     TTL of a finished result (ms)
-- ARGV[9]     TTL of a FAILURE (ms)
-- ARGV[10]    TTL of a result not finished (pending, ms)
-- ARGV[11]    future tolerance (us): a date_done further ahead goes to Python
-- ARGV[12]    largest value to read (bytes)
-- ARGV[13]    task key prefix
-- ARGV[14]    group key prefix
-- ARGV[15]    reply byte budget
-- ARGV[16]    '1' when a naive date_done is UTC (JANITOR_NAIVE_TIMEZONE; otherwise naive
--             dates go to Python)
-- ARGV[17]    bytes of a too-large value's head and tail to return
-- ARGV[18]    TTL of a saved group (ms; 0: groups go to Python)
-- ARGV[19]    a task result at least this long (bytes; 0: never) is judged from its first 96
--             and last ARGV[19] bytes first, as payload.edge_first_meta judges it: its
--             traceback is never read
-- ARGV[20]    microseconds a call may run (0: no limit): past it, the keys left are handed
--             back (code 8). The caller sizes calls to run well under this on average; the
--             check (every 8 keys) bounds the pages that cost far more than the average
--
-- Returns {next cursor | '', keys scanned, Celery keys it judged, task result TTLs set, keys
-- deleted, bytes deleted, group TTLs set}, then key, code, detail for each key it hands back
-- (janitor.scripts.Code):
--   7, pttl    a key under neither prefix, or a Celery name it is unsure of that has a TTL
--              (janitor.keyspace.Layout judges the name);
-- a key with no TTL under a prefix that it is not certain about, with what INSPECT would
-- have read:
--   3, type    not a string
--   5, {size, head, tail}   a string too large to read whole
--   6, value   the value
--   4, 0       the reply's byte budget is spent (INSPECT it)
--   8, 0       over the limit (ARGV[4])
-- A dry run also lists what it would do per key (tests/integration/test_decide_script.py):
--   1, ms      set this TTL
--   2, bytes   delete a value of this length
-- Fails with 'FENCED ...', writing nothing, when the lease key does not hold the token.
--
-- "Certain" is narrow on purpose: printable ASCII, strict JSON numbers, shallow nesting,
-- date_done in the exact ISO forms Celery writes and a valid calendar date; anything else
-- costs one more round trip, never a different decision.

local cursor, token, dry = ARGV[1], ARGV[5], ARGV[6] == '1'
local now, rttl, fttl, pending = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local tol, maxv, tp, gp, budget = tonumber(ARGV[11]), tonumber(ARGV[12]), ARGV[13], ARGV[14], tonumber(ARGV[15])
local tn, gn = #tp, #gp
local naive_utc, edge, gttl = ARGV[16] == '1', tonumber(ARGV[17]), tonumber(ARGV[18]) or 0
local edge_first = tonumber(ARGV[19]) or 0
local from_end = tostring(-edge_first)  -- GETRANGE's arguments as strings: Lua would format numbers per call
local deadline = tonumber(ARGV[20]) or 0
if not dry and token ~= '' and redis.call('GET', KEYS[1]) ~= token then
  return redis.error_reply('FENCED lease lost before this batch')
end
local byte, find, match, sub, floor, tonum = string.byte, string.find, string.match, string.sub, math.floor, tonumber
local maxs = ARGV[12]
local mdays = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}
-- Days since the epoch of a valid year, month and day, else false; cached, as most results
-- of a page were written on a few days.
local civil = {}
local function days(y, mo, d)
  local key = (y * 100 + mo) * 100 + d
  local n = civil[key]
  if n ~= nil then return n end
  local leap = y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)
  n = false
  if y >= 1971 and y <= 9998 and mo >= 1 and mo <= 12 and d >= 1
      and d <= mdays[mo] + ((mo == 2 and leap) and 1 or 0) then
    local era = floor((mo <= 2 and y - 1 or y) / 400)
    local yoe = (mo <= 2 and y - 1 or y) - era * 400
    local doy = floor((153 * ((mo + 9) % 12) + 2) / 5) + d - 1
    n = era * 146097 + yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy - 719468
  end
  civil[key] = n
  return n
end
-- Microseconds since the epoch, or nil for anything but Celery's isoformat().
local function parse(s)
  if type(s) ~= 'string' then return nil end
  local date, h, mi, sec, frac, rest = match(s, '^(%d%d%d%d%-%d%d%-%d%d)[T ](%d%d):(%d%d):(%d%d)%.?(%d*)(.*)$')
  if not date then return nil end
  local dn = days(tonum(sub(date, 1, 4)), tonum(sub(date, 6, 7)), tonum(sub(date, 9, 10)))
  if not dn then return nil end
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
  return (((dn * 24 + h) * 60 + mi) * 60 + sec - off) * 1000000 + us
end
-- What parse() returns, read from the bytes without captures for the form nearly every
-- result has: 'YYYY-MM-DDTHH:MM:SS.ffffff' and '+00:00' (Celery 5.4+ in UTC), or nothing
-- (a naive UTC date, Celery <= 5.3). Anything else goes through parse().
local stamp = '^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%d%d%d%d'
local function when(s)
  if type(s) ~= 'string' then return nil end
  local n = #s
  if not ((n == 32 and find(s, '+00:00', 27, true)) or (n == 26 and naive_utc)) or not find(s, stamp) then
    return parse(s)
  end
  local y1, y2, y3, y4, _, m1, m2, _, d1, d2, _, h1, h2, _, i1, i2, _, s1, s2 = byte(s, 1, 19)
  local f1, f2, f3, f4, f5, f6 = byte(s, 21, 26)
  local dn = days(y1 * 1000 + y2 * 100 + y3 * 10 + y4 - 53328, m1 * 10 + m2 - 528, d1 * 10 + d2 - 528)
  local h, mi, sec = h1 * 10 + h2 - 528, i1 * 10 + i2 - 528, s1 * 10 + s2 - 528
  if not dn or h > 23 or mi > 59 or sec > 59 then return nil end
  local us = ((((f1 * 10 + f2) * 10 + f3) * 10 + f4) * 10 + f5) * 10 + f6 - 5333328
  return (((dn * 24 + h) * 60 + mi) * 60 + sec) * 1000000 + us
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
--
-- Such a dot inside a string is harmless, and common: 'celery@ip-10-0-1-23.ec2.internal',
-- 'report-2026.csv'. It is in a string when the run of number bytes (digits + - . e E)
-- before it starts after a byte no number can follow, e.g. a letter or '@': in JSON that
-- cjson reads whole, a dot outside strings is part of a number token, and a number token
-- starts at the text's start, after whitespace or after one of [ , : (or {, which cjson
-- refuses anyway). The walk back is bounded: a longer run counts as a number.
local numeric = {[43] = true, [45] = true, [46] = true, [69] = true, [101] = true}
for c = 48, 57 do numeric[c] = true end
local opens = {[9] = true, [10] = true, [13] = true, [32] = true, [44] = true, [58] = true, [91] = true, [123] = true}
local function stringy(v, at)
  local from = at - 1
  local stop = from - 64
  while from >= 1 and numeric[byte(v, from)] do
    from = from - 1
    if from < stop then return false end
  end
  return from >= 1 and not opens[byte(v, from)]
end
local function certain(v)
  if not json or byte(v) ~= 123 or not find(v, '^[\32-\126]*$') then return false end
  local at = find(v, '.', 1, true)
  while at do
    local before, _, after = byte(v, at - 1, at + 1)
    if (before == 45 or (before >= 48 and before <= 57 and not (after and after >= 48 and after <= 57)))
        and not stringy(v, at) then
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
-- An id the name checks accept (no glob character, no doubled prefix, 1-255 bytes) whose bytes
-- JSON writes as they are: printable ASCII but " and \.
local function spelled(id)
  if #id == 0 or #id > 255 or find(id, 'celery-task', 1, true) then return false end
  return find(id, '^[%w%-]*$') or (find(id, '^[\32-\126]*$') and not find(id, '["\\%*%?%[%]]'))
end
-- Status and date_done to 1, ms or 2, size (false: read it when deleting); nil if unsure.
local function verdict(st, date_done, size)
  if not ready[st] then
    if type(st) ~= 'string' or #st > 64 or not find(st, '^[A-Za-z][A-Za-z0-9_%-]*$') then return nil end
    return 1, pending
  end
  local done = when(date_done)
  if not done or now - done < -tol then return nil end
  local age = now - done
  if age < 0 then age = 0 end
  local left = (st == 'FAILURE' and fttl or rttl) * 1000 - age
  left = (left - left % 1000) / 1000
  if left <= 0 then return 2, size end
  return 1, left
end
local function rule(k, at, v)
  local ok, m = pcall(json.decode, v)
  if not ok or type(m) ~= 'table' then return nil end
  local st, tid, id = m.status, m.task_id, sub(k, at)
  if m.result == nil or not (tid == nil or tid == cjson.null or tid == id) then return nil end
  -- The value names the key's id. With no escape in it, the id is bytes of a certain
  -- (printable ASCII) value, so only the other name checks are left.
  if not (tid == id and not find(v, '\\', 1, true) and spelled(id)) and not plain(k, at) then
    return nil
  end
  return verdict(st, m.date_done, #v)
end
-- A saved GroupResult under a uuid (no chord suffix, a name Layout.classify calls a group):
-- rules.decide gives it the group TTL when json.loads reads a mapping whose result is a
-- list. cjson reads JSON arrays and objects alike as tables, but an object's keys are
-- strings, so a table with a first element was a non-empty array (an empty one goes to Python).
local uuid = '^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$'
local function group_rule(k, at, v)
  if gttl <= 0 or not find(k, uuid, at) then return nil end
  local ok, m = pcall(json.decode, v)
  if not ok or type(m) ~= 'table' or type(m.result) ~= 'table' or m.result[1] == nil then return nil end
  return 1, gttl
end
-- A long task result judged from its edges, as payload.edge_result_meta reads them: the head
-- Celery writes first, and the members after the last ', "date_done": ' of the tail, which
-- must be one object that ends the value with this key's task_id. That comma is the one
-- Python's backward walk takes: the text after it is one object closing at the value's end,
-- so the comma is outside strings at depth 1, and no later comma is followed by the same
-- words. Returns code, detail; or nil, true when the tail holds no such comma (Python's edge
-- rule cannot read this tail either); or nil when unsure.
local heading = '^{"status": "([A-Za-z][A-Za-z0-9_%-]*)", "result": '
local members = ', "date_done": '
local function edges_rule(id, st, tail)
  local x = find(tail, members, 1, true)
  if not x then return nil, true end
  local later = find(tail, members, x + 1, true)
  while later do
    x, later = later, find(tail, members, later + 1, true)
  end
  local ending = '"task_id": "' .. id .. '"}'
  if x == 1 or sub(tail, -#ending) ~= ending then return nil end
  local rest = '{' .. sub(tail, x + 1)
  if not certain(rest) then return nil end
  local ok, m = pcall(json.decode, rest)
  if not ok or type(m) ~= 'table' then return nil end
  return verdict(st, m.date_done, false)
end
-- A task result of edge_first bytes or more, given its last edge_first bytes. Returns code,
-- detail; or nil, nil, whether the value may be parsed whole (Python's edge rule cannot
-- decide it: not Celery's head, or no date_done member in those bytes).
local function long_task(k, at, tail)
  local id = sub(k, at)
  local st = spelled(id) and match(redis.call('GETRANGE', k, '0', '95'), heading)
  if not st or #st > 64 then return nil, nil, true end
  local code, x = edges_rule(id, st, tail)
  if code == 2 then x = redis.call('STRLEN', k) end
  return code, x, x == true
end
-- What INSPECT returns for a string too large to read whole: its length, head and tail.
local function too_large(k, n, head)
  return {n, head, redis.call('GETRANGE', k, math.max(n - edge, 0), n - 1)}
end
local keys, first, after = KEYS, 2, ''
if cursor ~= '' then
  local page = redis.call('SCAN', cursor, 'MATCH', ARGV[3], 'COUNT', ARGV[2])
  keys, first, after = page[2], 1, page[1]
end
local limit = first + tonum(ARGV[4]) - 1
local celery, set, deleted, freed, gset = 0, 0, 0, 0, 0
local out = {after, #keys - first + 1, 0, 0, 0, 0, 0}
local head = #out
local function hand(k, code, x)
  local n = #out
  out[n + 1], out[n + 2], out[n + 3] = k, code, x
end
-- The deadline's clock: the server's CPU time where scripts have os.clock (Valkey, Redis 7.2+),
-- else TIME (Redis 7.0; Valkey answers TIME with the time the script started).
local cpu = rawget(_G, 'os')
cpu = cpu and cpu.clock
local function clock()
  if cpu then return cpu() * 1000000 end
  local t = redis.call('TIME')
  return t[1] * 1000000 + t[2]
end
local started = deadline > 0 and clock()
for i = first, #keys do
  if started and i % 8 == 0 and i < limit and clock() - started > deadline then limit = i end
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
      -- A task result is read from its end: a short one is then read whole, a long one
      -- (edge_first bytes or more) is judged from its edges, or read again for the rest.
      local long = task and edge_first > 0
      local v = redis.pcall('GETRANGE', k, long and from_end or '0', long and '-1' or maxs)
      local code, x, parsed = nil, nil, true
      if type(v) == 'string' and long and #v == edge_first then
        code, x, parsed = long_task(k, at, v)
        if not code then
          local n = redis.call('STRLEN', k)
          if n > maxv then
            code, x = 5, too_large(k, n, redis.call('GETRANGE', k, '0', edge - 1))
          else
            v = redis.call('GETRANGE', k, '0', maxs)
          end
        end
      end
      if not code then  -- not decided from its edges, nor too large to read
        if type(v) ~= 'string' then
          code, x = 3, redis.call('TYPE', k)['ok']
        elseif #v > maxv then
          code, x = 5, too_large(k, redis.call('STRLEN', k), sub(v, 1, edge))
        elseif parsed and certain(v) then
          if task then code, x = rule(k, at, v) else code, x = group_rule(k, at, v) end
        end
      end
      if code == 1 or code == 2 then
        if dry then
          hand(k, code, x)
        elseif code == 2 then
          redis.call('UNLINK', k)
        else
          redis.call('PEXPIRE', k, x)
        end
        if code == 2 then
          deleted, freed = deleted + 1, freed + x
        elseif task then
          set = set + 1
        else
          gset = gset + 1
        end
      elseif code == 5 then
        if #x[2] + #x[3] <= budget or #out == head then
          hand(k, code, x)
          budget = budget - #x[2] - #x[3]
        else
          hand(k, 4, 0)
        end
      elseif code then
        hand(k, code, x)
      elseif #v <= budget or #out == head then
        hand(k, 6, v)
        budget = budget - #v
      else
        hand(k, 4, 0)
      end
    end
  end
end
out[3], out[4], out[5], out[6], out[7] = celery, set, deleted, freed, gset
return out
