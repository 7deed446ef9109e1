-- The values of a few functions of one invocation (InvocationRepository.function_values):
-- the invocation's summary fields, the first entries of each function's output index and
-- the stored values of the tasks those entries name.
-- KEYS: [1] invocation hash, [2] outputs hash, [3..] the functions' output index lists
-- ARGV: [1] entries to read of each index at most
local head = redis.call('HMGET', KEYS[1], 'state', 'rev', 'status')
local last = tonumber(ARGV[1]) - 1
local lists = {}
local ids = {}
local seen = {}
for i = 3, #KEYS do
  local items = redis.call('LRANGE', KEYS[i], 0, last)
  lists[#lists + 1] = items
  for _, item in ipairs(items) do
    local task_id = cjson.decode(item)['task_id']
    if not seen[task_id] then
      seen[task_id] = true
      ids[#ids + 1] = task_id
    end
  end
end
local values = {}
if #ids > 0 then values = redis.call('HMGET', KEYS[2], unpack(ids)) end
return {head, lists, ids, values}
