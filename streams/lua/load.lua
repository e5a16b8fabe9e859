-- idstream: load what a batch can change, in one round trip (it decides nothing).
--
-- KEYS: idx unit uagg uver erased meta seen-bucket...
-- ARGV: n, n nodes, m, m erasure hashes, event ids...
-- Returns {idx value or false per node, {gid, unit, aggregates, version}..., erased key or false per hash,
--          erase max or false, {fingerprint+source or false per event id}}

local idx, unit, uagg, uver, erased, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local n = tonumber(ARGV[1])
local at = 2
local values, units, taken = {}, {}, {}
if n > 0 then
  for i = at, at + n - 1, 1000 do
    local part = redis.call("HMGET", idx, unpack(ARGV, i, math.min(i + 999, at + n - 1)))
    for _, v in ipairs(part) do values[#values + 1] = v end
  end
end
for _, v in ipairs(values) do
  if v then
    local cut = string.find(v, RS, 1, true)
    local gid = string.sub(v, 1, cut - 1)
    if not taken[gid] then
      taken[gid] = true
      units[#units + 1] = { gid, redis.call("HGET", unit, gid) or "", redis.call("HGET", uagg, gid) or "",
                            redis.call("HGET", uver, gid) or "" }
    end
  end
end
at = at + n
local m = tonumber(ARGV[at])
at = at + 1
local gone = {}
if m > 0 then gone = redis.call("HMGET", erased, unpack(ARGV, at, at + m - 1)) end
at = at + m
local seen = {}
for i = at, #ARGV do seen[#seen + 1] = false end
if #ARGV >= at then -- one HMGET per day of applied ids, over every event id of the batch
  for b = 7, #KEYS do
    if redis.call("EXISTS", KEYS[b]) == 1 then
      local found = redis.call("HMGET", KEYS[b], unpack(ARGV, at, #ARGV))
      for j, v in ipairs(found) do
        if v and not seen[j] then seen[j] = v end
      end
    end
  end
end
return { values, units, gone, redis.call("HGET", meta, "erase_max") or false, seen }
