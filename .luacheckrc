-- luacheck settings for the server-side scripts (janitor/redis_io/lua/, bench/*.lua): Redis runs them
-- in Lua 5.1, with these libraries as globals. A script never writes a global (Redis refuses
-- it), so every one is read-only here.
std = "lua51"
read_globals = {"redis", "cjson", "cmsgpack", "bit", "struct", "KEYS", "ARGV"}
max_line_length = 120
