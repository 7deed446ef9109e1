-- One page of a function's outputs (InvocationRepository.load_invocation_outputs): a string
-- key, the invocation's summary fields, a range of the output index and the stored values
-- of the tasks a page of ARGV[3] values from offset ARGV[4] in the first entry reaches.
-- KEYS: [1] the string key, [2] invocation hash, [3] output index list, [4] outputs hash
-- ARGV: [1] first index entry, [2] last index entry, [3] values wanted, [4] offset in the
--       first entry
local extra = redis.call('GET', KEYS[1])
local head = redis.call('HMGET', KEYS[2], 'state', 'rev', 'status')
local items = {}
if tonumber(ARGV[2]) >= tonumber(ARGV[1]) then
  items = redis.call('LRANGE', KEYS[3], ARGV[1], ARGV[2])
end
local room = tonumber(ARGV[3])
local offset = tonumber(ARGV[4])
local ids = {}
for i, item in ipairs(items) do
  if room <= 0 then break end
  local entry = cjson.decode(item)
  local size = entry['stop'] - entry['start']
  if i == 1 then size = size - offset end
  if size > room then size = room end
  if size > 0 then
    ids[#ids + 1] = entry['task_id']
    room = room - size
  end
end
local values = {}
if #ids > 0 then values = redis.call('HMGET', KEYS[4], unpack(ids)) end
return {extra, head, items, ids, values}
