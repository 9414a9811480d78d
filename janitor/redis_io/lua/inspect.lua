-- INSPECT: the type, TTL and value of each key of a batch, in a reply of bounded size.
--
-- KEYS[1..n]  the batch
-- ARGV[1]     largest value to return whole (bytes)
-- ARGV[2]     byte budget for the reply
-- ARGV[3]     '1' to read keys that already have a TTL (cap mode, census)
-- ARGV[4]     bytes of a larger value's head and tail to return
--
-- Returns one row {type, pttl, value} per key, stopping early (a prefix of KEYS) once the
-- budget is spent, so no reply is unbounded. type: 'none' (the key is gone), 'string', the
-- key's type, or '' for a key with a TTL that is only PTTL'd: the sweep leaves it alone,
-- so one call is all it costs. value: the string, {size, head, tail} for a string over
-- ARGV[1] bytes, or false (not a string, or not read).
--
-- GETRANGE under pcall reads a string and learns its type in one call; it returns at most
-- max+1 bytes, so a huge value is measured (STRLEN) and only its edges shipped (GETRANGE;
-- janitor.payload.edge_result_meta judges them), never read whole.

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
