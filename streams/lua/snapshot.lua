-- idstream: the profiles a batch changed, and the versions of their updates, in one atomic step.
--
-- KEYS: pidx person redirect agg meta
-- ARGV: profile ids (live or retired: retired ones follow their redirects)
-- Returns {last_version, {{requested, live}...}, {{record, {aggregate or false per node}}...}}: one record per
-- distinct live person, in the order first reached. The version counter moves by that number inside the
-- same script that reads the records, so a higher version always carries a later state: with several
-- workers, a subscriber that keeps the highest version per profile keeps the newest profile.

local RS, GS = "\30", "\29"
local pidx, person, redirect, agg, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

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

local live_of, records, taken = {}, {}, {}
for _, requested in ipairs(ARGV) do
  local pid, handle = requested, nil
  for _ = 1, 64 do
    handle = redis.call("HGET", pidx, pid)
    if handle then break end
    pid = redis.call("HGET", redirect, pid)
    if not pid then break end
  end
  if handle then
    live_of[#live_of + 1] = { requested, pid }
    if not taken[pid] then
      taken[pid] = true
      local record = redis.call("HGET", person, handle)
      local nodes = split(split(record, RS)[5], GS)
      local aggs = {}
      for i = 1, #nodes, 1000 do
        local part = redis.call("HMGET", agg, unpack(nodes, i, math.min(i + 999, #nodes)))
        for _, a in ipairs(part) do aggs[#aggs + 1] = a end
      end
      records[#records + 1] = { record, aggs }
    end
  end
end
local last = 0
if #records > 0 then last = redis.call("HINCRBY", meta, "version", #records) end
return { last, live_of, records }
