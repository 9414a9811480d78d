-- ACQUIRE: take the lease when it is free. INCR the epoch (the fencing counter) and SET the
-- lease to '<epoch>:<random>' with a TTL, atomically (SET NX PX plus a fencing counter), so
-- followers polling the lease never bump the epoch.
--
-- KEYS[1]  the lease
-- KEYS[2]  the epoch counter
-- ARGV[1]  the token's random part
-- ARGV[2]  the lease's TTL (ms)
--
-- Returns the new token, or, while another holds the lease, its PTTL (an integer).

if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('PTTL', KEYS[1]) end
-- A no-op write first: under maxmemory/noeviction Redis refuses a script's growing
-- write (INCR, SET) only before its first write, and a janitor must still take the
-- lease of a Redis that is out of memory, to delete what filled it.
redis.call('DEL', KEYS[1])
local token = redis.call('INCR', KEYS[2]) .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return token
