-- livebattle: apply one batch atomically, with compare-and-set on every battle's version.
-- KEYS: 1 battles, 2 versions (hash id -> version), 3 timers (zset id -> deadline ms),
--       4 evicted (zset id -> forget-at ms), 5 claims, 6 seq (string), 7 feed (stream)
-- ARGV: 1 feed max length (approximate), then ops:
--   'P' id expected('' = none) version record deadline('' = none)
--   'E' id forget_at        'F' id        'N' seq('0' = next) keep_from_seq notification-json
-- Returns {1, last_seq} or {0, {conflicting ids}}. Feed entries: id "<seq>-<n>";
--   fields p=record | e=id f=forget_at | n=json (the notification's seq is the id's first part).
local conflicts = {}
local seq = tonumber(redis.call('GET', KEYS[6]) or '0')
local check = seq
local i = 2
while i <= #ARGV do
  local tag = ARGV[i]
  if tag == 'P' then
    local id, expected = ARGV[i + 1], ARGV[i + 2]
    local cur = redis.call('HGET', KEYS[2], id)
    if expected == '' then
      if cur or redis.call('ZSCORE', KEYS[4], id) then table.insert(conflicts, id) end
    elseif cur ~= expected then
      table.insert(conflicts, id)
    end
    i = i + 6
  elseif tag == 'E' then i = i + 3
  elseif tag == 'F' then i = i + 2
  elseif tag == 'N' then
    local given = tonumber(ARGV[i + 1])
    if given == nil or tonumber(ARGV[i + 2]) == nil then return redis.error_reply('livebattle commit: bad notify op') end
    if given > 0 then
      if given <= check then return redis.error_reply('livebattle commit: seq ' .. given .. ' is not above ' .. check) end
      check = given
    else
      check = check + 1
    end
    i = i + 4
  else return redis.error_reply('livebattle commit: unknown op ' .. tostring(tag)) end
end
if #conflicts > 0 then return {0, conflicts} end
local maxlen = ARGV[1]
i = 2
while i <= #ARGV do
  local tag = ARGV[i]
  if tag == 'P' then
    local id, record, deadline = ARGV[i + 1], ARGV[i + 4], ARGV[i + 5]
    redis.call('HSET', KEYS[1], id, record)
    redis.call('HSET', KEYS[2], id, ARGV[i + 3])
    if deadline == '' then redis.call('ZREM', KEYS[3], id) else redis.call('ZADD', KEYS[3], deadline, id) end
    redis.call('ZREM', KEYS[4], id)
    redis.call('HDEL', KEYS[5], id)
    redis.call('XADD', KEYS[7], 'MAXLEN', '~', maxlen, seq .. '-*', 'p', record)
    i = i + 6
  elseif tag == 'E' then
    local id, forget_at = ARGV[i + 1], ARGV[i + 2]
    redis.call('HDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
    redis.call('HDEL', KEYS[5], id)
    redis.call('ZADD', KEYS[4], forget_at, id)
    redis.call('XADD', KEYS[7], 'MAXLEN', '~', maxlen, seq .. '-*', 'e', id, 'f', forget_at)
    i = i + 3
  elseif tag == 'F' then
    redis.call('ZREM', KEYS[4], ARGV[i + 1])
    i = i + 2
  else
    local given = tonumber(ARGV[i + 1])
    if given > 0 then
      seq = given
    else
      seq = seq + 1
    end
    redis.call('XADD', KEYS[7], 'MAXLEN', '~', maxlen, seq .. '-*', 'n', ARGV[i + 3])
    local keep = tonumber(ARGV[i + 2])
    if keep > 1 then redis.call('XTRIM', KEYS[7], 'MINID', keep .. '-0') end
    i = i + 4
  end
end
redis.call('SET', KEYS[6], seq)
return {1, seq}
