-- RESCORE: raise one unacked message's unacked_index score, under kombu's unacked_mutex, so
-- kombu's restore_visible (which picks entries by score alone) leaves it alone longer.
--
-- KEYS[1]  kombu's unacked hash
-- KEYS[2]  kombu's unacked_index
-- KEYS[3]  kombu's unacked_mutex (ours while we re-score)
-- ARGV[1]  delivery tag
-- ARGV[2]  our unacked_mutex token
-- ARGV[3]  sha1 of the hash entry as read
-- ARGV[4]  the score as read
-- ARGV[5]  the new score
--
-- Returns 'raised', 'gone' (no hash or index entry), 'changed' (another copy of the entry or
-- another score since it was read) or 'lower' (the new score is not above the current one:
-- a score is never lowered). Fails with 'FENCED ...', writing nothing, when the mutex does not
-- hold our token.
--
-- kombu's restore_visible reads the index and restores what it read under the same mutex, so
-- a score raised here cannot fall between its read and its restore.

if redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return redis.error_reply('FENCED unacked_mutex lost')
end
local tag = ARGV[1]
local raw = redis.call('HGET', KEYS[1], tag)
local score = redis.call('ZSCORE', KEYS[2], tag)
if not raw or not score then
  return 'gone'
end
if redis.sha1hex(raw) ~= ARGV[3] or math.abs(tonumber(score) - tonumber(ARGV[4])) > 0.001 then
  return 'changed'
end
if tonumber(ARGV[5]) <= tonumber(score) then
  return 'lower'
end
redis.call('ZADD', KEYS[2], 'XX', ARGV[5], tag)
return 'raised'
