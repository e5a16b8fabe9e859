-- idstream: read one person in one round trip (the lookup API and the store's readers).
--
-- KEYS: idx prof redirect
-- ARGV[1]: "node" or "pid"; ARGV[2]: a node ("kind\31value") or a profile id (retired ids follow redirects)
-- Returns false when nothing is found, else {profile record, live profile id, flag ("", "s" shared or
-- "c" contested), {live ids of the other persons with a claim}, how many others there are in all ("" when
-- every one is listed)}. The worker wrote all of it as served (a long list capped, the first ranked first):
-- identifier values are only ever compared as data here.

local idx, prof, redirect = KEYS[1], KEYS[2], KEYS[3]
local mode, arg = ARGV[1], ARGV[2]
local pid, flag, others, total = nil, "", {}, ""
if mode == "pid" then
  pid = live_pid(prof, redirect, arg)
elseif mode == "node" then
  local v = redis.call("HGET", idx, arg)
  if not v then return false end
  local fields = split(v, RS)
  pid, flag, total = fields[2], fields[3] or "", fields[5] or ""
  local seen = { [pid] = true }
  for _, other in ipairs(split(fields[4], GS)) do
    local live = live_pid(prof, redirect, other)
    if live and not seen[live] then
      seen[live] = true
      others[#others + 1] = live
    end
  end
else
  return redis.error_reply("idstream: unknown read mode")
end
if not pid then return false end
local record = redis.call("HGET", prof, pid)
if not record then return false end
return { record, pid, flag, others, total }
