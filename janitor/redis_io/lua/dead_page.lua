-- DEAD_PAGE: one page of a dead-letter list from its head (oldest first), each entry reduced to
-- what `dead list` shows, so message bodies stay in Redis. Read-only: run as EVALSHA_RO.
--
-- KEYS[1]  a dead-letter list (janitor.dead.<queue>)
-- KEYS[2]  its record hash (delivery tag -> '<reason> <unix time>')
-- ARGV[1]  the page's first position from the head (position p is list index -(p + 1))
-- ARGV[2]  page size
-- ARGV[3]  task name to match ('' = any)
--
-- Returns {read, then per matching entry: task name, task id, delivery tag, record or '',
-- publisher stamp or ''}.

local len = redis.call('LLEN', KEYS[1])
local from, size, want = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local start, stop = len - from - size, len - from - 1
if stop < 0 then return {0} end
if start < 0 then start = 0 end
local page = redis.call('LRANGE', KEYS[1], start, stop)
local out = {#page}
for j = #page, 1, -1 do
  local ok, m = pcall(cjson.decode, page[j])
  local h, p = {}, {}
  if ok and type(m) == 'table' then
    if type(m['headers']) == 'table' then h = m['headers'] end
    if type(m['properties']) == 'table' then p = m['properties'] end
  end
  local name = type(h['task']) == 'string' and h['task'] or ''
  if want == '' or name == want then
    local tag = type(p['delivery_tag']) == 'string' and p['delivery_tag'] or ''
    local rec = tag ~= '' and redis.call('HGET', KEYS[2], tag) or false
    local ts = type(p['timestamp']) == 'number' and p['timestamp'] or h['timestamp']
    out[#out + 1] = name
    out[#out + 1] = type(h['id']) == 'string' and h['id'] or ''
    out[#out + 1] = tag
    out[#out + 1] = rec or ''
    out[#out + 1] = type(ts) == 'number' and tostring(ts) or ''
  end
end
return out
