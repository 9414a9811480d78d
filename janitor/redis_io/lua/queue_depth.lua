-- QUEUE_DEPTH: how many messages wait in each priority sub-list of a queue, and how old the
-- next one is.
--
-- KEYS[1..n]  a queue's priority sub-lists
-- ARGV        none
--
-- Returns per key {LLEN, age stamp or false, head task id or false}: the stamp is
-- properties.timestamp or headers.timestamp of the next message to be consumed (kombu pops
-- from the right), as a string. Stock Celery sends none; publishers may add one. The id is
-- that message's headers.id (how long one id stays at the head is the queue's wait).

local out = {}
for i = 1, #KEYS do
  local n = redis.call('LLEN', KEYS[i])
  local ts, id = false, false
  if n > 0 then
    local ok, m = pcall(cjson.decode, redis.call('LINDEX', KEYS[i], -1))
    if ok and type(m) == 'table' then
      local p, h = m['properties'], m['headers']
      if type(p) == 'table' and type(p['timestamp']) == 'number' then ts = tostring(p['timestamp'])
      elseif type(h) == 'table' and type(h['timestamp']) == 'number' then ts = tostring(h['timestamp']) end
      if type(h) == 'table' and type(h['id']) == 'string' then id = h['id'] end
    end
  end
  out[i] = {n, ts, id}
end
return out
