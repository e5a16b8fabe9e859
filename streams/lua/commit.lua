-- idstream: commit a batch the engine resolved, if what it read is unchanged (compare-and-set).
--
-- KEYS: idx unit uagg uver prof redirect erased meta lease seen-bucket-today
-- ARGV: lease token ("" for none), erase max as read ("" for none), seen ttl seconds,
--       then counted sections (a count, then its items):
--         checks: unit versions (gid, version pairs); nodes that must still be absent. (An event applied by
--         another worker meanwhile changed a unit this batch read, or a node it read as absent: no event id
--         needs checking again. One that changed nothing, unresolved, is harmless to apply twice.)
--         writes: for idx unit uagg prof redirect erased seen-today: HSET pairs, then HDEL fields;
--                 units to stamp with this commit's version, units to drop; new erase max (""); reorders;
--                 how many profile records were written (update versions to reserve for them)
-- Returns {1, last reserved version} when written, or {0, reason} when something read has changed (nothing
-- written).

local idx, unit, uagg, uver, prof, redirect, erased, meta, lease, today =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local at = 4
local function count()
  local n = tonumber(ARGV[at])
  at = at + 1
  return n
end

local holder = redis.call("GET", lease)
if holder and holder ~= ARGV[1] then return { 0, "serial" } end
if (redis.call("HGET", meta, "erase_max") or "") ~= ARGV[2] then return { 0, "erasure" } end
local n = count()
for _ = 1, n do
  if (redis.call("HGET", uver, ARGV[at]) or "") ~= ARGV[at + 1] then return { 0, "unit" } end
  at = at + 2
end
n = count()
for _ = 1, n do
  if redis.call("HEXISTS", idx, ARGV[at]) == 1 then return { 0, "identifier" } end
  at = at + 1
end

for _, key in ipairs({ idx, unit, uagg, prof, redirect, erased, today }) do
  n = count()
  if key == erased then -- an erasure mark only ever moves to newer data (two erasures of one value)
    for i = at, at + 2 * n - 1, 2 do
      local held = redis.call("HGET", erased, ARGV[i])
      if not held or lt(held, ARGV[i + 1]) then redis.call("HSET", erased, ARGV[i], ARGV[i + 1]) end
    end
  else
    for i = at, at + 2 * n - 1, 2000 do
      redis.call("HSET", key, unpack(ARGV, i, math.min(i + 1999, at + 2 * n - 1)))
    end
  end
  at = at + 2 * n
  n = count()
  for i = at, at + n - 1, 1000 do
    redis.call("HDEL", key, unpack(ARGV, i, math.min(i + 999, at + n - 1)))
  end
  at = at + n
end
local stamp = redis.call("HINCRBY", meta, "stamp", 1)
n = count()
for _ = 1, n do
  redis.call("HSET", uver, ARGV[at], stamp)
  at = at + 1
end
n = count()
for i = at, at + n - 1, 1000 do
  redis.call("HDEL", uver, unpack(ARGV, i, math.min(i + 999, at + n - 1)))
end
at = at + n
if ARGV[at] ~= "" then redis.call("HSET", meta, "erase_max", ARGV[at]) end
if tonumber(ARGV[at + 1]) > 0 then redis.call("HINCRBY", meta, "reorders", ARGV[at + 1]) end
if redis.call("TTL", today) < 0 and redis.call("EXISTS", today) == 1 then redis.call("EXPIRE", today, ARGV[3]) end
-- the versions of the profile updates of what was just written, taken in the same step as the write
local written = tonumber(ARGV[at + 2])
local version = 0
if written > 0 then version = redis.call("HINCRBY", meta, "version", written) end
return { 1, version }
