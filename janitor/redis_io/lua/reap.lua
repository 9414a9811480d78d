-- REAP: replace an abandoned STARTED result with its FAILURE, compare-and-set on the exact value
-- read, and publish the new value on the key's channel as Celery's Redis backend does
-- (SET + PUBLISH <key> <value>), so a client waiting in AsyncResult.get() wakes up.
--
-- KEYS[1]  the fence: the lease key
-- KEYS[2]  the result key
-- ARGV[1]  the token the lease key must hold ('' = no fence)
-- ARGV[2]  length of the value read
-- ARGV[3]  SHA-1 of the value read
-- ARGV[4]  the FAILURE value to write
-- ARGV[5]  its TTL in milliseconds
--
-- Returns 1 when written and published, 0 when the value is no longer the one read (the task
-- moved on, or the worker came back): left alone. Fails with 'FENCED ...', writing nothing,
-- when the lease key does not hold the token.

if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED lease lost before this batch')
end
local n = redis.pcall('STRLEN', KEYS[2])
if type(n) ~= 'number' or n ~= tonumber(ARGV[2]) or n == 0 then
  return 0
end
if redis.sha1hex(redis.call('GET', KEYS[2])) ~= ARGV[3] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
redis.call('PUBLISH', KEYS[2], ARGV[4])
return 1
