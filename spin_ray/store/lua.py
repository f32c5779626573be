"""The fit store's Lua scripts: keep-best write, batch read and namespace creation, each atomic in Redis."""

from __future__ import annotations

# Keep-best for a batch of fits of one dataset, atomic as a whole. Every comparison goes through
# tonumber(): Lua compares strings otherwise. The script checks its own input before it writes anything
# (a caller that skips Python's validation cannot poison the store, and a refused fit writes nothing):
# error finite and >= 0, pose/betas 288/40 bytes of finite float32, step and index integers >= 0, a known
# source, a number for the time. A float32 is NaN or inf exactly when its exponent bits are all ones:
# little-endian, its 4th byte is 0x7F or 0xFF and its 3rd byte >= 0x80; a plain search of the call's
# pose/betas bytes for 0x7F/0xFF costs a fraction of unpacking 82 floats a fit (benchmarks/RESULTS.md,
# fit store profile). A stored record whose error is not a finite number >= 0, or whose pose/betas have
# the wrong length, is corrupt and is replaced by any sound fit (the lengths are asked only where the new
# fit does not beat the stored error: a lower one replaces the record either way).
# Fits are applied in order, so of duplicates of one sample the lowest error wins and an equal one does
# not replace. The namespace metadata is checked once a call; one EXISTS of every record tells a call of
# new samples that it need not read them (a record written earlier in the call is read); the error index
# gets one ZADD, the stats hash one HINCRBY per source and one HINCRBY/HINCRBYFLOAT per step, each with
# the call's totals. Redis refuses a write for want of memory only at a script's first write, so a call
# goes in whole or not at all, and its reply counts exactly.
# Every key of a call is in one index group (store/keys.py: one hash tag, so one Redis Cluster slot). The
# namespace's schema and body model are checked against the stamp in the group's stats hash, which the
# writer copies from the namespace metadata (`spinray:NS:meta`, in another slot) the first time a group is
# written; dropping a namespace deletes the stamps, so a writer of the dropped namespace is refused.
# KEYS: the record of each of the n fits, then the group's error index and stats.
# ARGV (9, whatever n: few arguments cost Redis and the client less than 8 a fit):
#   1 schema, 2 body hash,
#   3 pose and betas of the n fits, n x 328 bytes (fit i: 72 then 10 little-endian float32),
#   4 errors (n decimal texts), 5 steps, 6 sources, 7 times (each n, or 1 for every fit),
#   8 indices (n: the index members), 9 updates (n, 1 for every fit, or none: each stored count + 1);
#   a list argument is its values separated by spaces.
# Reply: n characters, '1' for a fit written, '0' for one that did not beat the stored error.
KEEP_BEST_LUA = """
local n = #KEYS - 2
local index_key, stats_key = KEYS[n + 1], KEYS[n + 2]
local call, sub, find, byte = redis.call, string.sub, string.find, string.byte
local sources = {static = true, loop = true, gt = true}
local function bad(i, what)
  return redis.error_reply('SPINRAY_BAD ' .. tostring(KEYS[i]) .. ': ' .. what .. ' (fit ' .. i .. ' of ' .. n .. ' in the call)')
end
local function sound_error(text)
  local v = tonumber(text)
  return v ~= nil and v == v and v >= 0 and v ~= math.huge
end
local function values(text)
  local out, k = {}, 0
  for value in string.gmatch(text, '%S+') do
    k = k + 1
    out[k] = value
  end
  return out, k
end
local function nonfinite_at(data, top)
  local at = 1
  while true do
    local p = find(data, top, at, true)
    if not p or (p % 4 == 0 and byte(data, p - 1) >= 128) then
      return p
    end
    at = p + 1
  end
end
if n < 1 or #ARGV ~= 9 then
  return redis.error_reply('SPINRAY_BAD call of ' .. #KEYS .. ' keys and ' .. #ARGV .. ' arguments: expected n records + 2 keys and 9 arguments')
end
local blob = ARGV[3]
local errors, ne = values(ARGV[4])
local steps, ns = values(ARGV[5])
local srcs, nsrc = values(ARGV[6])
local times, nt = values(ARGV[7])
local members, nm = values(ARGV[8])
local ups, nu = values(ARGV[9])
if #blob ~= 328 * n or ne ~= n or nm ~= n or (ns ~= 1 and ns ~= n) or (nsrc ~= 1 and nsrc ~= n) or (nt ~= 1 and nt ~= n)
   or (nu > 1 and nu ~= n) then
  return redis.error_reply('SPINRAY_BAD call of ' .. n .. ' fits to ' .. index_key .. ': ' .. #blob .. ' bytes of pose and betas (expected '
    .. 328 * n .. '), ' .. ne .. ' errors and ' .. nm .. ' indices (expected ' .. n .. '), ' .. ns .. ' steps, ' .. nsrc .. ' sources, '
    .. nt .. ' times and ' .. nu .. ' updates (expected 1 or ' .. n .. '; updates may be none)')
end
local p = nonfinite_at(blob, '\\127') or nonfinite_at(blob, '\\255')
if p then
  return bad(math.floor((p - 1) / 328) + 1, 'pose or betas hold NaN or inf')
end
for i = 1, n do
  if not sound_error(errors[i]) then
    return bad(i, 'error ' .. errors[i] .. ' is not a finite number >= 0')
  end
  if not find(members[i], '^%d+$') then
    return bad(i, 'index ' .. members[i] .. ' is not an integer >= 0')
  end
end
for i = 1, ns do
  if not find(steps[i], '^%d+$') then
    return bad(i, 'step ' .. steps[i] .. ' is not an integer >= 0')
  end
end
for i = 1, nsrc do
  if not sources[srcs[i]] then
    return bad(i, 'source ' .. srcs[i] .. ' is not static, loop or gt')
  end
end
for i = 1, nt do
  if not tonumber(times[i]) then
    return bad(i, 'time ' .. times[i] .. ' is not a number')
  end
end
for i = 1, nu do
  if not find(ups[i], '^%d+$') or tonumber(ups[i]) < 1 then
    return bad(i, 'updates ' .. ups[i] .. ' is not an integer >= 1')
  end
end
local meta = call('HMGET', stats_key, 'schema_version', 'body_model_hash')
if not meta[1] then
  return redis.error_reply('SPINRAY_NOMETA ' .. stats_key .. ' has no stamp of the namespace metadata')
end
if meta[1] ~= ARGV[1] or meta[2] ~= ARGV[2] then
  return redis.error_reply('SPINRAY_META namespace metadata is schema ' .. meta[1] .. ', body model ' .. tostring(meta[2]))
end
local fresh = call('EXISTS', unpack(KEYS, 1, n)) == 0
local written, zadd, by_source, count, sum, seen, none = {}, {'ZADD', index_key}, {}, {}, {}, {}, {}
for i = 1, n do
  local key, text = KEYS[i], errors[i]
  local new = tonumber(text)
  local old = none
  if not fresh or seen[key] then
    old = call('HMGET', key, 'error', 'updates', 'source')
  end
  local updates, keep = 1, false
  if old[1] or old[2] or old[3] then
    local stored = sound_error(old[1]) and tonumber(old[1])
    if stored and new >= stored and call('HSTRLEN', key, 'pose') == 288 and call('HSTRLEN', key, 'betas') == 40 then
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
    local step, source = steps[i] or steps[1], srcs[i] or srcs[1]
    if nu > 0 then
      updates = ups[i] or ups[1]
    end
    local at = 328 * (i - 1)
    call('HSET', key, 'pose', sub(blob, at + 1, at + 288), 'betas', sub(blob, at + 289, at + 328), 'error', text,
         'step', step, 'source', source, 'updates', updates, 'time', times[i] or times[1])
    seen[key] = true
    zadd[#zadd + 1] = text
    zadd[#zadd + 1] = members[i]
    by_source[source] = (by_source[source] or 0) + 1
    count[step] = (count[step] or 0) + 1
    sum[step] = (sum[step] or 0) + new
    written[i] = '1'
  end
end
if #zadd > 2 then
  call(unpack(zadd))
end
for source, delta in pairs(by_source) do
  call('HINCRBY', stats_key, 'src:' .. source, delta)
end
for step, c in pairs(count) do
  call('HINCRBY', stats_key, 'n:' .. step, c)
  call('HINCRBYFLOAT', stats_key, 's:' .. step, string.format('%.17g', sum[step]))
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
