-- idstream: apply a batch of normalized touch events to the identity graph, atomically.
--
-- A line-by-line port of identity.graph.IdentityGraph.apply (read that module's docstring for the
-- semantics); the contract tests run the same suite against both. Every key is declared in KEYS and
-- shares one hash tag, so the script is Cluster-legal. Identifier values only ever appear as hash
-- *fields* and values, never in key names or code.
--
-- KEYS: seen owner person pidx redirect gparent group ev born hparent hkey hsize agg meta shared apart erased efp
-- ARGV[1]: policy JSON {"limits": {kind: n}, "anchors": [kind], "keep": n, "path": n, "sp": {kind: n}, "sc": {kind: n},
--                       "pk": [personal kind], "prio": [kind, strongest first]}
-- ARGV[2]: batch JSON [{"e": event_id, "k": key, "m": mode (0 auto, 1 link, 2 unlink), "ids": [node, strongest
--                      first], "sig": signature, "c": contribution, "x": evidence meta JSON, "h": {node: keyed hash}
--                      (only when the event is not newer than the last erasure), "f": fingerprint (16 hex) .. source}]
--          or one erasure [{"op": "erase", "e", "k", "ids": [requested node], "nodes": [every node to erase],
--                          "h": {node: keyed hash}, "f"}]
-- Nodes are "kind\31value". Keys and ranks compare as bytes (see identity.touch.key_text).
-- Returns JSON {"r": [{"s": status, "p": profile id, "ch": [[kind, pid, merged_from, split_from, moved]],
--                      "cf": [[kind, limit, pid, other_pid, node, reason]], "sh": [newly shared node],
--                      "dc": source of the first event, when a duplicate event id came with other content}],
--               "g": identifiers in the largest component (evidence group) the batch wrote}
--         or {"stale": erase_max} when an event older than the last erasure came without hashes (nothing written)
--         or {"retry": true} when the persons to erase changed since they were read (nothing written)

local FS = "\31" -- RS and GS come from common.lua
local SIG_FLAG, SIG_SEP = "\28", "\27"
local K = {
  seen = KEYS[1], owner = KEYS[2], person = KEYS[3], pidx = KEYS[4], redirect = KEYS[5],
  gparent = KEYS[6], group = KEYS[7], ev = KEYS[8], born = KEYS[9], hparent = KEYS[10],
  hkey = KEYS[11], hsize = KEYS[12], agg = KEYS[13], meta = KEYS[14], shared = KEYS[15],
  apart = KEYS[16], erased = KEYS[17], efp = KEYS[18],
}
local policy = cjson.decode(ARGV[1])
local LIMITS = policy.limits
local ANCHORS = policy.anchors
local KEEP = policy.keep
local PATH = policy.path
local SP, SC, PK, PRIO = policy.sp, policy.sc, {}, {}
for _, kind in ipairs(policy.pk) do PK[kind] = true end
for i, kind in ipairs(policy.prio) do PRIO[kind] = i end
local NPRIO = #policy.prio + 1
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

local function profile_id_for(event_id, node, shared)
  local i = string.find(node, FS, 1, true)
  local payload = netstring(event_id) .. netstring(string.sub(node, 1, i - 1)) .. netstring(string.sub(node, i + 1))
  if shared then payload = payload .. netstring("shared") end
  return "p_" .. string.sub(redis.sha1hex(payload), 1, 20)
end

-- a write-back cache over one hash: reads once, writes at the end
local function cache(key) return { key = key, v = {}, d = {} } end
local C = {}
for name, key in pairs(K) do
  if name ~= "seen" and name ~= "meta" and name ~= "erased" and name ~= "efp" then C[name] = cache(key) end
end
-- only an optimization: no unlink was ever recorded, so no merge needs the check
local APART_ANY = redis.call("HLEN", K.apart) > 0
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

local function new_person(ev, node, step, named_by, shared)
  local pid = profile_id_for(ev.e, named_by or node, shared)
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

local function apart_list(node)
  local raw = get(C.apart, node)
  if raw == nil then return nil end
  return split(raw, GS)
end

-- did a manager say a node of a and a node of b are different people?
local function apart_between(a, b)
  local small, big = a, b
  if #a.nodes > #b.nodes then small, big = b, a end
  for _, node in ipairs(small.nodes) do
    local others = apart_list(node)
    if others ~= nil then
      for _, m in ipairs(others) do
        if owner_of(m) == big then return true end
      end
    end
  end
  return false
end

local function apart_from(node, p)
  local others = apart_list(node)
  if others == nil then return false end
  for _, m in ipairs(others) do
    if owner_of(m) == p then return true end
  end
  return false
end

local function apply_in_order(ev)
  local step = { created = {}, absorbed = {}, conflicts = {} }
  if ev.m == 2 then -- a statement that these are different people: it links nothing
    for _, node in ipairs(ev.ids) do
      if owner_of(node) == nil then new_person(ev, node, step) end
    end
    return step
  end
  local manual = ev.m == 1
  local acc = nil
  local fresh = {}
  local refused_ids = {} -- one conflict per refused person, not per identifier of it
  for _, node in ipairs(ev.ids) do
    local p = owner_of(node)
    if not manual and get(C.shared, node) ~= nil then -- links nothing; a person of its own
      if p == nil then new_person(ev, node, step, nil, true) end
    elseif p == nil then
      fresh[#fresh + 1] = node
    elseif acc == nil then
      acc = p
    elseif p ~= acc and not refused_ids[p.id] then
      local kind, limit, reason = nil, nil, nil
      if APART_ANY and apart_between(acc, p) then
        kind, limit, reason = kind_of(node), 0, "unlinked"
      elseif not manual then
        kind, limit = refusal(acc, p)
        reason = "limit_exceeded"
      end
      if kind == nil then
        acc = merge(acc, p, step, ev.k)
      else
        refused_ids[p.id] = true
        step.conflicts[#step.conflicts + 1] = { kind, limit, acc.id, p.id, node, reason }
      end
    end
  end
  for _, node in ipairs(fresh) do
    if acc == nil then -- named after the event's strongest identifier even if shared now: a split keeps the id
      acc = new_person(ev, node, step, ev.ids[1], false)
    else
      local kind = kind_of(node)
      local cap = LIMITS[kind]
      if APART_ANY and apart_from(node, acc) then
        local other = new_person(ev, node, step)
        step.conflicts[#step.conflicts + 1] = { kind, 0, acc.id, other.id, node, "unlinked" }
      elseif manual or cap == nil or (acc.counts[kind] or 0) < cap then
        add_node(acc, node, ev.k)
      else
        local other = new_person(ev, node, step)
        step.conflicts[#step.conflicts + 1] = { kind, cap, acc.id, other.id, node, "limit_exceeded" }
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
  return table.concat({ ev.k, tostring(ev.m), table.concat(ev.ids, GS), ev.x or "" }, RS)
end

local function decode_evidence(sig, raw)
  local f = split(raw, RS)
  return { k = f[1], m = tonumber(f[2]), ids = split(f[3], GS), x = f[4], sig = sig, e = string.sub(f[1], 18) }
end

-- the signature of an identifier set (see streams/redis_store.py)
local function signature(mode, ids)
  local sorted = {}
  for i, node in ipairs(ids) do sorted[i] = node end
  table.sort(sorted, lt)
  return tostring(mode) .. SIG_FLAG .. table.concat(sorted, SIG_SEP)
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

-- ----------------------------------------------------------------- shared identifiers and unlinks
-- A port of identity/shared.py (read its docstring) and of IdentityGraph._constrain.

local function kind_before(a, b) -- identity.policy.ResolutionPolicy.kind_rank(a) < kind_rank(b)
  local ra, rb = PRIO[a] or NPRIO, PRIO[b] or NPRIO
  if ra ~= rb then return ra < rb end
  if PRIO[a] == nil then return lt(a, b) end
  return false
end

local function shared_identifiers(records)
  local nbrs, degree, order = {}, {}, {}
  for _, r in ipairs(records) do
    if r.m == 0 and #r.ids > 1 then
      for _, x in ipairs(r.ids) do
        local kind = kind_of(x)
        if SP[kind] ~= nil or SC[kind] ~= nil then
          local seen = nbrs[x]
          if seen == nil then
            seen = {}
            nbrs[x], degree[x] = seen, 0
            order[#order + 1] = x
          end
          for _, y in ipairs(r.ids) do
            if y ~= x and not seen[y] then
              seen[y] = true
              degree[x] = degree[x] + 1
            end
          end
        end
      end
    end
  end
  local cands = {}
  for _, x in ipairs(order) do
    local kind = kind_of(x)
    local least = SP[kind]
    if SC[kind] ~= nil and (least == nil or SC[kind] < least) then least = SC[kind] end
    if degree[x] > least then cands[#cands + 1] = x end
  end
  local shared = {}
  if #cands == 0 then return shared end
  local links = {}
  for _, r in ipairs(records) do
    if r.m ~= 2 and #r.ids > 1 then links[#links + 1] = r.ids end
  end
  while true do
    local best, found = nil, {}
    for _, x in ipairs(cands) do
      if not shared[x] then
        local parent = {}
        local function find_root(n)
          while true do
            local up = parent[n]
            if up == n then return n end
            local grand = parent[up]
            parent[n] = grand
            n = grand
          end
        end
        for _, ids in ipairs(links) do
          local first = nil
          for _, n in ipairs(ids) do
            if n ~= x and not shared[n] then
              if parent[n] == nil then parent[n] = n end
              if first == nil then
                first = find_root(n)
              else
                local other = find_root(n)
                if other ~= first then parent[other] = first end
              end
            end
          end
        end
        local holders = {}
        for n in pairs(parent) do
          local r = find_root(n)
          if PK[kind_of(n)] then holders[r] = true elseif holders[r] == nil then holders[r] = false end
        end
        local clusters, nclusters, persons, claimed = {}, 0, 0, false
        for y in pairs(nbrs[x]) do
          if PK[kind_of(y)] then claimed = true end
          if not shared[y] then
            local r = y
            if parent[y] ~= nil then r = find_root(y) end
            if not clusters[r] then
              clusters[r] = true
              nclusters = nclusters + 1
              local holds = holders[r]
              if holds == nil then holds = PK[kind_of(r)] == true end
              if holds then persons = persons + 1 end
            end
          end
        end
        local kind = kind_of(x)
        local max_persons, max_clusters = SP[kind], SC[kind]
        if claimed then max_clusters = nil end
        local excess = 0
        if max_persons ~= nil and persons - max_persons > excess then excess = persons - max_persons end
        if max_clusters ~= nil and nclusters - max_clusters > excess then excess = nclusters - max_clusters end
        if excess > 0 then
          local rank = { excess, kind, nclusters, degree[x] }
          local better, same = false, false
          if best == nil then
            better = true
          elseif rank[1] ~= best[1] then
            better = rank[1] > best[1]
          elseif kind_before(rank[2], best[2]) then
            better = true
          elseif kind_before(best[2], rank[2]) then
            better = false
          elseif rank[3] ~= best[3] then
            better = rank[3] > best[3]
          elseif rank[4] ~= best[4] then
            better = rank[4] > best[4]
          else
            same = true
          end
          if better then
            best, found = rank, { x }
          elseif same then
            found[#found + 1] = x
          end
        end
      end
    end
    if #found == 0 then return shared end
    for _, x in ipairs(found) do shared[x] = true end
  end
end

local function group_records(roots)
  local records, nodes = {}, {}
  for r in pairs(roots) do
    local g = load_group(r)
    for _, sig in ipairs(g.sigs) do records[#records + 1] = decode_evidence(sig, get(C.ev, sig)) end
    for _, node in ipairs(g.nodes) do nodes[#nodes + 1] = node end
  end
  return records, nodes
end

-- would filing this new evidence change which identifiers of its group are shared?
local function shared_shift(ev, roots)
  local records, nodes = group_records(roots)
  records[#records + 1] = ev
  local now = shared_identifiers(records)
  local before = 0
  for _, node in ipairs(nodes) do
    if get(C.shared, node) ~= nil then
      if not now[node] then return true end
      before = before + 1
    end
  end
  local after = 0
  for _ in pairs(now) do after = after + 1 end
  return after ~= before
end

local function unlinked_among(ids)
  if not APART_ANY then return false end
  local present = {}
  for _, node in ipairs(ids) do present[node] = true end
  for _, node in ipairs(ids) do
    local others = apart_list(node)
    if others ~= nil then
      for _, m in ipairs(others) do
        if present[m] then return true end
      end
    end
  end
  return false
end

local function contains(list, item)
  for _, x in ipairs(list) do
    if x == item then return true end
  end
  return false
end

-- recompute the shared identifiers and the unlinked pairs of a group from its evidence
local function constrain(records, nodes)
  for _, node in ipairs(nodes) do
    if get(C.shared, node) ~= nil then del(C.shared, node) end
    if get(C.apart, node) ~= nil then del(C.apart, node) end
  end
  local shared = shared_identifiers(records)
  for node in pairs(shared) do put(C.shared, node, "1") end
  local links, apart = {}, {}
  for _, r in ipairs(records) do
    if r.m == 1 then links[#links + 1] = r end
  end
  for _, r in ipairs(records) do
    if r.m == 2 then
      for i = 1, #r.ids do
        for j = i + 1, #r.ids do
          local a, b = r.ids[i], r.ids[j]
          local lifted = false -- a manager's newer statement that they are one person lifts this one
          for _, link in ipairs(links) do
            if lt(r.k, link.k) and contains(link.ids, a) and contains(link.ids, b) then
              lifted = true
              break
            end
          end
          if not lifted then
            apart[a] = apart[a] or {}
            apart[a][b] = true
            apart[b] = apart[b] or {}
            apart[b][a] = true
          end
        end
      end
    end
  end
  for a, others in pairs(apart) do
    put(C.apart, a, table.concat(sorted_keys(others), GS))
    APART_ANY = true
  end
  return shared
end

local function status_of(roots, key)
  for r in pairs(roots) do
    if not lt(load_group(r).max, key) then return "reordered" end
  end
  return "applied"
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

local function diff(before, after, primary)
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
    if kind ~= nil then
      local moved = {}
      if kind == "split" then
        for node in pairs(nodes) do
          local was = old_owner[node]
          if was ~= nil and was ~= pid then moved[#moved + 1] = node end
        end
        table.sort(moved, lt)
      end
      changes[#changes + 1] = { kind, pid, merged_from, split_from, moved }
    end
  end
  return changes
end

-- take evidence groups apart: their nodes, their records (by signature) and who held what before
local function unfile(roots)
  local nodes, records = {}, {}
  for r in pairs(roots) do
    local g = load_group(r)
    G[r] = false
    del(C.group, r)
    for _, node in ipairs(g.nodes) do nodes[#nodes + 1] = node end
    for _, sig in ipairs(g.sigs) do
      records[sig] = decode_evidence(sig, get(C.ev, sig))
      del(C.ev, sig) -- re-filed by refile, into the groups the replay forms
    end
  end
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
  return nodes, records, before
end

local function listed(records)
  local out = {}
  for _, rec in pairs(records) do out[#out + 1] = rec end
  table.sort(out, function(x, y) return lt(x.k, y.k) end)
  return out
end

-- apply records in canonical order; the conflicts of ev
local function refile(ordered, ev)
  local conflicts = {}
  for _, rec in ipairs(ordered) do
    local step = apply_in_order(rec)
    record(rec, roots_of(rec.ids))
    if rec == ev then conflicts = step.conflicts end
  end
  return conflicts
end

local function replay(ev, roots, status)
  if status == "reordered" then stats.reorders = stats.reorders + 1 end
  local nodes, records, before = unfile(roots)
  local held = records[ev.sig]
  if held == nil or lt(ev.k, held.k) then records[ev.sig] = ev end
  local everything = {}
  for _, node in ipairs(nodes) do everything[#everything + 1] = node end
  for _, node in ipairs(ev.ids) do everything[#everything + 1] = node end
  local was_shared = {}
  for _, node in ipairs(everything) do
    if get(C.shared, node) ~= nil then was_shared[node] = true end
  end
  local ordered = listed(records)
  local shared = constrain(ordered, everything)
  local conflicts = refile(ordered, ev)
  local after = {}
  for _, node in ipairs(everything) do
    local p = owner_of(node)
    if after[p.id] == nil then after[p.id] = node_set(p.nodes) end
  end
  local primary = owner_of(ev.ids[1]).id
  local newly = {}
  for node in pairs(shared) do
    if not was_shared[node] then newly[#newly + 1] = node end
  end
  table.sort(newly, lt)
  return { s = status, p = primary, ch = diff(before, after, primary), cf = live(conflicts), sh = newly }
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
    if a.dc == nil then a.dc = {} end
    local born = a.dc[c.deal[1]]
    if born == nil or lt(c.k, born) then a.dc[c.deal[1]] = c.k end
  end
  if c.type == nil then return end
  if c.ch ~= nil then -- the attribution path: the earliest PATH marketing touches, ascending
    a.mn = (a.mn or 0) + 1
    if a.m == nil then a.m = {} end
    local m = a.m
    if #m < PATH or (#m > 0 and lt(c.k, m[#m][1])) then
      local i = #m + 1
      while i > 1 and lt(c.k, m[i - 1][1]) do i = i - 1 end
      table.insert(m, i, { c.k, c.ch[1], c.ch[2], c.ch[3] })
      while #m > PATH do table.remove(m) end
    end
    if c.lead ~= nil and (a.ld == nil or lt(c.k, a.ld)) then a.ld = c.k end
  end
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

local SEEN = {} -- event ids first seen in this batch -> fingerprint .. source: added at the end, with the rest
-- nil: a new event id; false: seen before with the same content (a redelivery), or before fingerprints were
-- kept; a string: the id was seen with other content (a reused event id), and this is the first one's source
local function seen_before(ev)
  local first = SEEN[ev.e]
  if first == nil then
    if redis.call("SISMEMBER", K.seen, ev.e) == 0 then
      SEEN[ev.e] = ev.f or ""
      return nil
    end
    first = redis.call("HGET", K.efp, ev.e)
    if not first then return false end
  end
  if ev.f == nil or first == "" or string.sub(first, 1, 16) == string.sub(ev.f, 1, 16) then return false end
  return string.sub(first, 17)
end

local function drop_erased(ev)
  if ev.h == nil then return end
  local kept = {}
  for _, node in ipairs(ev.ids) do
    local hash = ev.h[node]
    local erased = hash and redis.call("HGET", K.erased, hash)
    if not erased or lt(erased, ev.k) then kept[#kept + 1] = node end
  end
  if #kept ~= #ev.ids then
    ev.ids = kept
    ev.sig = signature(ev.m, kept)
  end
end

local function new_signature(ev)
  return get(C.ev, ev.sig) == nil
end

local function apply(ev)
  local dup = seen_before(ev)
  if dup ~= nil then
    local p = nil
    if #ev.ids > 0 then p = owner_of(ev.ids[1]) end
    return { s = "duplicate", p = p and p.id or nil, ch = {}, cf = {}, dc = dup or nil }
  end
  drop_erased(ev)
  if #ev.ids == 0 then return { s = "unresolved", ch = {}, cf = {} } end
  if ev.m == 2 then
    local roots = roots_of(ev.ids)
    return replay(ev, roots, status_of(roots, ev.k))
  end
  fold(ev.ids[1], ev.c)
  local person = owner_of(ev.ids[1])
  if person ~= nil and ev.m == 0 then
    local root = find(ev.ids[1])
    local g = load_group(root)
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
      local roots = { [root] = true }
      if held == nil and shared_shift(ev, roots) then return replay(ev, roots, status_of(roots, ev.k)) end
      if lt(g.max, ev.k) then g.max = ev.k else stats.late = stats.late + 1 end
      if held == nil then g.sigs[#g.sigs + 1] = ev.sig end
      put(C.ev, ev.sig, encode_evidence(ev))
      return updated(ev, person)
    end
  end
  local roots = roots_of(ev.ids)
  if ev.m == 1 and unlinked_among(ev.ids) then -- a newer link may lift an unlink
    return replay(ev, roots, status_of(roots, ev.k))
  end
  if new_signature(ev) and shared_shift(ev, roots) then return replay(ev, roots, status_of(roots, ev.k)) end
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
  return replay(ev, roots, "reordered")
end

-- ----------------------------------------------------------------- erasure

local function erase(ev)
  local targets, erased = {}, {}
  for _, node in ipairs(ev.ids) do
    erased[node] = true
    local p = owner_of(node)
    if p ~= nil then targets[p.id] = p end
  end
  for _, p in pairs(targets) do
    for _, node in ipairs(p.nodes) do erased[node] = true end
  end
  local roots = {}
  for node in pairs(erased) do
    if get(C.gparent, node) ~= nil then roots[find(node)] = true end
  end
  local nodes, records, before = unfile(roots)
  -- remembered as of the newest thing erased, so that no replayed older event brings it back
  local newest = ev.k
  for _, rec in pairs(records) do
    if lt(newest, rec.k) then
      for _, node in ipairs(rec.ids) do
        if erased[node] then newest = rec.k; break end
      end
    end
  end
  for node in pairs(erased) do
    local raw = get(C.agg, node)
    if raw ~= nil then
      local a = cjson.decode(raw)
      if a.l ~= nil and lt(newest, a.l[1]) then newest = a.l[1] end
      del(C.agg, node)
    end
  end
  for node in pairs(erased) do
    local hash = ev.h[node]
    local held = redis.call("HGET", K.erased, hash)
    if not held or lt(held, newest) then redis.call("HSET", K.erased, hash, newest) end
  end
  local last = redis.call("HGET", K.meta, "erase_max")
  if not last or lt(last, newest) then redis.call("HSET", K.meta, "erase_max", newest) end
  local kept = {}
  for _, rec in pairs(records) do
    local r = rec
    local touched = false
    for _, node in ipairs(rec.ids) do
      if erased[node] then touched = true; break end
    end
    if touched then -- keep what it showed about the others, nothing of the erased
      local ids = {}
      for _, node in ipairs(rec.ids) do
        if not erased[node] then ids[#ids + 1] = node end
      end
      if #ids == 0 then
        r = nil
      else
        r = { k = rec.k, m = rec.m, ids = ids, x = rec.x, e = rec.e }
        r.sig = signature(r.m, ids)
      end
    end
    if r ~= nil then
      local held = kept[r.sig]
      if held == nil or lt(r.k, held.k) then kept[r.sig] = r end
    end
  end
  local ordered = listed(kept)
  constrain(ordered, nodes)
  refile(ordered, nil)
  local others = {}
  for pid, set in pairs(before) do
    if targets[pid] == nil then others[pid] = set end
  end
  local after = {}
  for _, node in ipairs(nodes) do
    if not erased[node] then
      local p = owner_of(node)
      if after[p.id] == nil then after[p.id] = node_set(p.nodes) end
    end
  end
  local changes = {}
  for _, pid in ipairs(sorted_keys(targets)) do changes[#changes + 1] = { "erased", pid, {}, {}, {} } end
  for _, change in ipairs(diff(others, after, nil)) do changes[#changes + 1] = change end
  return { s = "applied", ch = changes, cf = {} }
end

-- ----------------------------------------------------------------- checks before anything is written

local ERASE_MAX = redis.call("HGET", K.meta, "erase_max")
for _, ev in ipairs(batch) do
  if ev.h == nil and ERASE_MAX and not lt(ERASE_MAX, ev.k) then return cjson.encode({ stale = ERASE_MAX }) end
end
if batch[1].op == "erase" then
  local ev = batch[1]
  if #batch ~= 1 then return redis.error_reply("idstream: an erasure must be alone in its script call") end
  -- the persons to erase must still be exactly those the caller read and hashed
  local expected, want = {}, 0
  for _, node in ipairs(ev.nodes) do expected[node] = true; want = want + 1 end
  local found = {}
  for _, node in ipairs(ev.ids) do
    found[node] = true
    local handle = redis.call("HGET", K.owner, node)
    if handle then
      local raw = redis.call("HGET", K.person, handle)
      for _, n in ipairs(split(split(raw, RS)[5], GS)) do found[n] = true end
    end
  end
  local have = 0
  for node in pairs(found) do
    if not expected[node] or not ev.h[node] then return cjson.encode({ retry = true }) end
    have = have + 1
  end
  if have ~= want then return cjson.encode({ retry = true }) end
end

local results = {}
for i, ev in ipairs(batch) do
  if ev.op == "erase" then
    local dup = seen_before(ev)
    if dup ~= nil then results[i] = { s = "duplicate", ch = {}, cf = {}, dc = dup or nil } else results[i] = erase(ev) end
  else
    results[i] = apply(ev)
  end
end

-- ----------------------------------------------------------------- write back

for handle, state in pairs(Pstate) do
  if state == "live" then put(C.person, handle, encode_person(P[handle])) else del(C.person, handle) end
end
local largest = 0 -- identifiers in the largest component (evidence group) this batch wrote: the blob watch
for root, g in pairs(G) do
  if g ~= false then
    put(C.group, root, table.concat({ g.max, table.concat(g.nodes, GS), table.concat(g.sigs, GS) }, RS))
    if #g.nodes > largest then largest = #g.nodes end
  end
end
for node, a in pairs(AGG) do put(C.agg, node, cjson.encode(a)) end
for _, c in pairs(C) do flush(c) end
local fresh_ids, prints = {}, {}
for eid, f in pairs(SEEN) do
  fresh_ids[#fresh_ids + 1] = eid
  if f ~= "" then
    prints[#prints + 1] = eid
    prints[#prints + 1] = f
  end
end
for i = 1, #fresh_ids, 4000 do
  redis.call("SADD", K.seen, unpack(fresh_ids, i, math.min(i + 3999, #fresh_ids)))
end
for i = 1, #prints, 4000 do
  redis.call("HSET", K.efp, unpack(prints, i, math.min(i + 3999, #prints)))
end
if stats.reorders > 0 then redis.call("HINCRBY", K.meta, "reorders", stats.reorders) end
if stats.late > 0 then redis.call("HINCRBY", K.meta, "late_without_replay", stats.late) end
return cjson.encode({ r = results, g = largest })
