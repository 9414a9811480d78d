-- RESULT_HEADS: the values of small results; a large one is never read.
--
-- KEYS[1..n]  result keys
-- ARGV[1]     most bytes to return
--
-- Returns per key: its value when it is a string of at most ARGV[1] bytes, else false.
-- A STARTED meta is a few hundred bytes; a finished task's result may be huge, and is never
-- read here.

local out = {}
for i = 1, #KEYS do
  local v = false
  if redis.call('TYPE', KEYS[i])['ok'] == 'string' and redis.call('STRLEN', KEYS[i]) <= tonumber(ARGV[1]) then
    v = redis.call('GET', KEYS[i])
  end
  out[i] = v
end
return out
