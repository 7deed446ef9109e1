-- Claim several tasks of one invocation for an executor process (a chunk), in one call.
-- The same verdicts as claim_task.lua, per task. A chunk is claimed when a worker is free
-- for it: each lease taken starts its task, whose task.started event is kept in the running
-- hash, and published only while someone listens on the invocation's progress channel (a
-- fan-out of thousands would otherwise publish thousands of messages nobody reads).
-- Lease keys are the lease key prefix followed by the task id (Names.lease_key).
-- KEYS: [1] invocation hash, [2] done set, [3] recorded results hash, [4] running hash
-- ARGV: [1] lease token, [2] lease ttl ms, [3] lease key prefix, [4] progress channel,
--       [5] invocation id, [6] executor id, [7] function, then (task id, attempt)*
-- Returns the verdicts and details, flattened: verdict1, detail1, verdict2, detail2, ...
local n = (#ARGV - 7) / 2
local out = {}
local status = redis.call('HGET', KEYS[1], 'status')
local over = nil
if not status then
  over = 'invocation deleted'
elseif status == 'succeeded' or status == 'failed' or status == 'cancelled' then
  over = 'invocation ' .. status
end
if over then
  for _ = 1, n do out[#out + 1] = 'skip'; out[#out + 1] = over end
  return out
end
local listening = redis.call('PUBSUB', 'NUMSUB', ARGV[4])[2] > 0
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
for i = 0, n - 1 do
  local task, attempt = ARGV[8 + 2 * i], ARGV[9 + 2 * i]
  local verdict, detail = 'run', ''
  if redis.call('SISMEMBER', KEYS[2], task) == 1 then
    verdict, detail = 'skip', 'task already finished'
  else
    local recorded = redis.call('HGET', KEYS[3], task)
    if recorded then
      verdict, detail = 'result', recorded
    else
      local lease = ARGV[3] .. task
      local holder = redis.call('GET', lease)
      if holder and holder ~= ARGV[1] then
        verdict, detail = 'wait', holder
      else
        redis.call('SET', lease, ARGV[1], 'PX', ARGV[2])
        local started = cjson.encode({
          type = 'task.started', invocation_id = ARGV[5], task_id = task,
          ['function'] = ARGV[7], attempt = tonumber(attempt), executor = ARGV[6], at = now
        })
        redis.call('HSET', KEYS[4], task, started)
        if listening then redis.call('PUBLISH', ARGV[4], started) end
      end
    end
  end
  out[#out + 1] = verdict
  out[#out + 1] = detail
end
return out
