-- Extend the leases a token holds on several tasks of one invocation.
-- ARGV: [1] token, [2] ttl ms, [3] lease key prefix, then task ids
local renewed = 0
for i = 4, #ARGV do
  local lease = ARGV[3] .. ARGV[i]
  if redis.call('GET', lease) == ARGV[1] then
    redis.call('PEXPIRE', lease, ARGV[2])
    renewed = renewed + 1
  end
end
return renewed
