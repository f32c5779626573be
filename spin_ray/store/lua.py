"""The fit store's Lua scripts: keep-best write, batch read and namespace creation, each atomic in Redis."""

from __future__ import annotations

# Keep-best for a batch of fits of one dataset, atomic as a whole. Every comparison goes through
# tonumber(): Lua compares strings otherwise. The script checks its own input before it writes anything
# (a caller that skips Python's validation cannot poison the store, and a refused fit writes nothing):
# error finite and >= 0, pose/betas 288/40 bytes of finite float32, step >= 0, a known source. A float32
# is NaN or inf exactly when its exponent bits are all ones: little-endian, its 4th byte is 0x7F or 0xFF
# and its 3rd byte >= 0x80; searching the bytes 0x7F/0xFF with a plain find costs a fraction of unpacking
# 82 floats (benchmarks/RESULTS.md, fit store profile). A stored record whose error is not a finite
# number >= 0, or whose pose/betas have the wrong length, is corrupt and is replaced by any sound fit.
# Fits are applied in order, so of duplicates of one sample the lowest error wins and an equal one does
# not replace. The namespace metadata is checked once a call; the error index gets one ZADD, the stats
# hash one HINCRBY per source and one HINCRBY/HINCRBYFLOAT per step, each with the call's totals.
# Redis refuses a write for want of memory only at a script's first write, so a call goes in whole or
# not at all, and its reply counts exactly.
# Every key of a call is in one index group (store/keys.py: one hash tag, so one Redis Cluster slot). The
# namespace's schema and body model are checked against the stamp in the group's stats hash, which the
# writer copies from the namespace metadata (`spinray:NS:meta`, in another slot) the first time a group is
# written; dropping a namespace deletes the stamps, so a writer of the dropped namespace is refused.
# KEYS: the record of each of the n fits, then the group's error index and stats
# ARGV: 7 per fit (error, pose, betas, step, source, time, index), then schema, body hash, then one
#       `updates` per fit ('' = old + 1).
# Reply: n characters, '1' for a fit written, '0' for one that did not beat the stored error.
KEEP_BEST_LUA = """
local n = #KEYS - 2
local index_key, stats_key = KEYS[n + 1], KEYS[n + 2]
local sources = {static = true, loop = true, gt = true}
local function bad(i, what)
  return redis.error_reply('SPINRAY_BAD ' .. tostring(KEYS[i]) .. ': ' .. what .. ' (fit ' .. i .. ' of ' .. n .. ' in the call)')
end
local function sound_error(text)
  local v = tonumber(text)
  return v ~= nil and v == v and v >= 0 and v ~= math.huge
end
local function no_nonfinite_with(data, top)
  local at = 1
  while true do
    local p = string.find(data, top, at, true)
    if not p then
      return true
    end
    if p % 4 == 0 and string.byte(data, p - 1) >= 128 then
      return false
    end
    at = p + 1
  end
end
local function finite(data)
  return no_nonfinite_with(data, '\\127') and no_nonfinite_with(data, '\\255')
end
if n < 1 or #ARGV ~= 8 * n + 2 then
  return redis.error_reply('SPINRAY_BAD call of ' .. #KEYS .. ' keys and ' .. #ARGV .. ' arguments: expected n records + 2 keys and 8 n + 2 arguments')
end
for i = 1, n do
  local a = 7 * (i - 1)
  if not sound_error(ARGV[a + 1]) then
    return bad(i, 'error ' .. tostring(ARGV[a + 1]) .. ' is not a finite number >= 0')
  end
  if #ARGV[a + 2] ~= 288 or #ARGV[a + 3] ~= 40 then
    return bad(i, 'pose/betas are ' .. #ARGV[a + 2] .. '/' .. #ARGV[a + 3] .. ' bytes, expected 288/40')
  end
  if not finite(ARGV[a + 2]) or not finite(ARGV[a + 3]) then
    return bad(i, 'pose or betas hold NaN or inf')
  end
  local step, u = tonumber(ARGV[a + 4]), ARGV[7 * n + 2 + i]
  if not sources[ARGV[a + 5]] or not (step and step >= 0) or not tonumber(ARGV[a + 6])
     or not (u == '' or (tonumber(u) and tonumber(u) >= 1)) then
    return bad(i, 'step ' .. tostring(ARGV[a + 4]) .. ', source ' .. tostring(ARGV[a + 5]) .. ', time or updates is invalid')
  end
end
local meta = redis.call('HMGET', stats_key, 'schema_version', 'body_model_hash')
if not meta[1] then
  return redis.error_reply('SPINRAY_NOMETA ' .. stats_key .. ' has no stamp of the namespace metadata')
end
if meta[1] ~= ARGV[7 * n + 1] or meta[2] ~= ARGV[7 * n + 2] then
  return redis.error_reply('SPINRAY_META namespace metadata is schema ' .. meta[1] .. ', body model ' .. tostring(meta[2]))
end
local written, zadd, by_source, count, sum = {}, {'ZADD', index_key}, {}, {}, {}
for i = 1, n do
  local a = 7 * (i - 1)
  local text = ARGV[a + 1]
  local new = tonumber(text)
  local old = redis.call('HMGET', KEYS[i], 'error', 'updates', 'source', 'pose', 'betas')
  local updates, keep = 1, false
  if old[1] or old[2] or old[3] or old[4] or old[5] then
    local sound = sound_error(old[1]) and old[4] and #old[4] == 288 and old[5] and #old[5] == 40
    if sound and new >= tonumber(old[1]) then
      keep = true
    else
      updates = (tonumber(old[2]) or 0) + 1
      if sources[old[3]] then
        by_source[old[3]] = (by_source[old[3]] or 0) - 1
      end
    end
  end
  if keep then
    written[i] = '0'
  else
    local step, source, u = ARGV[a + 4], ARGV[a + 5], ARGV[7 * n + 2 + i]
    if u ~= '' then
      updates = tonumber(u)
    end
    redis.call('HSET', KEYS[i], 'pose', ARGV[a + 2], 'betas', ARGV[a + 3], 'error', text, 'step', step,
               'source', source, 'updates', updates, 'time', ARGV[a + 6])
    zadd[#zadd + 1] = text
    zadd[#zadd + 1] = ARGV[a + 7]
    by_source[source] = (by_source[source] or 0) + 1
    count[step] = (count[step] or 0) + 1
    sum[step] = (sum[step] or 0) + new
    written[i] = '1'
  end
end
if #zadd > 2 then
  redis.call(unpack(zadd))
end
for source, delta in pairs(by_source) do
  redis.call('HINCRBY', stats_key, 'src:' .. source, delta)
end
for step, c in pairs(count) do
  redis.call('HINCRBY', stats_key, 'n:' .. step, c)
  redis.call('HINCRBYFLOAT', stats_key, 's:' .. step, string.format('%.17g', sum[step]))
end
return table.concat(written)
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
# ARGV: schema, body hash, creation time, index groups
INIT_META_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'schema_version', ARGV[1], 'body_model_hash', ARGV[2], 'created', ARGV[3],
             'index_groups', ARGV[4])
end
return redis.call('HMGET', KEYS[1], 'schema_version', 'body_model_hash', 'created', 'index_groups')
"""

# Stamp a group's stats hash with the namespace's schema and body model (the writer read them from the
# namespace metadata just before), unless it has a stamp. KEYS: the stats hash; ARGV: schema, body hash
STAMP_LUA = """
if redis.call('HEXISTS', KEYS[1], 'schema_version') == 0 then
  redis.call('HSET', KEYS[1], 'schema_version', ARGV[1], 'body_model_hash', ARGV[2])
end
return 1
"""
