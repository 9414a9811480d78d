-- MOVE_PAGE: one page of a list, from its head (the right end, which kombu consumes and where
-- a dead-letter list keeps its oldest entry), and the messages in it that match moved in the
-- same atomic call: a purge to the dead-letter list, a replay back to the queue, a drop to
-- nowhere; 'count' only says what would move (read-only: run as EVALSHA_RO).
--
-- KEYS[1]     the list read (a queue's priority list; for replay and drop, a dead-letter list)
-- KEYS[2]     the dead-letter list's record hash (delivery tag -> '<reason> <unix time>')
-- KEYS[3..n]  purge: the dead-letter list; replay: the queue's lists, one per priority step
-- ARGV[1]     mode: 'purge' | 'replay' | 'drop' | 'count'
-- ARGV[2]     the page's first position from the head (position p is list index -(p + 1))
-- ARGV[3]     page size
-- ARGV[4]     task name to match ('' = any)
-- ARGV[5]     stamp cutoff: match only messages stamped before it ('' = no cutoff)
-- ARGV[6]     most messages to move in this call
-- ARGV[7]     a tombstone value no message has
-- ARGV[8]     what a purge records: '<reason> <unix time>'
-- ARGV[9..n]  replay: the priority step of each of KEYS[3..n], in the same order
--
-- Returns {read, moved, unstamped (not matched: no stamp to compare with the cutoff), LLEN
-- before, then per task name moved: name, count}.
--
-- Why a racing consumer can neither lose nor duplicate a message: kombu takes a message with
-- BRPOP (or RPOP) from the right end, one whole command at a time, and Redis runs this script
-- as one command too: no consumer command runs between the LRANGE and the last write here.
-- A message popped before this call is not in the page; one still in the list when the call
-- starts is either left in place or, in the same call, taken out (LSET to the tombstone, then
-- LREM of the tombstones) and pushed to its destination, never both. A consumer's next pop
-- sees the list as the call left it. Positions of later pages shift as consumers pop, so a
-- message may be looked at in no page (left in the queue, consumed normally) but never in two
-- pages after it moved, because a moved message is no longer in the list read.

local mode = ARGV[1]
local len = redis.call('LLEN', KEYS[1])
local from, size, want = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local cutoff = ARGV[5] ~= '' and tonumber(ARGV[5]) or nil
local most = tonumber(ARGV[6])
local start, stop = len - from - size, len - from - 1
if stop < 0 then return {0, 0, 0, len} end
if start < 0 then start = 0 end
local page = redis.call('LRANGE', KEYS[1], start, stop)
local r = #page
local moved, unstamped = 0, 0
local order, by = {}, {}
-- From the head: oldest first, so a purge leaves the dead-letter list oldest at its right end.
for j = r, 1, -1 do
  if moved >= most then break end
  local raw = page[j]
  local ok, m = pcall(cjson.decode, raw)
  local h, p = {}, {}
  if ok and type(m) == 'table' then
    if type(m['headers']) == 'table' then h = m['headers'] end
    if type(m['properties']) == 'table' then p = m['properties'] end
  end
  local name = type(h['task']) == 'string' and h['task'] or ''
  local hit = ok and type(m) == 'table' and (want == '' or name == want)
  if hit and cutoff then
    local ts = type(p['timestamp']) == 'number' and p['timestamp'] or h['timestamp']
    if type(ts) ~= 'number' then
      hit = false
      unstamped = unstamped + 1
    elseif ts >= cutoff then
      hit = false
    end
  end
  if hit then
    moved = moved + 1
    if not by[name] then by[name] = 0; order[#order + 1] = name end
    by[name] = by[name] + 1
    if mode ~= 'count' then
      local tag = p['delivery_tag']
      redis.call('LSET', KEYS[1], start + j - 1, ARGV[7])
      if mode == 'purge' then
        redis.call('LPUSH', KEYS[3], raw)
        if type(tag) == 'string' then redis.call('HSET', KEYS[2], tag, ARGV[8]) end
      else
        if type(tag) == 'string' then redis.call('HDEL', KEYS[2], tag) end
        if mode == 'replay' then
          -- kombu's _get_message_priority and _q_for_pri: 0..9, the highest step not above it
          local pri = tonumber(p['priority']) or 0
          pri = math.max(0, math.min(9, math.floor(pri)))
          local target, best = KEYS[3], -1
          for i = 3, #KEYS do
            local step = tonumber(ARGV[6 + i])
            if step <= pri and step > best then target, best = KEYS[i], step end
          end
          redis.call('RPUSH', target, raw)
        end
      end
    end
  end
end
if moved > 0 and mode ~= 'count' then
  redis.call('LREM', KEYS[1], -moved, ARGV[7])
end
local out = {r, moved, unstamped, len}
for _, name in ipairs(order) do
  out[#out + 1] = name
  out[#out + 1] = by[name]
end
return out
