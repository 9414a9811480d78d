-- DEAD_TRIM: drop a dead-letter list's oldest entries (its right end) while the list is longer
-- than its cap or the entry was recorded before the age cutoff; at most a page per call.
--
-- KEYS[1]  a dead-letter list (janitor.dead.<queue>)
-- KEYS[2]  its record hash (delivery tag -> '<reason> <unix time>')
-- ARGV[1]  most entries kept (0 = no cap)
-- ARGV[2]  age cutoff: drop entries recorded before this unix time ('' = no cutoff)
-- ARGV[3]  what to record for an oldest entry with no record: '<reason> <unix time>'
-- ARGV[4]  most entries dropped in this call
--
-- Returns {dropped, 1 if it stopped at the page limit else 0}. An entry with no record (a
-- restore's dead letter) is given one when it reaches the head, so its age is counted from
-- then: a lower bound, never a reason to drop it early.

local cap, cutoff, page = tonumber(ARGV[1]), ARGV[2] ~= '' and tonumber(ARGV[2]) or nil, tonumber(ARGV[4])
local dropped = 0
while dropped < page do
  local len = redis.call('LLEN', KEYS[1])
  if len == 0 then return {dropped, 0} end
  local raw = redis.call('LINDEX', KEYS[1], -1)
  local ok, m = pcall(cjson.decode, raw)
  local tag = ''
  if ok and type(m) == 'table' and type(m['properties']) == 'table'
      and type(m['properties']['delivery_tag']) == 'string' then
    tag = m['properties']['delivery_tag']
  end
  local rec = tag ~= '' and redis.call('HGET', KEYS[2], tag) or false
  local at = rec and tonumber(string.match(rec, ' ([%d.]+)$')) or nil
  local old = cutoff and at and at < cutoff
  if not ((cap > 0 and len > cap) or old) then
    if tag ~= '' and not rec then redis.call('HSET', KEYS[2], tag, ARGV[3]) end
    return {dropped, 0}
  end
  redis.call('RPOP', KEYS[1])
  if tag ~= '' then redis.call('HDEL', KEYS[2], tag) end
  dropped = dropped + 1
end
return {dropped, 1}
