-- Save one invocation's changes with a compare-and-set on its revision.
-- What one batch of events changed, and nothing else: the summary, the task records the
-- events touched or created, the outputs first recorded, the finished tasks, the output
-- indexes and reducer queues (lists), and the progress messages (published only when saved).
--
-- KEYS: [1] invocation hash, [2] task records hash, [3] stored values hash, [4] done set,
--       [5] recorded results hash, [6..] list keys (output indexes, reducer queues)
-- ARGV: [1] expected rev, [2] summary json, [3] status, [4] progress channel,
--       [5] finished channel, [6] invocation id, then sections, each a count then its items:
--       task records (id, json)*; stored values (task id, json)*; done task ids;
--       lists (trim, n_push, item*)* (the j-th goes to KEYS[5 + j]: LTRIM trim -1, RPUSH);
--       progress messages.
-- Returns the new revision, or -1 when another writer saved first.
local rev = tonumber(redis.call('HGET', KEYS[1], 'rev') or '-1')
if rev ~= tonumber(ARGV[1]) then return -1 end
local old = redis.call('HGET', KEYS[1], 'status')
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'status', ARGV[3], 'rev', rev + 1)

local STEP = 1000 -- arguments per command: unpack() is bounded by Lua's stack
local function in_slices(command, key, first, count)
  local k = 0
  while k < count do
    local m = math.min(count - k, STEP)
    redis.call(command, key, unpack(ARGV, first + k, first + k + m - 1))
    k = k + m
  end
end

local i = 7
local n = tonumber(ARGV[i]); i = i + 1
in_slices('HSET', KEYS[2], i, 2 * n); i = i + 2 * n
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HSETNX', KEYS[3], ARGV[i], ARGV[i + 1]); i = i + 2 end
n = tonumber(ARGV[i]); i = i + 1
if n > 0 then
  in_slices('SADD', KEYS[4], i, n)
  in_slices('HDEL', KEYS[5], i, n)
end
i = i + n
n = tonumber(ARGV[i]); i = i + 1
for j = 1, n do
  local key = KEYS[5 + j]
  local trim, push = tonumber(ARGV[i]), tonumber(ARGV[i + 1]); i = i + 2
  if trim > 0 then redis.call('LTRIM', key, trim, -1) end
  in_slices('RPUSH', key, i, push); i = i + push
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('PUBLISH', ARGV[4], ARGV[i]); i = i + 1 end

local s = ARGV[3]
if old ~= s and (s == 'succeeded' or s == 'failed' or s == 'cancelled') then
  redis.call('PUBLISH', ARGV[5], ARGV[6])
end
return rev + 1
