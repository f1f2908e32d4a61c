-- common.lua: the helpers every stockledger script shares; prepended to each script.
--
-- Every key of one store sits under the hash tag {namespace}, so one script touches one
-- slot (Redis Cluster shards by namespace).
--
-- KEYS (the same ten for every script):
--   1 levels       hash  SKU -> "on_hand reserved version threshold" (decimal integers)
--   2 holds        hash  id -> msgpack {deadline_us (0: none), idempotency key ("": none),
--                        {SKU...}, {quantity...}}
--   3 deadlines    zset  id scored by deadline_us: the expiry index
--   4 idempotency  hash  key -> msgpack {id, "open" | "resolved", deadline_us, {SKU...},
--                        {quantity...}}
--   5 retired      zset  idempotency key scored by the time its hold resolved (us)
--   6 sequence     string  the last id issued (INCR)
--   7 events       stream  one entry per change per SKU, and one per low-stock crossing
--   8 stats        hash  counter name -> count
--   9 waiters      hash  waiter id -> msgpack {id, {SKU...}, {quantity...}, position,
--                        lease_us, {on_hand, reserved, version per line taken}}
--  10 unclaimed    zset  id of a hold granted to a waiter, scored by the server time (us)
--                        by which its waiter must pick it up, else it goes back
-- Keys named in scripts (same slot): prefix .. "queue:" .. SKU (list of waiter ids, FIFO),
-- prefix .. "granted:" .. id (the levels of a granted wait), prefix .. "wake:" .. id.
--
-- ARGV (common head): 1 key prefix "{namespace}:", 2 now (us on the store's clock),
-- 3 stream cap (entries, approximate trimming), 4 idempotency retention (us),
-- 5 idempotency keys max; then each script's own from ARGV[6].
--
-- Every script answers {status, payload, events}:
--   status   a string: "ok", or the name of a refusal
--   payload  an array whose shape the script's header gives
--   events   flat 7-tuples for the caller's event sink: kind, id, SKU, quantity, on_hand,
--            reserved, version; a "low_stock" tuple carries available, threshold, 0 in the
--            quantity, on_hand and reserved places.
-- Numbers are exact integers up to 2^53 - 1 (Lua numbers are doubles): QUANTITY_MAX.

local K_LEVELS, K_HOLDS, K_DEADLINES, K_KEYS, K_RETIRED = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local K_SEQUENCE, K_EVENTS, K_STATS, K_WAITERS, K_UNCLAIMED = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local PREFIX = ARGV[1]
local NOW = tonumber(ARGV[2])
local EVENTS_MAX = ARGV[3]
local RETENTION = tonumber(ARGV[4])
local KEYS_MAX = tonumber(ARGV[5])

local QUANTITY_MAX = 9007199254740991
-- Most due holds one call expires, most retired keys one call forgets, most queue heads
-- one call serves: every loop of a script is bounded.
local BATCH_MAX = 256
-- A waiter that did not renew its lease for this long (its process died) leaves its queue.
local LEASE_US = 10000000

local events = {}

-- A count as a decimal string (Lua's tostring would print 1e+15 for large counts).
local function int(n)
  return string.format('%.0f', n)
end

local function level_of(sku)
  local packed = redis.call('HGET', K_LEVELS, sku)
  if not packed then
    return nil
  end
  local o, r, v, t = string.match(packed, '^(%d+) (%d+) (%d+) (%d+)$')
  return { o = tonumber(o), r = tonumber(r), v = tonumber(v), t = tonumber(t) }
end

local function store_level(sku, l)
  redis.call('HSET', K_LEVELS, sku, int(l.o) .. ' ' .. int(l.r) .. ' ' .. int(l.v) .. ' ' .. int(l.t))
end

local function count(stat, amount)
  redis.call('HINCRBY', K_STATS, stat, amount or 1)
end

local function queue_key(sku)
  return PREFIX .. 'queue:' .. sku
end

local function queued(sku)
  return redis.call('LLEN', queue_key(sku))
end

-- The level after `change` of `q` units, or nil and why ("insufficient", available |
-- "overflow"). `withheld` units of available are not offered (queued waiters' share).
-- The version rule of StockLevel::apply: version + reserved <= QUANTITY_MAX after every
-- change, so a commit or release is never refused.
local function apply(l, change, q, withheld)
  local available = l.o - l.r - withheld
  if available < 0 then
    available = 0
  end
  local o, r = l.o, l.r
  if change == 'restock' then
    o = o + q
    if o > QUANTITY_MAX then
      return nil, 'overflow'
    end
  elseif change == 'reserve' or change == 'sell' then
    if q > available then
      return nil, 'insufficient', available
    end
    if change == 'reserve' then
      r = r + q
    else
      o = o - q
    end
  elseif change == 'commit' then
    o, r = o - q, r - q
  else
    r = r - q
  end
  local v = l.v + 1
  if v + r > QUANTITY_MAX then
    return nil, 'overflow'
  end
  return { o = o, r = r, v = v, t = l.t }
end

-- Appends the change to the stream (the transactional outbox) and, when `to_caller`, to
-- the events this call answers with.
local function record(kind, id, sku, q, l, to_caller)
  redis.call('XADD', K_EVENTS, 'MAXLEN', '~', EVENTS_MAX, '*', 'kind', kind, 'id', int(id),
    'sku', sku, 'quantity', int(q), 'on_hand', int(l.o), 'reserved', int(l.r), 'version', int(l.v))
  if to_caller then
    for _, field in ipairs({ kind, id, sku, q, l.o, l.r, l.v }) do
      events[#events + 1] = field
    end
  end
end

-- Sends a LowStock when available went from at least the threshold to below it.
local function low_stock(sku, available_before)
  local l = level_of(sku)
  local available = l.o - l.r
  if l.t > 0 and available_before >= l.t and available < l.t then
    redis.call('XADD', K_EVENTS, 'MAXLEN', '~', EVENTS_MAX, '*', 'kind', 'low_stock', 'sku', sku,
      'available', int(available), 'threshold', int(l.t), 'version', int(l.v))
    for _, field in ipairs({ 'low_stock', 0, sku, available, l.t, 0, l.v }) do
      events[#events + 1] = field
    end
  end
end

local function available_of(sku)
  local l = level_of(sku)
  return l.o - l.r
end

local function hold_of(id)
  local packed = redis.call('HGET', K_HOLDS, int(id))
  if not packed then
    return nil
  end
  return cmsgpack.unpack(packed)
end

-- A hold as a reply: {id, deadline_us, SKU, quantity, SKU, quantity, ...}.
local function hold_reply(id, deadline, skus, qtys)
  local reply = { id, deadline }
  for i, sku in ipairs(skus) do
    reply[#reply + 1] = sku
    reply[#reply + 1] = qtys[i]
  end
  return reply
end

local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- ------------------------------------------------------------------ waiters

local function waiter_of(wid)
  local packed = redis.call('HGET', K_WAITERS, int(wid))
  if not packed then
    return nil
  end
  return cmsgpack.unpack(packed)
end

local function store_waiter(w)
  redis.call('HSET', K_WAITERS, int(w[1]), cmsgpack.pack(w))
end

-- Takes the lines of waiter `w` from its position on while no one queues before it and
-- stock is there; queues it on the first line it cannot take. Answers "queued",
-- "granted" (its hold is open) or "overflow" (the caller gives back what it holds).
local function advance(w)
  local skus, qtys = w[2], w[3]
  while w[4] <= #skus do
    local position = w[4]
    local sku, q = skus[position], qtys[position]
    local taken = false
    if queued(sku) == 0 then
      local before = level_of(sku)
      local l, why = apply(before, 'reserve', q, 0)
      if l then
        store_level(sku, l)
        record('reserved', w[1], sku, q, l, false)
        local levels = w[6]
        levels[#levels + 1], levels[#levels + 2], levels[#levels + 3] = l.o, l.r, l.v
        w[4] = position + 1
        taken = true
        low_stock(sku, before.o - before.r)
      elseif why == 'overflow' then
        return 'overflow'
      end
    end
    if not taken then
      redis.call('RPUSH', queue_key(sku), int(w[1]))
      count('waits')
      store_waiter(w)
      return 'queued'
    end
  end
  redis.call('HDEL', K_WAITERS, int(w[1]))
  redis.call('HSET', K_HOLDS, int(w[1]), cmsgpack.pack({ 0, '', skus, qtys }))
  count('reserves')
  -- A waiter whose process died cannot take its grant: unclaimed within a lease, it goes
  -- back (reclaim).
  redis.call('ZADD', K_UNCLAIMED, int(server_now() + LEASE_US), int(w[1]))
  local granted = PREFIX .. 'granted:' .. int(w[1])
  redis.call('SET', granted, cmsgpack.pack(w[6]), 'PX', 86400000)
  local wake = PREFIX .. 'wake:' .. int(w[1])
  redis.call('LPUSH', wake, '1')
  redis.call('PEXPIRE', wake, 60000)
  return 'granted'
end

-- Gives back every line waiter `w` holds and takes it out of its queue; returns the SKUs
-- whose queues may now move.
local function drop_waiter(w, to_caller)
  local moved = {}
  local skus, qtys = w[2], w[3]
  if w[4] <= #skus then
    redis.call('LREM', queue_key(skus[w[4]]), 1, int(w[1]))
    moved[#moved + 1] = skus[w[4]]
  end
  for i = 1, w[4] - 1 do
    local l = apply(level_of(skus[i]), 'release', qtys[i], 0)
    store_level(skus[i], l)
    record('released', w[1], skus[i], qtys[i], l, to_caller)
    moved[#moved + 1] = skus[i]
  end
  redis.call('HDEL', K_WAITERS, int(w[1]))
  return moved
end

-- Serves the queues of `skus` in FIFO order: a head whose lease ran out (its process
-- died) leaves and passes its turn on; a head is granted its line when the stock is
-- there, else everyone behind it waits too (no barging).
local function serve(skus)
  local work = {}
  for i, sku in ipairs(skus) do
    work[i] = sku
  end
  local lease_now = nil
  local steps = 0
  while #work > 0 and steps < BATCH_MAX do
    steps = steps + 1
    local sku = table.remove(work)
    local wid = redis.call('LINDEX', queue_key(sku), 0)
    if wid then
      local w = waiter_of(wid)
      lease_now = lease_now or server_now()
      if not w then
        redis.call('LPOP', queue_key(sku))
        work[#work + 1] = sku
      elseif w[5] < lease_now then
        for _, moved in ipairs(drop_waiter(w, false)) do
          work[#work + 1] = moved
        end
      else
        local q = w[3][w[4]]
        local l = apply(level_of(sku), 'reserve', q, 0)
        if l then
          store_level(sku, l)
          record('reserved', w[1], sku, q, l, false)
          local levels = w[6]
          levels[#levels + 1], levels[#levels + 2], levels[#levels + 3] = l.o, l.r, l.v
          redis.call('LPOP', queue_key(sku))
          w[4] = w[4] + 1
          local outcome = advance(w)
          if outcome == 'overflow' then
            for _, moved in ipairs(drop_waiter(w, false)) do
              work[#work + 1] = moved
            end
          end
          work[#work + 1] = sku
        end
      end
    end
  end
end

-- ------------------------------------------------------------------ holds

-- Forgets resolved idempotency keys past the retention, then the oldest past the bound.
local function prune_keys()
  local old = redis.call('ZRANGEBYSCORE', K_RETIRED, '-inf', int(NOW - RETENTION), 'LIMIT', 0, BATCH_MAX)
  for _, key in ipairs(old) do
    redis.call('HDEL', K_KEYS, key)
    redis.call('ZREM', K_RETIRED, key)
  end
  local excess = redis.call('ZCARD', K_RETIRED) - KEYS_MAX
  if excess > 0 then
    local popped = redis.call('ZPOPMIN', K_RETIRED, math.min(excess, BATCH_MAX))
    for i = 1, #popped, 2 do
      redis.call('HDEL', K_KEYS, popped[i])
    end
  end
end

-- Moves the stock of the open hold `id` (`change` "commit" or "release"), removes it and
-- records it as `kind`; serves the queues it freed stock for. Never refused.
local function settle(id, h, change, kind)
  local skus, qtys = h[3], h[4]
  redis.call('HDEL', K_HOLDS, int(id))
  redis.call('ZREM', K_DEADLINES, int(id))
  redis.call('ZREM', K_UNCLAIMED, int(id))
  local before = {}
  for i, sku in ipairs(skus) do
    local l = level_of(sku)
    before[i] = l.o - l.r
    l = apply(l, change, qtys[i], 0)
    store_level(sku, l)
    record(kind, id, sku, qtys[i], l, true)
  end
  if change == 'release' then
    serve(skus)
  end
  for i, sku in ipairs(skus) do
    low_stock(sku, before[i])
  end
  if h[2] ~= '' then
    local packed = redis.call('HGET', K_KEYS, h[2])
    if packed then
      local entry = cmsgpack.unpack(packed)
      if entry[1] == id then
        entry[2], entry[3] = 'resolved', h[1]
        redis.call('HSET', K_KEYS, h[2], cmsgpack.pack(entry))
        redis.call('ZADD', K_RETIRED, int(NOW), h[2])
      end
    end
  end
  count(kind == 'expired' and 'expirations' or (change == 'commit' and 'commits' or 'releases'))
end

-- Gives back the holds granted to waiters that did not pick them up within their lease
-- (their process died after it queued), as expiries; their stock goes to the next waiters.
local function reclaim()
  local lost = redis.call('ZRANGEBYSCORE', K_UNCLAIMED, '-inf', int(server_now()), 'LIMIT', 0, BATCH_MAX)
  for _, member in ipairs(lost) do
    redis.call('ZREM', K_UNCLAIMED, member)
    redis.call('DEL', PREFIX .. 'granted:' .. member, PREFIX .. 'wake:' .. member)
    local h = hold_of(tonumber(member))
    if h then
      settle(tonumber(member), h, 'release', 'expired')
    end
  end
end

-- Expires up to BATCH_MAX holds due now, in deadline order; returns them as hold replies.
local function expire_due()
  local due = redis.call('ZRANGEBYSCORE', K_DEADLINES, '-inf', int(NOW), 'LIMIT', 0, BATCH_MAX)
  local expired = {}
  for _, member in ipairs(due) do
    local id = tonumber(member)
    local h = hold_of(id)
    if h then
      settle(id, h, 'release', 'expired')
      expired[#expired + 1] = hold_reply(id, h[1], h[3], h[4])
    else
      redis.call('ZREM', K_DEADLINES, member)
    end
  end
  return expired
end

-- Reads the request lines from ARGV[first]: count, then SKU, quantity pairs (merged and
-- sorted by the client). Quantities above QUANTITY_MAX stay large: they are refused.
local function read_lines(first)
  local n = tonumber(ARGV[first])
  local skus, qtys = {}, {}
  for i = 1, n do
    skus[i] = ARGV[first + 2 * i - 1]
    qtys[i] = tonumber(ARGV[first + 2 * i])
  end
  return skus, qtys
end

-- Checks every line for `change` ("reserve" or "sell") without writing, serving the
-- queues of the request's SKUs first; when stock is short while holds are due, expires
-- them and checks again. Returns nil, or the refusal reply {status, {line index, ...}}.
local function check_lines(skus, qtys, change)
  for i, sku in ipairs(skus) do
    if not level_of(sku) then
      return { 'unknown_sku', { i } }
    end
  end
  reclaim()
  local waiting = {}
  for _, sku in ipairs(skus) do
    if queued(sku) > 0 then
      waiting[#waiting + 1] = sku
    end
  end
  if #waiting > 0 then
    serve(waiting)
  end
  local swept = false
  local i = 1
  while i <= #skus do
    local sku = skus[i]
    local withheld = queued(sku) > 0 and QUANTITY_MAX or 0
    local l, why, available = apply(level_of(sku), change, qtys[i], withheld)
    if not l then
      if why == 'insufficient' and not swept and
          #redis.call('ZRANGEBYSCORE', K_DEADLINES, '-inf', int(NOW), 'LIMIT', 0, 1) > 0 then
        swept = true
        expire_due()
        i = 0
      else
        count('refusals')
        return { why, { i, available or 0 } }
      end
    end
    i = i + 1
  end
  return nil
end
