-- REDBEAT_DUE: the RedBeat entries that are due, with what their definition says of their interval.
--
-- KEYS[1]  RedBeat's schedule: a zset of entry keys scored by next run time (unix seconds)
-- ARGV[1]  now (unix seconds)
-- ARGV[2]  most entries returned (the oldest due first)
-- ARGV[3]  largest definition read (bytes); a larger one is treated as of unknown interval
--
-- Returns {entries in the schedule, member1, score1, every1, enabled1, ...}: for each due entry
-- (0 <= score <= now; RedBeat ignores negative scores), its interval in seconds ('-1' unknown:
-- crontab, rrule, solar, or unreadable) and 1/0 for its 'enabled' flag. Reads only.

local out = {redis.call('ZCARD', KEYS[1])}
local due = redis.call('ZRANGE', KEYS[1], 0, ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]), 'WITHSCORES')
local max = tonumber(ARGV[3])
for i = 1, #due, 2 do
  local key = due[i]
  local every, enabled = '-1', 1
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'hash' and redis.call('HSTRLEN', key, 'definition') <= max then
    local ok, d = pcall(cjson.decode, redis.call('HGET', key, 'definition') or '')
    if ok and type(d) == 'table' then
      local s = d['schedule']
      if type(s) == 'table' and s['__type__'] == 'interval' and type(s['every']) == 'number' then
        every = tostring(s['every'])
      end
      if d['enabled'] == false then enabled = 0 end
    end
  end
  out[#out + 1] = key
  out[#out + 1] = due[i + 1]
  out[#out + 1] = every
  out[#out + 1] = enabled
end
return out
