-- idstream: helpers every script starts with (streams/redis_store.py prepends this file to each one,
-- since Redis scripts cannot share code). Scripts only load and commit: every decision is made by the
-- engine in Python (identity/), none here.

local RS, GS = "\30", "\29"

-- byte order, whatever the server's locale (Lua's < on strings uses strcoll)
local function lt(a, b)
  if a == b then return false end
  local m = math.min(#a, #b)
  for i = 1, m do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

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

-- the live profile id behind a profile id, following the redirects of retired ids (prof, redirect: keys)
local function live_pid(prof, redirect, pid)
  for _ = 1, 64 do
    if redis.call("HEXISTS", prof, pid) == 1 then return pid end
    pid = redis.call("HGET", redirect, pid)
    if not pid then return nil end
  end
  return nil
end
