-- Extend (ttl > 0) or release (ttl 0) a task lease held by a token.
-- KEYS: [1] lease key; ARGV: [1] token, [2] ttl ms
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('DEL', KEYS[1])
