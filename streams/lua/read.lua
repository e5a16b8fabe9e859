-- idstream: read one person in one round trip (the lookup API and the store's readers).
--
-- KEYS: owner person pidx redirect gparent group ev agg shared  (the graph's keys; see resolve.lua)
-- ARGV[1]: "node" or "pid"
-- ARGV[2]: a node ("kind\31value") or a profile id (retired ids follow their redirects)
-- Returns false when nothing is found, else {person record, {aggregate or false per node}, {contesting ids},
-- shared (1 or 0)}.
--
-- Contesting ids (node mode only) are the live ids of the persons whose strongest identifier appeared
-- with the node on an evidence event while the policy kept the two persons apart: see the "contested
-- identifiers" paragraph of identity/graph.py. For a shared identifier they are the persons of every
-- identifier seen with it on observed evidence. Identifier values are only ever compared as data.

local SIG_FLAG, SIG_SEP = "\28", "\27"
local owner, person, pidx, redirect, gparent, group, ev, agg, shared =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]

local function field(record, n) return split(record, RS)[n] end

local mode, arg = ARGV[1], ARGV[2]
local handle
local others = {}
local is_shared = 0

if mode == "pid" then
  handle = live_handle(pidx, redirect, arg)
  if not handle then return false end
elseif mode == "node" then
  handle = redis.call("HGET", owner, arg)
  if not handle then return false end
  local root = arg
  while true do
    local up = redis.call("HGET", gparent, root)
    if not up or up == root then break end
    root = up
  end
  if redis.call("HEXISTS", shared, arg) == 1 then is_shared = 1 end
  local needle = SIG_SEP .. arg .. SIG_SEP
  for _, sig in ipairs(split(field(redis.call("HGET", group, root), 3), GS)) do
    local flag = string.find(sig, SIG_FLAG, 1, true)
    local mode = string.sub(sig, 1, flag - 1)
    if mode ~= "2" and string.find(SIG_SEP .. string.sub(sig, flag + 1) .. SIG_SEP, needle, 1, true) then
      local ids = split(field(redis.call("HGET", ev, sig), 3), GS)
      if is_shared == 1 then
        if mode == "0" then
          for _, other in ipairs(ids) do
            if other ~= arg and redis.call("HEXISTS", shared, other) == 0 then
              local home = redis.call("HGET", owner, other)
              if home and home ~= handle then others[home] = true end
            end
          end
        end
      elseif ids[1] and ids[1] ~= arg then
        local home = redis.call("HGET", owner, ids[1])
        if home and home ~= handle then others[home] = true end
      end
    end
  end
else
  return redis.error_reply("idstream: unknown read mode")
end

local record = redis.call("HGET", person, handle)
if not record then return false end
local aggs = person_aggs(agg, record)
local contesting = {}
for home in pairs(others) do
  local rec = redis.call("HGET", person, home)
  if rec then contesting[#contesting + 1] = field(rec, 1) end
end
return { record, aggs, contesting, is_shared }
