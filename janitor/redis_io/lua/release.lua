-- RELEASE: compare-and-delete, as redis-py's Lock.release: delete a lock only while it holds
-- our token. Releases the janitor's lease, and kombu's unacked_mutex after a restore.
--
-- KEYS[1]  the lock
-- ARGV[1]  our token
--
-- Returns 1 when deleted, 0 when the lock is not ours (taken over, or gone).

if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
