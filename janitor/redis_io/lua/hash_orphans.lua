-- HASH_ORPHANS: one HSCAN page of kombu's unacked hash, keeping the fields that have no
-- unacked_index entry (kombu never restores those). Values stay on the server.
--
-- KEYS[1]  kombu's unacked hash
-- KEYS[2]  kombu's unacked_index
-- ARGV[1]  HSCAN cursor
-- ARGV[2]  HSCAN COUNT
--
-- Returns {next cursor, fields with no index entry}.

local r = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local orphans = {}
for i = 1, #r[2], 2 do
  if not redis.call('ZSCORE', KEYS[2], r[2][i]) then orphans[#orphans + 1] = r[2][i] end
end
return {r[1], orphans}
