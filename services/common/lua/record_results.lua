-- Keep the results of several tasks of one invocation and release their leases, in one call.
-- A success is kept (first writer wins) before its lease goes: a redelivered task then
-- re-publishes it instead of running again. A lease is released only if the token holds it;
-- the task's entry in the running hash goes with it (or if no one holds the lease).
-- KEYS: [1] recorded results hash, [2] running hash
-- ARGV: [1] lease token, [2] lease key prefix, then (task id, success event json or "")*
for i = 3, #ARGV, 2 do
  local task, result = ARGV[i], ARGV[i + 1]
  if result ~= '' then redis.call('HSETNX', KEYS[1], task, result) end
  local lease = ARGV[2] .. task
  local holder = redis.call('GET', lease)
  if holder == ARGV[1] then redis.call('DEL', lease) end
  if holder == ARGV[1] or not holder then redis.call('HDEL', KEYS[2], task) end
end
return 1
