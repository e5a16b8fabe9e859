-- idstream: apply a batch of normalized touch events to the identity graph, atomically.
--
-- A line-by-line port of identity.graph.IdentityGraph.apply (read that module's docstring for the
-- semantics); the contract tests run the same suite against both. Every key is declared in KEYS and
-- shares one hash tag, so the script is Cluster-legal. Identifier values only ever appear as hash
-- *fields* and values, never in key names or code.
--
-- KEYS: seen owner person pidx redirect gparent group ev born hparent hkey hsize agg meta
-- ARGV[1]: policy JSON {"limits": {kind: n}, "anchors": [kind], "keep": n}
-- ARGV[2]: batch JSON [{"e": event_id, "k": key, "m": manual, "ids": [node, strongest first],
--                      "sig": signature, "c": contribution, "x": evidence meta JSON}]
-- Nodes are "kind\31value". Keys and ranks compare as bytes (see identity.touch.key_text).
-- Returns JSON [{"s": status, "p": profile id, "ch": [[kind, pid, merged_from, split_from]],
--                "cf": [[kind, limit, pid, other_pid, node]]}]

local FS = "\31" -- RS and GS come from common.lua
local K = {
  seen = KEYS[1], owner = KEYS[2], person = KEYS[3], pidx = KEYS[4], redirect = KEYS[5],
  gparent = KEYS[6], group = KEYS[7], ev = KEYS[8], born = KEYS[9], hparent = KEYS[10],
  hkey = KEYS[11], hsize = KEYS[12], agg = KEYS[13], meta = KEYS[14],
}
local policy = cjson.decode(ARGV[1])
local LIMITS = policy.limits
local ANCHORS = policy.anchors
local KEEP = policy.keep
local batch = cjson.decode(ARGV[2])

-- ----------------------------------------------------------------- helpers

-- byte order, independent of the server's LC_COLLATE (Lua's < uses strcoll)
local function lt(a, b)
  if a == b then return false end
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local function kind_of(node) return string.sub(node, 1, string.find(node, FS, 1, true) - 1) end

local function sorted_keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out, lt)
  return out
end

local function netstring(s) return #s .. ":" .. s .. "," end

local function profile_id_for(event_id, node)
  local i = string.find(node, FS, 1, true)
  local payload = netstring(event_id) .. netstring(string.sub(node, 1, i - 1)) .. netstring(string.sub(node, i + 1))
  return "p_" .. string.sub(redis.sha1hex(payload), 1, 20)
end

-- a write-back cache over one hash: reads once, writes at the end
local function cache(key) return { key = key, v = {}, d = {} } end
local C = {}
for name, key in pairs(K) do
  if name ~= "seen" and name ~= "meta" then C[name] = cache(key) end
end
local function get(c, f)
  local v = c.v[f]
  if v == nil then
    v = redis.call("HGET", c.key, f)
    c.v[f] = v
  end
  if v == false then return nil end
  return v
end
local function put(c, f, v) c.v[f] = v; c.d[f] = true end
local function del(c, f) c.v[f] = false; c.d[f] = true end
local function flush(c)
  local sets, dels = {}, {}
  for f in pairs(c.d) do
    local v = c.v[f]
    if v == false then dels[#dels + 1] = f else sets[#sets + 1] = f; sets[#sets + 1] = v end
  end
  for i = 1, #sets, 4000 do
    redis.call("HSET", c.key, unpack(sets, i, math.min(i + 3999, #sets)))
  end
  for i = 1, #dels, 4000 do
    redis.call("HDEL", c.key, unpack(dels, i, math.min(i + 3999, #dels)))
  end
end

-- ----------------------------------------------------------------- persons
-- A person is stored under a *handle* (the id it was created with), so that relabelling on a merge
-- touches only the smaller node set even when the survivor's id came from the other side.

local P = {}      -- handle -> person table
local Pstate = {} -- handle -> "live" | "dead" (written at the end)

local function encode_person(p)
  local counts = {}
  for kind, n in pairs(p.counts) do counts[#counts + 1] = kind .. ":" .. n end
  return table.concat({ p.id, p.created, p.hroot, table.concat(counts, GS), table.concat(p.nodes, GS) }, RS)
end

local function load_person(handle)
  local p = P[handle]
  if p ~= nil then return p end
  local raw = get(C.person, handle)
  if raw == nil then error("idstream: no person record for handle " .. handle) end
  local f = split(raw, RS)
  p = { handle = handle, id = f[1], created = f[2], hroot = f[3], counts = {}, nodes = split(f[5], GS) }
  for _, pair in ipairs(split(f[4], GS)) do
    local i = string.find(pair, ":", 1, true)
    p.counts[string.sub(pair, 1, i - 1)] = tonumber(string.sub(pair, i + 1))
  end
  P[handle] = p
  return p
end

local function owner_of(node)
  local handle = get(C.owner, node)
  if handle == nil then return nil end
  return load_person(handle)
end

local function touch_person(p) Pstate[p.handle] = "live" end

-- ----------------------------------------------------------------- counters

local stats = { reorders = 0, late = 0 }

-- ----------------------------------------------------------------- history forest

local function root_at(node, key)
  while true do
    local up = get(C.hparent, node)
    if up == node or not lt(get(C.hkey, node), key) then return node end
    node = up
  end
end

local function already_joined(ids, key)
  for _, node in ipairs(ids) do
    local b = get(C.born, node)
    if b == nil or not lt(b, key) then return false end
  end
  local first = root_at(ids[1], key)
  for i = 2, #ids do
    if root_at(ids[i], key) ~= first then return false end
  end
  return true
end

-- ----------------------------------------------------------------- resolution

local function add_node(p, node, key)
  p.nodes[#p.nodes + 1] = node
  local kind = kind_of(node)
  p.counts[kind] = (p.counts[kind] or 0) + 1
  put(C.owner, node, p.handle)
  put(C.born, node, key)
  if node ~= p.hroot then
    put(C.hparent, node, p.hroot)
    put(C.hkey, node, key)
  end
  put(C.hsize, p.hroot, tostring(tonumber(get(C.hsize, p.hroot)) + 1))
  touch_person(p)
end

local function new_person(ev, node, step)
  local pid = profile_id_for(ev.e, node)
  local p = { handle = pid, id = pid, created = ev.k, hroot = node, counts = {}, nodes = {} }
  P[pid] = p
  put(C.pidx, pid, pid)
  del(C.redirect, pid)
  put(C.hparent, node, node)
  put(C.hsize, node, "0")
  add_node(p, node, ev.k)
  step.created[#step.created + 1] = p
  return p
end

-- the first kind (bytewise) that both hold and would exceed its limit together
local function refusal(a, b)
  for _, kind in ipairs(sorted_keys(a.counts)) do
    local limit = LIMITS[kind]
    local nb = b.counts[kind]
    if limit ~= nil and nb ~= nil and a.counts[kind] + nb > limit then return kind, limit end
  end
  return nil
end

local function anchored(p)
  for _, kind in ipairs(ANCHORS) do
    if (p.counts[kind] or 0) > 0 then return true end
  end
  return false
end

local function survivor_is_first(a, b)
  local aa, ba = anchored(a), anchored(b)
  if aa ~= ba then return aa end
  if a.created ~= b.created then return lt(a.created, b.created) end
  return lt(a.id, b.id)
end

local function merge(a, b, step, key)
  local survivor, retired = a, b
  if not survivor_is_first(a, b) then survivor, retired = b, a end
  local survivor_id, survivor_created, retired_id = survivor.id, survivor.created, retired.id
  local big, small = a, b
  if #a.nodes < #b.nodes then big, small = b, a end
  for _, node in ipairs(small.nodes) do
    put(C.owner, node, big.handle)
    big.nodes[#big.nodes + 1] = node
  end
  for kind, n in pairs(small.counts) do big.counts[kind] = (big.counts[kind] or 0) + n end
  big.id, big.created = survivor_id, survivor_created
  local ha, hb = tonumber(get(C.hsize, a.hroot)), tonumber(get(C.hsize, b.hroot))
  local high, low = a.hroot, b.hroot
  if ha < hb then high, low = b.hroot, a.hroot end
  put(C.hparent, low, high)
  put(C.hkey, low, key)
  put(C.hsize, high, tostring(ha + hb))
  del(C.hsize, low)
  big.hroot = high
  Pstate[small.handle] = "dead"
  P[small.handle] = nil
  touch_person(big)
  del(C.pidx, retired_id)
  put(C.pidx, survivor_id, big.handle)
  put(C.redirect, retired_id, survivor_id)
  for older, into in pairs(step.absorbed) do
    if into == retired_id then step.absorbed[older] = survivor_id end
  end
  step.absorbed[retired_id] = survivor_id
  return big
end

local function apply_in_order(ev)
  local step = { created = {}, absorbed = {}, conflicts = {} }
  local acc = nil
  local fresh = {}
  local refused_ids = {} -- one conflict per refused person, not per identifier of it
  for _, node in ipairs(ev.ids) do
    local p = owner_of(node)
    if p == nil then
      fresh[#fresh + 1] = node
    elseif acc == nil then
      acc = p
    elseif p ~= acc and not refused_ids[p.id] then
      local kind, limit = nil, nil
      if not ev.m then kind, limit = refusal(acc, p) end
      if kind == nil then
        acc = merge(acc, p, step, ev.k)
      else
        refused_ids[p.id] = true
        step.conflicts[#step.conflicts + 1] = { kind, limit, acc.id, p.id, node }
      end
    end
  end
  for _, node in ipairs(fresh) do
    if acc == nil then
      acc = new_person(ev, node, step)
    else
      local kind = kind_of(node)
      local cap = LIMITS[kind]
      if ev.m or cap == nil or (acc.counts[kind] or 0) < cap then
        add_node(acc, node, ev.k)
      else
        local other = new_person(ev, node, step)
        step.conflicts[#step.conflicts + 1] = { kind, cap, acc.id, other.id, node }
      end
    end
  end
  return step
end

-- ----------------------------------------------------------------- evidence groups

local G = {} -- root -> group table {max, nodes, sigs}; false once removed

local function load_group(root)
  local g = G[root]
  if g ~= nil then return g end
  local f = split(get(C.group, root), RS)
  g = { max = f[1], nodes = split(f[2], GS), sigs = split(f[3], GS) }
  G[root] = g
  return g
end

local function find(node)
  while true do
    local up = get(C.gparent, node)
    if up == node then return node end
    local grand = get(C.gparent, up)
    put(C.gparent, node, grand)
    node = grand
  end
end

local function encode_evidence(ev)
  return table.concat({ ev.k, ev.m and "1" or "0", table.concat(ev.ids, GS), ev.x or "" }, RS)
end

local function decode_evidence(sig, raw)
  local f = split(raw, RS)
  return { k = f[1], m = f[2] == "1", ids = split(f[3], GS), x = f[4], sig = sig, e = string.sub(f[1], 18) }
end

local function record(ev, roots)
  local fresh = {}
  for _, node in ipairs(ev.ids) do
    if get(C.gparent, node) == nil then fresh[#fresh + 1] = node end
  end
  local root, g
  local n = 0
  for _ in pairs(roots) do n = n + 1 end
  if n > 0 then
    for r in pairs(roots) do
      local rg = load_group(r)
      if g == nil or #rg.nodes > #g.nodes or (#rg.nodes == #g.nodes and lt(r, root)) then root, g = r, rg end
    end
    for r in pairs(roots) do
      if r ~= root then
        local absorbed = load_group(r)
        G[r] = false
        del(C.group, r)
        put(C.gparent, r, root)
        for _, node in ipairs(absorbed.nodes) do g.nodes[#g.nodes + 1] = node end
        for _, sig in ipairs(absorbed.sigs) do g.sigs[#g.sigs + 1] = sig end
      end
    end
    for _, node in ipairs(fresh) do g.nodes[#g.nodes + 1] = node end
  else
    root = fresh[1]
    g = { max = ev.k, nodes = fresh, sigs = {} }
    G[root] = g
  end
  for _, node in ipairs(fresh) do put(C.gparent, node, root) end
  local held = get(C.ev, ev.sig)
  if held == nil then
    g.sigs[#g.sigs + 1] = ev.sig
    put(C.ev, ev.sig, encode_evidence(ev))
  elseif lt(ev.k, decode_evidence(ev.sig, held).k) then
    put(C.ev, ev.sig, encode_evidence(ev))
  end
  if lt(g.max, ev.k) then g.max = ev.k end
end

local function roots_of(ids)
  local roots = {}
  for _, node in ipairs(ids) do
    if get(C.gparent, node) ~= nil then roots[find(node)] = true end
  end
  return roots
end

-- ----------------------------------------------------------------- outcomes

-- the id as it is after the event: a later merge in the same event may have retired it
local function live_id(pid)
  for _ = 1, 64 do
    if get(C.pidx, pid) ~= nil then return pid end
    local nxt = get(C.redirect, pid)
    if nxt == nil then return pid end
    pid = nxt
  end
  return pid
end

local function live(conflicts)
  for _, c in ipairs(conflicts) do
    c[3], c[4] = live_id(c[3]), live_id(c[4])
  end
  return conflicts
end

local function result(ev, step)
  local primary = owner_of(ev.ids[1]).id
  local created = {}
  for _, p in ipairs(step.created) do created[#created + 1] = p.id end
  local absorbed_any = next(step.absorbed) ~= nil
  if not absorbed_any and (#created == 0 or (#created == 1 and created[1] == primary)) then
    local kind = "updated"
    if #created == 1 then kind = "created" end
    return { s = "applied", p = primary, ch = { { kind, primary, {}, {} } }, cf = live(step.conflicts) }
  end
  local changes = {}
  local survivor = nil
  if absorbed_any then
    local _, into = next(step.absorbed)
    survivor = into
    changes[#changes + 1] = { "merged", survivor, sorted_keys(step.absorbed), {} }
  end
  table.sort(created, lt)
  local is_created = {}
  for _, pid in ipairs(created) do
    changes[#changes + 1] = { "created", pid, {}, {} }
    is_created[pid] = true
  end
  if not is_created[primary] and not (absorbed_any and primary == survivor) then
    changes[#changes + 1] = { "updated", primary, {}, {} }
  end
  return { s = "applied", p = primary, ch = changes, cf = live(step.conflicts) }
end

local function node_set(list)
  local s = {}
  for _, node in ipairs(list) do s[node] = true end
  return s
end

local function diff(before, after, ev)
  local old_owner = {}
  for pid, nodes in pairs(before) do
    for node in pairs(nodes) do old_owner[node] = pid end
  end
  local home = {}
  for pid, nodes in pairs(before) do
    if after[pid] == nil then
      local shares = {}
      for node in pairs(nodes) do
        local np = owner_of(node).id
        shares[np] = (shares[np] or 0) + 1
      end
      local best = nil
      for np, n in pairs(shares) do
        if best == nil or n > shares[best] or (n == shares[best] and lt(np, best)) then best = np end
      end
      home[pid] = best
      put(C.redirect, pid, best)
    end
  end
  local primary = owner_of(ev.ids[1]).id
  local changes = {}
  for _, pid in ipairs(sorted_keys(after)) do
    local nodes = after[pid]
    local sources = {}
    for node in pairs(nodes) do
      if old_owner[node] ~= nil then sources[old_owner[node]] = true end
    end
    local merged_from = {}
    for o, h in pairs(home) do
      if h == pid then merged_from[#merged_from + 1] = o end
    end
    table.sort(merged_from, lt)
    local split_set = {}
    for o in pairs(sources) do
      if o ~= pid and (after[o] ~= nil or home[o] ~= pid) then split_set[o] = true end
    end
    if before[pid] ~= nil then
      for node in pairs(before[pid]) do
        if not nodes[node] then split_set[pid] = true; break end
      end
    end
    local split_from = sorted_keys(split_set)
    local kind = nil
    if #split_from > 0 then
      kind = "split"
    elseif #merged_from > 0 then
      kind = "merged"
    elseif before[pid] == nil then
      kind = "created"
    else
      local same = true
      for node in pairs(nodes) do if not before[pid][node] then same = false; break end end
      if same then for node in pairs(before[pid]) do if not nodes[node] then same = false; break end end end
      if not same or pid == primary then kind = "updated" end
    end
    if kind ~= nil then changes[#changes + 1] = { kind, pid, merged_from, split_from } end
  end
  return changes
end

local function replay(ev, roots)
  stats.reorders = stats.reorders + 1
  local nodes, records = {}, {}
  for r in pairs(roots) do
    local g = load_group(r)
    G[r] = false
    del(C.group, r)
    for _, node in ipairs(g.nodes) do nodes[#nodes + 1] = node end
    for _, sig in ipairs(g.sigs) do
      records[sig] = decode_evidence(sig, get(C.ev, sig))
      del(C.ev, sig) -- re-filed below, into the groups the replay forms
    end
  end
  local held = records[ev.sig]
  if held == nil or lt(ev.k, held.k) then records[ev.sig] = ev end
  local before, gone = {}, {}
  for _, node in ipairs(nodes) do
    local p = owner_of(node)
    if gone[p.handle] == nil then
      gone[p.handle] = true
      before[p.id] = node_set(p.nodes)
      del(C.pidx, p.id)
    end
    del(C.owner, node)
    del(C.gparent, node)
    del(C.born, node)
    del(C.hparent, node)
    del(C.hkey, node)
    del(C.hsize, node)
  end
  for handle in pairs(gone) do -- only now: their other nodes were still being looked up above
    Pstate[handle] = "dead"
    P[handle] = nil
  end
  local ordered = {}
  for _, rec in pairs(records) do ordered[#ordered + 1] = rec end
  table.sort(ordered, function(x, y) return lt(x.k, y.k) end)
  local conflicts = {}
  for _, rec in ipairs(ordered) do
    local step = apply_in_order(rec)
    record(rec, roots_of(rec.ids))
    if rec == ev then conflicts = step.conflicts end
  end
  local after = {}
  for _, list in ipairs({ nodes, ev.ids }) do
    for _, node in ipairs(list) do
      local p = owner_of(node)
      if after[p.id] == nil then after[p.id] = node_set(p.nodes) end
    end
  end
  local changes = diff(before, after, ev)
  return { s = "reordered", p = owner_of(ev.ids[1]).id, ch = changes, cf = live(conflicts) }
end

-- ----------------------------------------------------------------- the golden fold

local AGG = {}
local function fold(node, c)
  local a = AGG[node]
  if a == nil then
    local raw = get(C.agg, node)
    if raw == nil then
      a = { a = {}, c = {}, pj = {}, pg = {}, r = {}, d = {} }
    else
      a = cjson.decode(raw)
    end
    AGG[node] = a
  end
  for name, payload in pairs(c.attrs) do
    local held = a.a[name]
    if held == nil or lt(held[1], c.rank) then a.a[name] = { c.rank, payload } end
  end
  if c.pts ~= nil then a.s = (a.s or 0) + c.pts end
  if c.deal ~= nil then
    local held = a.d[c.deal[1]]
    if held == nil or lt(held[1], c.k) then a.d[c.deal[1]] = { c.k, c.deal[2] } end
  end
  if c.type == nil then return end
  a.c[c.type] = (a.c[c.type] or 0) + 1
  if c.project ~= nil then a.pj[c.project] = (a.pj[c.project] or 0) + 1 end
  if c.page ~= nil then a.pg[c.page] = (a.pg[c.page] or 0) + 1 end
  local entry = { c.k, c.view }
  if a.f == nil or lt(c.k, a.f[1]) then a.f = entry end
  if a.l == nil or lt(a.l[1], c.k) then a.l = entry end
  if KEEP > 0 then
    local r = a.r
    local i = #r + 1
    while i > 1 and lt(c.k, r[i - 1][1]) do i = i - 1 end
    table.insert(r, i, entry)
    while #r > KEEP do table.remove(r, 1) end
  end
end

-- ----------------------------------------------------------------- apply

local function updated(ev, p)
  return { s = "applied", p = p.id, ch = { { "updated", p.id, {}, {} } }, cf = {} }
end

local SEEN = {} -- event ids first seen in this batch: added at the end, with everything else
local function seen_before(eid)
  if SEEN[eid] or redis.call("SISMEMBER", K.seen, eid) == 1 then return true end
  SEEN[eid] = true
  return false
end

local function apply(ev)
  if seen_before(ev.e) then
    local p = nil
    if #ev.ids > 0 then p = owner_of(ev.ids[1]) end
    return { s = "duplicate", p = p and p.id or nil, ch = {}, cf = {} }
  end
  if #ev.ids == 0 then return { s = "unresolved", ch = {}, cf = {} } end
  fold(ev.ids[1], ev.c)
  local person = owner_of(ev.ids[1])
  if person ~= nil then
    local g = load_group(find(ev.ids[1]))
    local held = get(C.ev, ev.sig)
    local held_key = held and decode_evidence(ev.sig, held).k
    if held_key ~= nil and lt(held_key, ev.k) then return updated(ev, person) end
    local together = held ~= nil
    if not together then
      together = true
      for _, node in ipairs(ev.ids) do
        local p = owner_of(node)
        if p ~= person then together = false; break end
      end
    end
    if together and (lt(g.max, ev.k) or already_joined(ev.ids, ev.k)) then
      if lt(g.max, ev.k) then g.max = ev.k else stats.late = stats.late + 1 end
      if held == nil then g.sigs[#g.sigs + 1] = ev.sig end
      put(C.ev, ev.sig, encode_evidence(ev))
      return updated(ev, person)
    end
  end
  local roots = roots_of(ev.ids)
  local in_order = true
  for r in pairs(roots) do
    if not lt(load_group(r).max, ev.k) then in_order = false; break end
  end
  if in_order then
    local step = apply_in_order(ev)
    record(ev, roots)
    return result(ev, step)
  end
  if already_joined(ev.ids, ev.k) then
    stats.late = stats.late + 1
    record(ev, roots)
    return updated(ev, owner_of(ev.ids[1]))
  end
  return replay(ev, roots)
end

local results = {}
for i, ev in ipairs(batch) do results[i] = apply(ev) end

-- ----------------------------------------------------------------- write back

for handle, state in pairs(Pstate) do
  if state == "live" then put(C.person, handle, encode_person(P[handle])) else del(C.person, handle) end
end
for root, g in pairs(G) do
  if g ~= false then put(C.group, root, table.concat({ g.max, table.concat(g.nodes, GS), table.concat(g.sigs, GS) }, RS)) end
end
for node, a in pairs(AGG) do put(C.agg, node, cjson.encode(a)) end
for _, c in pairs(C) do flush(c) end
local fresh_ids = {}
for eid in pairs(SEEN) do fresh_ids[#fresh_ids + 1] = eid end
for i = 1, #fresh_ids, 4000 do
  redis.call("SADD", K.seen, unpack(fresh_ids, i, math.min(i + 3999, #fresh_ids)))
end
if stats.reorders > 0 then redis.call("HINCRBY", K.meta, "reorders", stats.reorders) end
if stats.late > 0 then redis.call("HINCRBY", K.meta, "late_without_replay", stats.late) end
return cjson.encode(results)
