-- SUMMARY: a page of unacked messages, summarised on the server: cjson runs here, so a page
-- of large messages costs a page of small replies.
--
-- KEYS[1]     kombu's unacked hash
-- ARGV[1..n]  delivery tags (at least one)
--
-- Returns per tag: false (no hash entry), '!' (not kombu's JSON), or a small JSON summary of
-- the headers the janitor needs: {ex, rk, task, id, eta, expires, retries, priority}.
-- Protocol-1 messages keep task fields in the body; a body up to 64 KiB is returned too
-- (body, and enc: its body_encoding) for Python to decode (Lua has no base64).

local out = {}
local vals = redis.call('HMGET', KEYS[1], unpack(ARGV))
for i = 1, #ARGV do
  local raw = vals[i]
  if not raw then
    out[i] = false
  else
    local ok, v = pcall(cjson.decode, raw)
    if not ok or type(v) ~= 'table' or type(v[1]) ~= 'table' then
      out[i] = '!'
    else
      local m, h, p = v[1], v[1]['headers'], v[1]['properties']
      if type(h) ~= 'table' then h = {} end
      if type(p) ~= 'table' then p = {} end
      local s = {ex = v[2], rk = v[3], task = h['task'], id = h['id'], eta = h['eta'],
                 expires = h['expires'], retries = h['retries'], priority = p['priority']}
      if h['task'] == nil and type(m['body']) == 'string' and #m['body'] <= 65536 then
        s['body'] = m['body']
        s['enc'] = p['body_encoding']
      end
      local ok2, enc = pcall(cjson.encode, s)
      out[i] = ok2 and enc or '!'
    end
  end
end
return out
