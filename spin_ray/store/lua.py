"""The fit store's Lua scripts: keep-best write, batch read and namespace creation, each atomic in Redis."""

from __future__ import annotations

# One keep-best write. Every comparison goes through tonumber(): Lua compares strings otherwise.
# The script checks its own input (a caller that skips Python's validation cannot poison the store):
# error finite and >= 0, pose/betas 72/10 finite float32, step >= 0, a known source. A stored record
# whose error is not a finite number >= 0, or whose pose/betas have the wrong length, is corrupt and is
# replaced by any sound fit.
# KEYS: record, error index, dataset stats, namespace meta
# ARGV: error, pose, betas, step, source, time, index, schema, body hash, updates ('' = old + 1)
KEEP_BEST_LUA = """
local function bad(what)
  return redis.error_reply('SPINRAY_BAD ' .. KEYS[1] .. ': ' .. what)
end
local function finite_floats(data, n)
  local values = {struct.unpack('<' .. string.rep('f', n), data)}
  for i = 1, n do
    local v = values[i]
    if v ~= v or v == math.huge or v == -math.huge then
      return false
    end
  end
  return true
end
local function sound_error(text)
  local v = tonumber(text)
  return v ~= nil and v == v and v >= 0 and v ~= math.huge
end
local sources = {static = true, loop = true, gt = true}
if not sound_error(ARGV[1]) then
  return bad('error ' .. tostring(ARGV[1]) .. ' is not a finite number >= 0')
end
if #ARGV[2] ~= 288 or #ARGV[3] ~= 40 then
  return bad('pose/betas are ' .. #ARGV[2] .. '/' .. #ARGV[3] .. ' bytes, expected 288/40')
end
if not finite_floats(ARGV[2], 72) or not finite_floats(ARGV[3], 10) then
  return bad('pose or betas hold NaN or inf')
end
if not sources[ARGV[5]] or not (tonumber(ARGV[4]) and tonumber(ARGV[4]) >= 0) or not tonumber(ARGV[6])
   or not (ARGV[10] == '' or (tonumber(ARGV[10]) and tonumber(ARGV[10]) >= 1)) then
  return bad('step ' .. tostring(ARGV[4]) .. ', source ' .. tostring(ARGV[5]) .. ', time or updates is invalid')
end
local meta = redis.call('HMGET', KEYS[4], 'schema_version', 'body_model_hash')
if not meta[1] then
  return redis.error_reply('SPINRAY_META namespace metadata is missing')
end
if meta[1] ~= ARGV[8] or meta[2] ~= ARGV[9] then
  return redis.error_reply('SPINRAY_META namespace metadata is schema ' .. meta[1] .. ', body model ' .. tostring(meta[2]))
end
local new = tonumber(ARGV[1])
local old = redis.call('HMGET', KEYS[1], 'error', 'updates', 'source')
local updates = 1
if old[1] or old[2] or old[3] then
  local sound = sound_error(old[1]) and redis.call('HSTRLEN', KEYS[1], 'pose') == 288
                and redis.call('HSTRLEN', KEYS[1], 'betas') == 40
  if sound and new >= tonumber(old[1]) then
    return 0
  end
  updates = (tonumber(old[2]) or 0) + 1
  if sources[old[3]] then
    redis.call('HINCRBY', KEYS[3], 'src:' .. old[3], -1)
  end
end
if ARGV[10] ~= '' then
  updates = tonumber(ARGV[10])
end
redis.call('HSET', KEYS[1], 'pose', ARGV[2], 'betas', ARGV[3], 'error', ARGV[1], 'step', ARGV[4],
           'source', ARGV[5], 'updates', updates, 'time', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[7])
redis.call('HINCRBY', KEYS[3], 'src:' .. ARGV[5], 1)
redis.call('HINCRBY', KEYS[3], 'n:' .. ARGV[4], 1)
redis.call('HINCRBYFLOAT', KEYS[3], 's:' .. ARGV[4], ARGV[1])
return 1
"""

# Batch read: every record's fields, flattened, in one command (pipelined HMGETs cost ~3x more client CPU).
# KEYS: records. Missing fields come back as nil, so a missing record is 7 nils.
READ_LUA = """
local out = {}
for _, key in ipairs(KEYS) do
  local fields = redis.call('HMGET', key, 'pose', 'betas', 'error', 'step', 'source', 'updates', 'time')
  for j = 1, 7 do
    out[#out + 1] = fields[j]
  end
end
return out
"""

# Create the namespace metadata if absent, then return it, atomically (two writers may open at once).
INIT_META_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'schema_version', ARGV[1], 'body_model_hash', ARGV[2], 'created', ARGV[3])
end
return redis.call('HMGET', KEYS[1], 'schema_version', 'body_model_hash', 'created')
"""
