-- RENEW: extend the lease while it still holds our token.
--
-- KEYS[1]  the lease
-- ARGV[1]  our token
-- ARGV[2]  the new TTL (ms)
--
-- Returns 1 when renewed, 0 when the lease is not ours.

if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
