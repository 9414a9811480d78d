-- RESTORE: move one unacked message back to its queue (or to a dead-letter list), under
-- kombu's unacked_mutex, the way kombu's restore_by_tag does.
--
-- KEYS[1]     kombu's unacked hash
-- KEYS[2]     kombu's unacked_index
-- KEYS[3]     kombu's unacked_mutex (ours while we restore)
-- KEYS[4]     the message's restore counter
-- KEYS[5]     the dead-letter list
-- KEYS[6..n]  the lists the message goes back to
-- ARGV[1]     delivery tag
-- ARGV[2]     our unacked_mutex token
-- ARGV[3]     sha1 of the hash entry as read
-- ARGV[4]     the new payload (the message flagged redelivered)
-- ARGV[5]     the delivery score as read
-- ARGV[6]     most restores before the message is dead-lettered
-- ARGV[7]     the counter's TTL (seconds)
-- ARGV[8]     '1' to dead-letter regardless of the counter
--
-- Returns 'restored:<n>' or 'dead:<n>' (n: restores counted so far, this one included),
-- 'gone' (no hash entry) or 'changed' (re-delivered since it was read). Fails with
-- 'FENCED ...', writing nothing, when the mutex does not hold our token.
--
-- Atomic, so whoever removes the hash entry owns the restore: kombu's restore_by_tag
-- WATCHes the hash, so its EXEC aborts if we went first, and if it went first we find
-- nothing. The sha1 and score guards refuse an entry that was re-delivered (same tag, new
-- copy) since we read it.

if redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return redis.error_reply('FENCED unacked_mutex lost')
end
local tag = ARGV[1]
local raw = redis.call('HGET', KEYS[1], tag)
if not raw then
  redis.call('ZREM', KEYS[2], tag)
  return 'gone'
end
local score = redis.call('ZSCORE', KEYS[2], tag)
if redis.sha1hex(raw) ~= ARGV[3] or not score or math.abs(tonumber(score) - tonumber(ARGV[5])) > 0.001 then
  return 'changed'
end
redis.call('HDEL', KEYS[1], tag)
redis.call('ZREM', KEYS[2], tag)
local n = redis.call('INCR', KEYS[4])
redis.call('EXPIRE', KEYS[4], ARGV[7])
if ARGV[8] == '1' or n > tonumber(ARGV[6]) then
  redis.call('LPUSH', KEYS[5], ARGV[4])
  return 'dead:' .. n
end
for i = 6, #KEYS do
  redis.call('RPUSH', KEYS[i], ARGV[4])
end
return 'restored:' .. n
