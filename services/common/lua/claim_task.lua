-- Whether an executor process may run a task (see StateStore.claim_tasks).
-- KEYS: [1] invocation hash, [2] done set, [3] recorded results hash, [4] lease key,
--       [5] running tasks hash
-- ARGV: [1] task id, [2] lease token, [3] lease ttl ms, [4] progress channel,
--       [5] task.started progress json ("": none): when the lease is taken, it is published
--       and kept as the task's entry in the running hash (the task starts now)
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'skip', 'invocation deleted'} end
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then
  return {'skip', 'invocation ' .. status}
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  return {'skip', 'task already finished'}
end
local recorded = redis.call('HGET', KEYS[3], ARGV[1])
if recorded then return {'result', recorded} end
local holder = redis.call('GET', KEYS[4])
if holder and holder ~= ARGV[2] then return {'wait', holder} end
redis.call('SET', KEYS[4], ARGV[2], 'PX', ARGV[3])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[5], ARGV[1], ARGV[5])
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
return {'run', ''}
