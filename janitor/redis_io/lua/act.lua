-- ACT: apply the sweep's decisions, re-checking each key inside this atomic call so a key
-- Celery rewrote since it was read is left alone.
--
-- KEYS[1]     the fence: the lease key
-- KEYS[2..n]  the targets
-- ARGV[1]     the token the lease key must hold ('' = no fence)
-- then three slots per target, in the order of KEYS (target t at ARGV[3t-1], [3t], [3t+1]):
--   op     'x' set a TTL on a key that has none, 'c' shorten a longer TTL, 'd' unlink a
--          key with no TTL, 'D' unlink regardless of TTL (janitor.scripts.Op)
--   ms     the TTL to set (milliseconds; deletes ignore it)
--   guard  what must be unchanged, checked inside this atomic call:
--          'S<length>:<sha1>' the value INSPECT read (deletes: losing a fresh rewrite would
--          be data loss; the length first, so a value rewritten larger meanwhile is never
--          read whole);
--          'E<length>:<h>:<t>:<sha1>' for a value too large to read whole, its length and
--          the digest of its first h and last t bytes (what the decision was taken on);
--          'L<n>' its length (TTLs: O(1), and the TTL check already catches Celery's SETEX
--          rewrites); '' none (non-string keys)
--
-- Returns 1/0 per target: applied, or left alone because it changed. Fails with
-- 'FENCED ...', writing nothing, when the lease key does not hold the token.

if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED lease lost before this batch')
end
local done = {}
for i = 2, #KEYS do
  local k = KEYS[i]
  local j = (i - 2) * 3 + 2
  local op, ms, guard = ARGV[j], tonumber(ARGV[j + 1]), ARGV[j + 2]
  local pttl = redis.call('PTTL', k)
  local ok = pttl ~= -2
  local g = string.sub(guard, 1, 1)
  if ok and g == 'S' then
    local size, sum = string.match(guard, '^S(%d+):(%x+)$')
    local n = redis.pcall('STRLEN', k)
    ok = type(n) == 'number' and n == tonumber(size)
    if ok then
      ok = redis.sha1hex(redis.call('GET', k)) == sum
    end
  elseif ok and g == 'L' then
    local n = redis.pcall('STRLEN', k)
    ok = type(n) == 'number' and n == tonumber(string.sub(guard, 2))
  elseif ok and g == 'E' then
    local size, h, t, sum = string.match(guard, '^E(%d+):(%d+):(%d+):(%x+)$')
    local n = redis.pcall('STRLEN', k)
    size, h, t = tonumber(size), tonumber(h), tonumber(t)
    ok = type(n) == 'number' and n == size and h > 0 and t > 0 and t <= n
    if ok then
      local read = redis.call('GETRANGE', k, 0, h - 1) .. redis.call('GETRANGE', k, n - t, n - 1)
      ok = redis.sha1hex(read) == sum
    end
  end
  if ok then
    if op == 'x' and pttl == -1 then
      redis.call('PEXPIRE', k, ms)
    elseif op == 'c' and pttl > ms then
      redis.call('PEXPIRE', k, ms)
    elseif (op == 'd' and pttl == -1) or op == 'D' then
      redis.call('UNLINK', k)
    else
      ok = false
    end
  end
  done[i - 1] = ok and 1 or 0
end
return done
