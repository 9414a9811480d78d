-- STARTED: one SCAN page of result keys, returning only the values that may be STARTED metas.
--
-- KEYS     none: the SCAN names the keys (the daemon runs this on one server, never a cluster)
-- ARGV[1]  the SCAN cursor
-- ARGV[2]  the MATCH pattern (the task result prefix, glob-escaped, then *)
-- ARGV[3]  the SCAN COUNT
-- ARGV[4]  largest value returned (bytes); a larger one is counted, never read whole
-- ARGV[5]  head bytes looked at for the word STARTED (Celery writes status first in every serializer)
--
-- Returns {next cursor, keys scanned, values too large, key1, value1, key2, value2, ...}: the
-- keys whose head holds 'STARTED', with their value. Reads only; a page of finished results
-- costs a page of GETRANGEs and an empty reply.

local page = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3], 'TYPE', 'string')
local max, head = tonumber(ARGV[4]), tonumber(ARGV[5])
local out = {page[1], #page[2], 0}
for _, k in ipairs(page[2]) do
  local first = redis.call('GETRANGE', k, 0, head - 1)
  if string.find(first, 'STARTED', 1, true) then
    if redis.call('STRLEN', k) <= max then
      out[#out + 1] = k
      out[#out + 1] = redis.call('GET', k)
    else
      out[3] = out[3] + 1
    end
  end
end
return out
