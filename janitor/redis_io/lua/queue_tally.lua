-- QUEUE_TALLY: one page of a queue's list, tallied by task name on the server, so only names,
-- counts and stamps cross the network (cjson reads the headers here; bodies stay in Redis).
--
-- KEYS[1]  one priority list of a queue
-- ARGV[1]  the page's first position from the head (0 = the next message consumed: kombu pops
--          the right end, so position p is list index -(p + 1))
-- ARGV[2]  page size
--
-- Returns {LLEN, read, then per task name: name, count, first position, last position,
-- oldest stamp, newest stamp}. The name is headers.task ('' when absent: protocol 1 or not
-- kombu's JSON); a stamp is properties.timestamp or headers.timestamp as a string ('' when
-- no message of that name carries one). Read-only: run as EVALSHA_RO.

local len = redis.call('LLEN', KEYS[1])
local from, size = tonumber(ARGV[1]), tonumber(ARGV[2])
local start, stop = len - from - size, len - from - 1
if stop < 0 then return {len, 0} end
if start < 0 then start = 0 end
local page = redis.call('LRANGE', KEYS[1], start, stop)
local r = #page
local order, by = {}, {}
for j = 1, r do
  local name, ts = '', nil
  local ok, m = pcall(cjson.decode, page[j])
  if ok and type(m) == 'table' then
    local h, p = m['headers'], m['properties']
    if type(h) == 'table' and type(h['task']) == 'string' then name = h['task'] end
    if type(p) == 'table' and type(p['timestamp']) == 'number' then ts = p['timestamp']
    elseif type(h) == 'table' and type(h['timestamp']) == 'number' then ts = h['timestamp'] end
  end
  local pos = from + r - j
  local t = by[name]
  if not t then
    t = {n = 0, first = pos, last = pos}
    by[name] = t
    order[#order + 1] = name
  end
  t.n = t.n + 1
  if pos < t.first then t.first = pos end
  if pos > t.last then t.last = pos end
  if ts then
    if not t.lo or ts < t.lo then t.lo = ts end
    if not t.hi or ts > t.hi then t.hi = ts end
  end
end
local out = {len, r}
for _, name in ipairs(order) do
  local t = by[name]
  local lo, hi = t.lo and tostring(t.lo) or '', t.hi and tostring(t.hi) or ''
  for _, v in ipairs({name, t.n, t.first, t.last, lo, hi}) do out[#out + 1] = v end
end
return out
