-- Record an accepted invocation (InvocationRepository.create_invocation_reading): what
-- create_invocation's transaction writes, then the value of one more string key (e.g. the
-- graphs epoch: whether the graph the API cached was still current).
-- KEYS: [1] invocation hash, [2] outputs hash, [3] the graph's invocations sorted set,
--       [4] the key to read
-- ARGV: [1] summary json, [2] status, [3] input field, [4] input values json,
--       [5] created-at score, [6] invocation id, [7] the new record's revision
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'status', ARGV[2], 'rev', ARGV[7])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[6])
return redis.call('GET', KEYS[4])
