-- livebattle: read battles and claim due timers, in one atomic step.
-- KEYS: 1 battles (hash id -> record), 2 evicted (zset id -> forget-at ms), 3 claims (hash id -> "gen|instance|expires-ms")
-- ARGV: 1 instance, 2 lease ms, 3 n, then n ids, then m, then m pairs (id, generation)
-- Returns { {per id: {1, record} | {2, forget_at} | {0}}, {per claim: 0 (held by the caller now) | ms another instance still holds it} }
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local instance = ARGV[1]
local lease = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local battles = {}
for i = 1, n do
  local id = ARGV[3 + i]
  local rec = redis.call('HGET', KEYS[1], id)
  if rec then
    battles[i] = {1, rec}
  else
    local f = redis.call('ZSCORE', KEYS[2], id)
    if f then battles[i] = {2, f} else battles[i] = {0} end
  end
end
local base = 4 + n
local m = tonumber(ARGV[base])
local claims = {}
for j = 1, m do
  local id = ARGV[base + 2 * j - 1]
  local gen = ARGV[base + 2 * j]
  local cur = redis.call('HGET', KEYS[3], id)
  local wait = 0
  if cur then
    local cgen, cinst, cexp = string.match(cur, '^([^|]*)|([^|]*)|(%d+)$')
    if cgen == gen and cinst ~= instance and tonumber(cexp) > now then
      wait = tonumber(cexp) - now
    end
  end
  if wait == 0 then
    redis.call('HSET', KEYS[3], id, gen .. '|' .. instance .. '|' .. (now + lease))
  end
  claims[j] = wait
end
return {battles, claims}
