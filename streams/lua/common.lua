-- idstream: helpers every script starts with (streams/redis_store.py prepends this file to each one,
-- since Redis scripts cannot share code).

local RS, GS = "\30", "\29"

local function split(s, sep)
  local out = {}
  if s == nil or s == false or s == "" then return out end
  local start = 1
  while true do
    local i = string.find(s, sep, start, true)
    if i == nil then out[#out + 1] = string.sub(s, start); return out end
    out[#out + 1] = string.sub(s, start, i - 1)
    start = i + 1
  end
end

-- the handle of the live person behind a profile id, following the redirects of retired ids
local function live_handle(pidx, redirect, pid)
  for _ = 1, 64 do
    local handle = redis.call("HGET", pidx, pid)
    if handle then return handle, pid end
    pid = redis.call("HGET", redirect, pid)
    if not pid then return nil end
  end
  return nil
end

-- the golden aggregate (or false) of every identifier of a stored person record
local function person_aggs(agg, record)
  local nodes = split(split(record, RS)[5], GS)
  local aggs = {}
  for i = 1, #nodes, 1000 do
    local part = redis.call("HMGET", agg, unpack(nodes, i, math.min(i + 999, #nodes)))
    for _, a in ipairs(part) do aggs[#aggs + 1] = a end
  end
  return aggs
end

