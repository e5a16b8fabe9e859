-- idstream: the profiles a batch changed, and the versions of their updates, in one atomic step.
--
-- KEYS: prof redirect meta
-- ARGV[1]: how many more versions to reserve (for erased profiles, which have no record to read)
-- ARGV[2..]: profile ids (live or retired: retired ones follow their redirects)
-- Returns {last_version, {{requested, live}...}, {{live, record}...}}: one record per distinct live person,
-- in the order first reached. The version counter moves by that number inside the same script that reads
-- the records, so a higher version always carries a later state: with several workers, a subscriber that
-- keeps the highest version per profile keeps the newest profile.

local prof, redirect, meta = KEYS[1], KEYS[2], KEYS[3]
local live_of, records, taken = {}, {}, {}
local extra = tonumber(ARGV[1])
for i = 2, #ARGV do
  local requested = ARGV[i]
  local pid = live_pid(prof, redirect, requested)
  if pid then
    live_of[#live_of + 1] = { requested, pid }
    if not taken[pid] then
      taken[pid] = true
      records[#records + 1] = { pid, redis.call("HGET", prof, pid) }
    end
  end
end
local last = 0
if #records + extra > 0 then last = redis.call("HINCRBY", meta, "version", #records + extra) end
return { last, live_of, records }
