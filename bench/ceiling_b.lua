-- CEILING_B: bench/sweep_bench.py's ceiling B, the least a server-side sweep can cost. One
-- SCAN page per call; per key the same rules as janitor.operations.rules for a JSON task result
-- or saved group with no TTL, and none of the janitor's certainty checks.
--
-- KEYS     none
-- ARGV[1]  SCAN cursor
-- ARGV[2]  SCAN COUNT
-- ARGV[3]  now (ms since the epoch)
-- ARGV[4]  TTL of a finished result (ms)
-- ARGV[5]  TTL of a FAILURE (ms)
-- ARGV[6]  TTL of a result not finished (ms)
-- ARGV[7]  future tolerance (ms)
-- ARGV[8]  largest value to read (bytes)
-- ARGV[9]  TTL of a saved group (ms)
--
-- Returns {next cursor, keys scanned, deleted, TTLs set}.

local page = redis.call('SCAN', ARGV[1], 'MATCH', '*celery*', 'COUNT', ARGV[2])
local now, rttl, fttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local pending, tol, maxv, gttl = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local prefix, gprefix = 'celery-task-meta-', 'celery-taskset-meta-'
local plen, glen = #prefix, #gprefix
local match, sub, floor, tonum = string.match, string.sub, math.floor, tonumber
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local doy = floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
  return era * 146097 + yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy - 719468
end
local day_cache = {}
local function parse(s)
  if type(s) ~= 'string' then return nil end
  local date, h, mi, sec, rest = match(s, '^(%d%d%d%d%-%d%d%-%d%d)[T ](%d%d):(%d%d):(%d%d)(.*)$')
  if not date then return nil end
  local days = day_cache[date]
  if not days then
    days = days_from_civil(tonum(sub(date, 1, 4)), tonum(sub(date, 6, 7)), tonum(sub(date, 9, 10)))
    day_cache[date] = days
  end
  local ms, off = 0, 0
  if rest ~= '' then
    if sub(rest, 1, 1) == '.' then
      local frac, tail = match(rest, '^%.(%d+)(.*)$')
      if not frac then return nil end
      ms, rest = tonum(frac) * 10 ^ (3 - #frac), tail
    end
    if rest ~= '' and rest ~= 'Z' and rest ~= '+00:00' then
      local sign, oh, om = match(rest, '^([+-])(%d%d):?(%d%d)$')
      if not sign then return nil end
      off = (tonum(oh) * 60 + tonum(om)) * 60000
      if sign == '-' then off = -off end
    end
  end
  return ((days * 24 + tonum(h)) * 60 + tonum(mi)) * 60000 + tonum(sec) * 1000 + ms - off
end
local deleted, expired = 0, 0
for _, k in ipairs(page[2]) do
  if sub(k, 1, plen) == prefix and redis.call('PTTL', k) == -1 then
    local v = redis.pcall('GET', k)
    if type(v) == 'string' and #v <= maxv then
      local ok, m = pcall(cjson.decode, v)
      if ok and type(m) == 'table' and type(m.status) == 'string'
          and (m.task_id == nil or m.task_id == sub(k, plen + 1)) then
        local st = m.status
        if st == 'SUCCESS' or st == 'FAILURE' or st == 'REVOKED' then
          local done = parse(m.date_done)
          if done and now - done >= -tol then
            local age = now - done
            if age < 0 then age = 0 end
            local rem = floor((st == 'FAILURE' and fttl or rttl) - age)
            if rem <= 0 then
              redis.call('UNLINK', k)
              deleted = deleted + 1
            else
              redis.call('PEXPIRE', k, rem)
              expired = expired + 1
            end
          end
        else
          redis.call('PEXPIRE', k, pending)
          expired = expired + 1
        end
      end
    end
  elseif sub(k, 1, glen) == gprefix and redis.call('PTTL', k) == -1 then
    local v = redis.pcall('GET', k)
    if type(v) == 'string' and #v <= maxv then
      local ok, m = pcall(cjson.decode, v)
      if ok and type(m) == 'table' and type(m.result) == 'table' then
        redis.call('PEXPIRE', k, gttl)
        expired = expired + 1
      end
    end
  end
end
return {page[1], #page[2], deleted, expired}
