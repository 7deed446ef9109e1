-- What executors do with one invocation's tasks now, for its status (reads only).
-- KEYS: [1] running hash, [2] task records hash, [3] recorded results hash
-- ARGV: [1] lease key prefix
-- Returns {running, recorded}:
--   running: (task id, task.started json, 1 if the scheduler has a record of it, else 0)*
--     for the running entries whose lease lives (an entry without one is left over by an
--     executor that died: its task is queued again);
--   recorded: the tasks with a record whose success an executor recorded but the scheduler
--     has not applied yet (e.g. the steps before the one a chain runs now).
local running = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local task = entries[i]
  if redis.call('EXISTS', ARGV[1] .. task) == 1 then
    running[#running + 1] = task
    running[#running + 1] = entries[i + 1]
    running[#running + 1] = redis.call('HEXISTS', KEYS[2], task)
  end
end
local recorded = {}
for _, task in ipairs(redis.call('HKEYS', KEYS[3])) do
  if redis.call('HEXISTS', KEYS[2], task) == 1 then recorded[#recorded + 1] = task end
end
return {running, recorded}
