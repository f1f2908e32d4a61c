-- common.lua: the helpers every stockledger script shares. The scripts form one Redis
-- function library (engine.rs builds it: this file, then each script's body as the body of
-- one function), loaded once with FUNCTION LOAD: the helpers are defined once per server,
-- not once per call. Each function starts with `begin(keys, args)`, which sets the call's
-- state below; Redis runs one function at a time, so that state is the running call's.
--
-- KEYS: every call declares every key it may read or write, all under the hash tag
-- {namespace}, so one call touches one slot (Redis Cluster shards by namespace) and a
-- cluster never stops a script midway for an undeclared key (sell_one.lua, the common
-- one-line sale, touches three of them and declares those three: see begin_one):
--   1 levels       hash  SKU -> struct '<ddddd': on_hand, reserved, version, threshold,
--                        waiters queued on the SKU; little-endian doubles holding
--                        integers; mod.rs reads it too
--   2 holds        hash  id -> msgpack {deadline_us (0: none), idempotency key ("": none),
--                        {SKU...}, {quantity...}}
--   3 deadlines    zset  id scored by deadline_us: the expiry index; a hold is in it exactly
--                        when its deadline_us is not 0
--   4 idempotency  hash  key -> msgpack {id, "open" | "resolved", deadline_us, {SKU...},
--                        {quantity...}, how a resolved hold ended: "committed" |
--                        "released" | "expired"}
--   5 retired      zset  idempotency key scored by the time its hold resolved (us)
--   6 sequence     string  the last arrival number of a waiter (INCR): FIFO order only
--   7 events       stream  one entry per change per SKU of a hold a caller received, sale
--                        and restock, and one per low-stock crossing (see `append`)
--   8 stats        hash  counter name -> count
--   9 waiters      hash  waiter id (the id its hold will have) -> msgpack {id, {SKU...},
--                        {quantity...}, position (the line it waits for; #lines + 1 once
--                        granted), lease_us, {on_hand, reserved, version per line taken},
--                        its member of the queues set ("" when not queued), ttl_us,
--                        idempotency key ("": none; absent in a waiter an older library
--                        wrote)}
--  10 leases       zset  waiter id scored by the server time (us) its lease runs out: a
--                        waiter whose process died leaves, and gives back what it held
--                        (granted or not), once its lease runs out, whatever queue it is in
--  11 queues       zset  every SKU's FIFO queue of waiters in one set, scores 0, members
--                        queue_prefix(SKU) .. arrival number (16 digits) .. waiter id, read
--                        in lexical order
--  12 wakes        stream  one entry (field w: the waiter id) per grant to a queued waiter,
--                        which reads it with XREAD BLOCK; trimmed to about WAKES_MAX
--  13 requests     hash  request id -> this call's answer (a status string as it is, or a
--                        table packed with msgpack, whose first byte is 0x80 or more): the answers of the calls made in one second of
--                        the callers' clocks (the key names the second), kept at least
--                        REQUEST_RETENTION: a resend of a call (the same keys and
--                        arguments) gets its first answer back. One hash a second, not
--                        one key a call: a field costs about half of a key with its own
--                        expiry, and the hash expires whole (REQUEST_KEY_TTL_MS after its
--                        first call: the retention and the second).
--
-- ARGV (common head): 1 now (us on the store's clock), 2 stream cap (entries, approximate
-- trimming); then each script's own from ARGV[3]; last, the call's request id (`begin`
-- takes it off, so a script's own arguments run to #ARGV). Whether the caller wants its events back
-- is in the function's name: each script is registered twice, as `<script>` (no) and as
-- `<script>_events` (yes), which costs the call nothing where an argument costs Redis a
-- string and a growth of the ARGV table.
--
-- Ids (holds and waiters) are the decimal text of the u64 a ReservationId holds: drawn at
-- random by the store (63 random bits, top bit set), never counted by the server, so no
-- older snapshot or failover can make the server issue one again. Lua keeps them as
-- strings (a double would round them).
--
-- Every script answers {status, payload, events} (as the scripts' headers write it):
--   status   a string: "ok", or the name of a refusal
--   payload  an array whose shape the script's header gives
--   events   flat 7-tuples for the caller's event sink (empty unless it wants them): kind,
--            id ("0" for none), SKU, quantity, on_hand, reserved, version; a "low_stock"
--            tuple carries available, threshold, 0 in the quantity, on_hand and reserved
--            places; a "key" tuple (push_key) carries the idempotency key of the hold
--            whose tuples follow in the SKU's place.
-- On the wire (`answer`) that is the status alone (a string) when payload and events are
-- both empty, else one flat array {status, #payload, payload..., events...}: Redis checks
-- every table of a reply for special fields (err, ok, double, map, ...), so one table
-- costs a third of three.
-- Every check that can refuse a call (a key of another type, unknown SKU, stock,
-- overflow, a taken id, a bad request) runs before its first write, so a refused call changes nothing but its
-- refusal count and its request record. The functions carry no flags, so the server
-- refuses them whole when it is out of memory (deny-oom), never midway.
-- Numbers are exact integers up to 2^53 - 1 (Lua numbers are doubles): QUANTITY_MAX.

local KEYS, ARGV
-- The decimal strings of 0 to 63 (quantities, small counts), made by the first call (the
-- library's loading sees no `string`) and kept. Few: Redis steps Lua's garbage collector
-- every 50 calls, and a table of 1,024 strings made that step cost about 2,000
-- instructions a call more (callgrind).
local SMALL = nil
-- redis.call, string.format, struct.pack and struct.unpack, looked up by the first call
-- (the library's loading sees none of them) and kept: a global and a field look-up less
-- each time.
local call, format, spack, sunpack
-- The call's keys (see above).
local K_LEVELS, K_HOLDS, K_DEADLINES, K_KEYS, K_RETIRED
local K_SEQUENCE, K_EVENTS, K_STATS, K_WAITERS, K_LEASES
local K_QUEUES, K_WAKES, K_REQUESTS
-- The call's request id; the requests hash last given its expiry (kept between calls: a
-- PEXPIRE a second, not a call; after a restart the first call of a second sets it again).
local REQUEST_ID, EXPIRING
-- Now (us) and the stream cap as the caller sent them (decimal text: a conversion to a
-- number costs, and most calls only pass them on to commands).
local NOW, EVENTS_MAX
-- The events this call answers with (see above): empty unless `replied`, whether the
-- caller wants them; NONE, a shared empty table, when it wants none.
local events, replied
local NONE = {}

-- The head every call shares: its request id (taken off the end of `args`), now, the
-- stream cap, whether it wants its events, and the first call's look-ups.
local function begin_head(args, wanted)
  REQUEST_ID = table.remove(args)
  NOW, EVENTS_MAX = args[1], args[2]
  replied = wanted
  events = replied and {} or NONE
  if not SMALL then
    call, format, spack, sunpack = redis.call, string.format, struct.pack, struct.unpack
    SMALL = {}
    for n = 0, 63 do
      SMALL[n] = format('%d', n)
    end
  end
end

local function begin(keys, args, wanted)
  KEYS, ARGV = keys, args
  K_LEVELS, K_HOLDS, K_DEADLINES, K_KEYS, K_RETIRED = keys[1], keys[2], keys[3], keys[4], keys[5]
  K_SEQUENCE, K_EVENTS, K_STATS, K_WAITERS, K_LEASES = keys[6], keys[7], keys[8], keys[9], keys[10]
  K_QUEUES, K_WAKES, K_REQUESTS = keys[11], keys[12], keys[13]
  begin_head(args, wanted)
end

-- The type each key must have ("none": absent is fine too), in KEYS order.
local KEY_TYPES = { 'hash', 'hash', 'zset', 'hash', 'zset', 'string', 'stream', 'hash',
  'hash', 'zset', 'zset', 'stream', 'hash' }
-- Per namespace (its levels key) whose twelve keys were found of the right types since
-- the library loaded, the requests hash checked last: a check costs a TYPE a key, so it
-- runs once per namespace and server start, and once per requests hash (a second).
local TYPED = {}

-- Refuses the call, before its first write, when one of its keys holds another type
-- than the store's (another program wrote it): {"wrong_type", {key, its type}}. A call
-- must not stop midway on a WRONGTYPE error, after writes it cannot take back.
local function wrong_type()
  local checked = TYPED[K_LEVELS]
  if checked == K_REQUESTS then
    return nil
  end
  for i = checked and 13 or 1, 13 do
    local found = call('TYPE', KEYS[i]).ok
    if found ~= 'none' and found ~= KEY_TYPES[i] then
      return { 'wrong_type', 2, KEYS[i], found }
    end
  end
  TYPED[K_LEVELS] = K_REQUESTS
  return nil
end

-- `begin` for the one-line sale's fast function (sell_one.lua), which declares three keys
-- only: 1 levels, 2 events, 3 the requests hash (a declared key costs every call some
-- server time: Redis makes a string of it and Lua interns it; 13 keys cost about 0.5 us
-- more than one). The keys it does not declare are nil for the call, so a helper that
-- reached for one would fail at that command, before any write to it.
local function begin_one(keys, args, wanted)
  KEYS, ARGV = keys, args
  K_LEVELS, K_EVENTS, K_REQUESTS = keys[1], keys[2], keys[3]
  K_HOLDS, K_DEADLINES, K_KEYS, K_RETIRED, K_SEQUENCE = nil, nil, nil, nil, nil
  K_STATS, K_WAITERS, K_LEASES, K_QUEUES, K_WAKES = nil, nil, nil, nil, nil
  begin_head(args, wanted)
end

-- Per namespace (its levels key), the requests hash whose three keys sell_one.lua found
-- of the right types last (see TYPED).
local TYPED_ONE = {}

-- `wrong_type` for sell_one.lua's three keys.
local function wrong_type_one()
  if TYPED_ONE[K_LEVELS] == K_REQUESTS then
    return nil
  end
  for i, expected in ipairs({ 'hash', 'stream', 'hash' }) do
    local found = call('TYPE', KEYS[i]).ok
    if found ~= 'none' and found ~= expected then
      return { 'wrong_type', 2, KEYS[i], found }
    end
  end
  TYPED_ONE[K_LEVELS] = K_REQUESTS
  return nil
end

-- The answer recorded under this call's request id, if the call ran before (its reply was
-- lost and the store resent it): the store gets the first answer back, the call is not
-- applied twice. Every call looks, a first attempt too: one held up on its way can arrive
-- after the resend that overtook it.
local function recorded()
  local packed = call('HGET', K_REQUESTS, REQUEST_ID)
  if not packed then
    return nil
  end
  if string.byte(packed, 1) < 128 then -- a status: ASCII letters
    return packed
  end
  return cmsgpack.unpack(packed)
end

-- Records `reply` under this call's request id (see `requests` above), and returns it.
local function record_reply(reply)
  call('HSET', K_REQUESTS, REQUEST_ID, type(reply) == 'string' and reply or cmsgpack.pack(reply))
  if K_REQUESTS ~= EXPIRING then
    call('PEXPIRE', K_REQUESTS, REQUEST_KEY_TTL_MS, 'NX')
    EXPIRING = K_REQUESTS
  end
  return reply
end

local QUANTITY_MAX = 9007199254740991
-- Most due holds one call expires, most retired keys one call forgets, most queue heads
-- one call serves: every loop of a script is bounded.
local BATCH_MAX = 256
-- The wake-up stream keeps about this many entries (a waiter reads it within a slice).
local WAKES_MAX = 1000


-- A count as a decimal string (Lua's tostring would print 1e+15 for large counts). '%d'
-- formats the count as a C long (exact below 2^53), at about half the cost of '%.0f'.
local function int(n)
  return SMALL[n] or format('%d', n)
end
-- A level is packed as five little-endian doubles (struct '<ddddd'): about a third of the
-- cost of formatting and matching decimal text. In a script a level is the array
-- {on_hand, reserved, version, threshold, queued} (l[1] to l[5]): an array constructor
-- costs a fraction of one with named fields, which hashes each of them.
local function level_of(sku)
  local packed = call('HGET', K_LEVELS, sku)
  if not packed then
    return nil
  end
  return { sunpack('<ddddd', packed) }
end

local function store_level(sku, l)
  call('HSET', K_LEVELS, sku, spack('<ddddd', l[1], l[2], l[3], l[4], l[5]))
end

-- Adds one to the statistic `stat` (the increment as text: Redis would format a Lua number).
local function count(stat)
  call('HINCRBY', K_STATS, stat, '1')
end

-- The prefix of `sku`'s members in the queues set: its length (8 hex digits) and its key,
-- so that no SKU's prefix starts another SKU's.
local function queue_prefix(sku)
  return format('%08x', #sku) .. sku
end

-- The level after `change` of `q` units, or nil and why ("insufficient", available |
-- "overflow"). `withheld` units of available are not offered (queued waiters' share).
-- The version rule of StockLevel::apply: version + reserved <= QUANTITY_MAX after every
-- change, so a commit or release is never refused.
local function apply(l, change, q, withheld)
  local available = l[1] - l[2] - withheld
  if available < 0 then
    available = 0
  end
  local o, r = l[1], l[2]
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
  local v = l[3] + 1
  if v + r > QUANTITY_MAX then
    return nil, 'overflow'
  end
  return { o, r, v, l[4], l[5] }
end

-- Appends an event to the stream (the transactional outbox): one field, `event`, whose
-- value is "kind id quantity on_hand reserved version SKU" (decimal integers; the SKU last,
-- so it may hold spaces; a low_stock entry carries available, threshold, 0 in the
-- quantity, on_hand and reserved places). One field of one string costs about half of
-- seven named fields. (`int`, not Lua's own number to text: '%.14g' costs more than a
-- table look-up or '%d'.)
-- The stream is trimmed approximately ('MAXLEN ~'): Redis drops whole nodes of entries
-- only, so the stream keeps at least EVENTS_MAX entries (a little more) and trimming costs
-- next to nothing, where an exact cap would cut into a node on every append.
local function append(kind, id, q, o, r, v, sku)
  call('XADD', K_EVENTS, 'MAXLEN', '~', EVENTS_MAX, '*', 'event', kind .. ' ' .. id
    .. ' ' .. int(q) .. ' ' .. int(o) .. ' ' .. int(r) .. ' ' .. int(v) .. ' ' .. sku)
end

-- Adds an event to those this call answers with (the caller wants them: `replied`).
local function push_event(kind, id, sku, q, o, r, v)
  local n = #events
  events[n + 1], events[n + 2], events[n + 3], events[n + 4] = kind, id, sku, q
  events[n + 5], events[n + 6], events[n + 7] = o, r, v
end

-- Tells the caller (when it wants events) the idempotency key of the hold `id` whose
-- events follow: a "key" tuple (the key in the SKU's place), none for a hold without a key
-- (""). The stream does not carry keys: its consumers join on the hold's id.
local function push_key(id, key)
  if replied and key ~= '' then
    push_event('key', id, key, 0, 0, 0, 0)
  end
end

-- Appends the change to the stream and, when `to_caller`, to the events this call answers
-- with.
local function record(kind, id, sku, q, l, to_caller)
  append(kind, id, q, l[1], l[2], l[3], sku)
  if to_caller and replied then
    push_event(kind, id, sku, q, l[1], l[2], l[3])
  end
end

-- Sends a LowStock when available went from at least the threshold `t` (0: none) to below
-- it; `v` is the SKU's version now.
local function crossed(sku, available_before, available, t, v)
  if t > 0 and available_before >= t and available < t then
    append('low_stock', '0', available, t, 0, v, sku)
    if replied then
      push_event('low_stock', '0', sku, available, t, 0, v)
    end
  end
end

-- `crossed` for the level `l` of `sku` now when the caller has it, else (nil) it is read.
local function low_stock(sku, available_before, l)
  l = l or level_of(sku)
  crossed(sku, available_before, l[1] - l[2], l[4], l[3])
end

local function available_of(sku)
  local l = level_of(sku)
  return l[1] - l[2]
end

local function hold_of(id)
  local packed = call('HGET', K_HOLDS, id)
  if not packed then
    return nil
  end
  return cmsgpack.unpack(packed)
end

-- A hold as a reply: {id, deadline_us, SKU, quantity, SKU, quantity, ...}.
local function hold_reply(id, deadline, skus, qtys)
  local reply = { id, deadline }
  for i = 1, #skus do
    local sku = skus[i]
    reply[#reply + 1] = sku
    reply[#reply + 1] = qtys[i]
  end
  return reply
end

local function server_now()
  local t = call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end


-- ------------------------------------------------------------------ waiters

local function waiter_of(wid)
  local packed = call('HGET', K_WAITERS, wid)
  if not packed then
    return nil
  end
  return cmsgpack.unpack(packed)
end

local function store_waiter(w)
  call('HSET', K_WAITERS, w[1], cmsgpack.pack(w))
end

-- Takes the lines of waiter `w` from its position on while no one queues before it and
-- stock is there (recording the levels each take left, for its events once it has its
-- hold); queues it on the first line it cannot take. Answers "queued", "granted" (every
-- line taken: the waiter picks its hold up with `claim`) or "overflow" (the caller gives
-- back what it holds). No stream entry: the stream shows holds once their waiter has them.
local function advance(w)
  local skus, qtys = w[2], w[3]
  while w[4] <= #skus do
    local position = w[4]
    local sku, q = skus[position], qtys[position]
    local taken = false
    local before = level_of(sku)
    if before[5] == 0 then
      local l, why = apply(before, 'reserve', q, 0)
      if l then
        store_level(sku, l)
        local levels = w[6]
        levels[#levels + 1], levels[#levels + 2], levels[#levels + 3] = l[1], l[2], l[3]
        w[4] = position + 1
        taken = true
        low_stock(sku, before[1] - before[2], l)
      elseif why == 'overflow' then
        return 'overflow'
      end
    end
    if not taken then
      local member = queue_prefix(sku) .. format('%016d', call('INCR', K_SEQUENCE)) .. w[1]
      call('ZADD', K_QUEUES, 0, member)
      w[7] = member
      before[5] = before[5] + 1
      store_level(sku, before)
      count('waits')
      store_waiter(w)
      return 'queued'
    end
  end
  w[7] = ''
  store_waiter(w)
  return 'granted'
end

-- Gives back every line waiter `w` holds, takes it out of its queue and forgets it;
-- returns the SKUs whose queues may now move. No stream entry (no caller had a hold).
local function drop_waiter(w)
  local moved = {}
  local skus, qtys = w[2], w[3]
  if w[4] <= #skus then
    local sku = skus[w[4]]
    if w[7] ~= '' and call('ZREM', K_QUEUES, w[7]) > 0 then
      local l = level_of(sku)
      l[5] = l[5] - 1
      store_level(sku, l)
    end
    moved[#moved + 1] = sku
  end
  for i = 1, math.min(w[4] - 1, #skus) do
    local l = apply(level_of(skus[i]), 'release', qtys[i], 0)
    store_level(skus[i], l)
    moved[#moved + 1] = skus[i]
  end
  call('HDEL', K_WAITERS, w[1])
  call('ZREM', K_LEASES, w[1])
  return moved
end

-- The id of the waiter at the head of `sku`'s queue and its member, or nil.
local function queue_head(sku)
  local prefix = queue_prefix(sku)
  local head = call('ZRANGEBYLEX', K_QUEUES, '[' .. prefix, '(' .. prefix .. '\255', 'LIMIT', 0, 1)[1]
  if not head then
    return nil
  end
  return string.sub(head, #prefix + 17), head
end

-- Serves the queues of `skus` in FIFO order: a head whose lease ran out (its process
-- died) leaves and passes its turn on; a head is granted its line when the stock is there,
-- else everyone behind it waits too (no barging).
local function serve(skus)
  local work = {}
  for i = 1, #skus do
    work[i] = skus[i]
  end
  local lease_now = nil
  local steps = 0
  while #work > 0 and steps < BATCH_MAX do
    steps = steps + 1
    local sku = table.remove(work)
    local wid, member = queue_head(sku)
    if wid then
      local w = waiter_of(wid)
      lease_now = lease_now or server_now()
      if not w or w[7] ~= member then
        call('ZREM', K_QUEUES, member)
        local l = level_of(sku)
        l[5] = l[5] - 1
        store_level(sku, l)
        work[#work + 1] = sku
      elseif w[5] < lease_now then
        for _, moved in ipairs(drop_waiter(w)) do
          work[#work + 1] = moved
        end
      else
        local q = w[3][w[4]]
        local before = level_of(sku)
        local l = apply(before, 'reserve', q, 0)
        if l then
          l[5] = l[5] - 1
          store_level(sku, l)
          local levels = w[6]
          levels[#levels + 1], levels[#levels + 2], levels[#levels + 3] = l[1], l[2], l[3]
          call('ZREM', K_QUEUES, member)
          w[4] = w[4] + 1
          w[7] = ''
          low_stock(sku, before[1] - before[2], l)
          local outcome = advance(w)
          if outcome == 'overflow' then
            for _, moved in ipairs(drop_waiter(w)) do
              work[#work + 1] = moved
            end
          elseif outcome == 'granted' then
            call('XADD', K_WAKES, 'MAXLEN', '~', WAKES_MAX, '*', 'w', w[1])
          end
          work[#work + 1] = sku
        end
      end
    end
  end
end

-- Drops up to BATCH_MAX waiters whose lease ran out (their process died or lost the
-- server), queued or granted, wherever they queue: their lines go back and the queues
-- they free move on. Returns how many it dropped.
local function sweep_leases()
  local lost = call('ZRANGEBYSCORE', K_LEASES, '-inf', int(server_now()), 'LIMIT', 0, BATCH_MAX)
  for i = 1, #lost do
    local w = waiter_of(lost[i])
    if w then
      serve(drop_waiter(w))
    else
      call('ZREM', K_LEASES, lost[i])
    end
  end
  return #lost
end

-- The last entry id of the wake-up stream ("0-0" when empty): a waiter reads the wakes
-- after it.
local function last_wake()
  local last = call('XREVRANGE', K_WAKES, '+', '-', 'COUNT', 1)[1]
  return last and last[1] or '0-0'
end

-- The answer to a request with the idempotency key `key` seen before (defined below, with
-- the holds): nil when the key is new.
local keyed_answer

-- Hands waiter `w`, granted, its hold: the hold opens with its deadline (now + its TTL;
-- 0: none) in the same call, the waiter is forgotten, and the hold's `reserved` entries go
-- to the stream with the levels each take left. Returns the deadline. A keyed waiter whose
-- key another call used meanwhile (a retry that held at once) holds nothing: its lines go
-- back, and it returns nil and the answer to that key (a replay, a conflict, an ended hold).
local function claim(w)
  local skus, qtys, levels = w[2], w[3], w[6]
  local key = w[9] or ''
  if key ~= '' then
    local seen = keyed_answer(key, skus, qtys)
    if seen then
      serve(drop_waiter(w))
      return nil, seen
    end
  end
  local deadline = 0
  if w[8] > 0 then
    deadline = tonumber(NOW) + w[8]
    if deadline > QUANTITY_MAX then
      deadline = 0
    end
  end
  call('HDEL', K_WAITERS, w[1])
  call('ZREM', K_LEASES, w[1])
  call('HSET', K_HOLDS, w[1], cmsgpack.pack({ deadline, key, skus, qtys }))
  if key ~= '' then
    call('HSET', K_KEYS, key, cmsgpack.pack({ w[1], 'open', deadline, skus, qtys }))
  end
  if deadline > 0 then
    call('ZADD', K_DEADLINES, int(deadline), w[1])
  end
  count('reserves')
  push_key(w[1], key)
  for i = 1, #skus do
    local at = 3 * (i - 1)
    record('reserved', w[1], skus[i], qtys[i], { levels[at + 1], levels[at + 2], levels[at + 3] }, true)
  end
  return deadline
end

-- ------------------------------------------------------------------ holds

-- Forgets resolved idempotency keys past the retention, then the oldest past the bound.
local function prune_keys(retention, keys_max)
  retention, keys_max = tonumber(retention), tonumber(keys_max)
  local old = call('ZRANGEBYSCORE', K_RETIRED, '-inf', int(tonumber(NOW) - retention), 'LIMIT', 0, BATCH_MAX)
  for _ = 1, #old do
    local key = old[_]
    call('HDEL', K_KEYS, key)
    call('ZREM', K_RETIRED, key)
  end
  local excess = call('ZCARD', K_RETIRED) - keys_max
  if excess > 0 then
    local popped = call('ZPOPMIN', K_RETIRED, math.min(excess, BATCH_MAX))
    for i = 1, #popped, 2 do
      call('HDEL', K_KEYS, popped[i])
    end
  end
end

-- Moves the stock of `skus`, `qtys` (lines of the hold `id`) by `change` ("commit" or
-- "release") and records each line as `kind`; a release serves the queues it freed stock
-- for. Never refused.
local function move_lines(id, skus, qtys, change, kind)
  if change == 'commit' and #skus == 1 then
    -- The common case: the commit of one line, on the level's five numbers without a
    -- table (apply's commit: on hand and reserved less the quantity, never refused).
    local sku, q = skus[1], qtys[1]
    local o, r, v, t, w = sunpack('<ddddd', call('HGET', K_LEVELS, sku))
    local available_before = o - r
    o, r, v = o - q, r - q, v + 1
    call('HSET', K_LEVELS, sku, spack('<ddddd', o, r, v, t, w))
    append(kind, id, q, o, r, v, sku)
    if replied then
      push_event(kind, id, sku, q, o, r, v)
    end
    crossed(sku, available_before, o - r, t, v)
    return
  end
  local before, after = {}, {}
  for i = 1, #skus do
    local sku = skus[i]
    local l = level_of(sku)
    before[i] = l[1] - l[2]
    l = apply(l, change, qtys[i], 0)
    store_level(sku, l)
    record(kind, id, sku, qtys[i], l, true)
    after[i] = l
  end
  if change == 'release' then
    serve(skus)
    -- Waiters served may have taken some of it: read the levels again.
    after = {}
  end
  for i = 1, #skus do
    local sku = skus[i]
    low_stock(sku, before[i], after[i])
  end
end

-- Resolves the open hold `id` (`h` as hold_of reads it): removes it, calls `move()` to
-- move its stock (after the key tuple, so the caller's events carry the key), records its
-- idempotency key as resolved as `kind` and counts it. A hold is in the deadlines set
-- exactly when its deadline (h[1]) is set.
local function retire(id, h, kind, move)
  push_key(id, h[2] or '')
  call('HDEL', K_HOLDS, id)
  if h[1] > 0 then
    call('ZREM', K_DEADLINES, id)
  end
  move()
  if h[2] ~= '' then
    local packed = call('HGET', K_KEYS, h[2])
    if packed then
      local entry = cmsgpack.unpack(packed)
      if entry[1] == id then
        entry[2], entry[3], entry[6] = 'resolved', h[1], kind
        call('HSET', K_KEYS, h[2], cmsgpack.pack(entry))
        call('ZADD', K_RETIRED, NOW, h[2])
      end
    end
  end
  count(kind == 'expired' and 'expirations' or (kind == 'committed' and 'commits' or 'releases'))
end

-- Moves the stock of the open hold `id` (`change` "commit" or "release"), removes it and
-- records it as `kind`; serves the queues it freed stock for. Never refused.
local function settle(id, h, change, kind)
  retire(id, h, kind, function()
    move_lines(id, h[3], h[4], change, kind)
  end)
end

-- Commits `part_skus`, `part_qtys` of the open hold `id` and releases the rest
-- (`rest_skus`, `rest_qtys`; may be empty), in that order of events: the rest first, so
-- queued waiters are served from it; the hold resolves once, as committed.
local function settle_partial(id, h, part_skus, part_qtys, rest_skus, rest_qtys)
  retire(id, h, 'committed', function()
    if #rest_skus > 0 then
      move_lines(id, rest_skus, rest_qtys, 'release', 'released')
    end
    move_lines(id, part_skus, part_qtys, 'commit', 'committed')
  end)
end

-- Expires up to BATCH_MAX holds due now, in deadline order; returns them as hold replies.
local function expire_due()
  local due = call('ZRANGEBYSCORE', K_DEADLINES, '-inf', NOW, 'LIMIT', 0, BATCH_MAX)
  local expired = {}
  for _ = 1, #due do
    local id = due[_]
    local h = hold_of(id)
    if h then
      settle(id, h, 'release', 'expired')
      expired[#expired + 1] = hold_reply(id, h[1], h[3], h[4])
    else
      call('ZREM', K_DEADLINES, id)
    end
  end
  return expired
end

-- Reads the request lines, SKU, quantity pairs (merged and sorted by the client), from
-- ARGV[first] to the end. Quantities above QUANTITY_MAX stay large: they are refused.
local function read_lines(first)
  local skus, qtys = {}, {}
  local i = 1
  for at = first, #ARGV - 1, 2 do
    skus[i], qtys[i] = ARGV[at], tonumber(ARGV[at + 1])
    i = i + 1
  end
  return skus, qtys
end

-- The call's reply (see the head of this file): the status alone when `payload` (nil for
-- none) and the events are empty, else {status, #payload, payload..., events...}.
-- (`answer_hold` writes a hold's reply without the payload table.)
local function answer(status, payload)
  local np, ne = payload and #payload or 0, #events
  if np == 0 and ne == 0 then
    return status
  end
  local reply = { status, np }
  for i = 1, np do
    reply[i + 2] = payload[i]
  end
  for i = 1, ne do
    reply[np + 2 + i] = events[i]
  end
  return reply
end

-- The answer to a request of the lines `skus`, `qtys` with the idempotency key `key` seen
-- before, or nil when the key is new: {"replay", hold} while its hold is open (with its
-- current deadline), {"hold_ended", {id, outcome}} once it ended, {"idempotency_conflict",
-- {id}} for other lines. A replay or an ended hold counts as a replay.
keyed_answer = function(key, skus, qtys)
  local packed = call('HGET', K_KEYS, key)
  if not packed then
    return nil
  end
  local entry = cmsgpack.unpack(packed)
  local same = #entry[4] == #skus
  for i = 1, #skus do
    same = same and entry[4][i] == skus[i] and entry[5][i] == qtys[i]
  end
  if not same then
    return answer('idempotency_conflict', { entry[1] })
  end
  count('replays')
  if entry[2] == 'resolved' and entry[6] then
    return answer('hold_ended', { entry[1], entry[6] })
  end
  local open = entry[2] == 'open' and hold_of(entry[1])
  local at = open and open[1] or entry[3]
  return answer('replay', hold_reply(entry[1], at, entry[4], entry[5]))
end

-- Records the new hold `id` of the lines `skus`, `qtys` (their stock already held), with
-- its deadline (us, 0: none) in the expiry index and its idempotency key ("": none), and
-- counts it; returns the reserve script's answer: "ok" (the caller drew the id and knows
-- the lines and deadline), with the events when the caller wants them.
local function open_hold(id, deadline, key, skus, qtys)
  call('HSET', K_HOLDS, id, cmsgpack.pack({ deadline, key, skus, qtys }))
  if deadline > 0 then
    call('ZADD', K_DEADLINES, int(deadline), id)
  end
  count('reserves')
  return answer('ok')
end

-- The call's reply with the hold {id, deadline_us, SKU, quantity, ...} as its payload.
local function answer_hold(status, id, deadline, skus, qtys)
  local n = #skus
  local reply = { status, 2 + 2 * n, id, deadline }
  for i = 1, n do
    reply[3 + 2 * i], reply[4 + 2 * i] = skus[i], qtys[i]
  end
  local first = 4 + 2 * n
  for i = 1, #events do
    reply[first + i] = events[i]
  end
  return reply
end

-- Checks every line for `change` ("reserve" or "sell") without writing. Waiters come
-- first: when a SKU of the request has a queue, the waiters whose lease ran out leave
-- (sweep_leases), its queue is served, and a SKU with waiters left offers nothing (no barging).
-- When stock is short, the same and the due holds' expiry run once, then every line is
-- checked again. The common case (no queue, stock enough) reads each level and each queue
-- length once. Returns the lines' levels before and after the change, or nil and the
-- refusal {status, {line index, ...}}.
local function check_lines(skus, qtys, change)
  local levels = {}
  for i = 1, #skus do
    local sku = skus[i]
    levels[i] = level_of(sku)
    if not levels[i] then
      return nil, { 'unknown_sku', { i } }
    end
  end
  local swept = false
  while true do
    local waiting = nil
    for i = 1, #skus do
      local sku = skus[i]
      if levels[i][5] > 0 then
        waiting = waiting or {}
        waiting[#waiting + 1] = sku
      end
    end
    local withheld = NONE
    if waiting then
      withheld = {}
      sweep_leases()
      serve(waiting)
      for i = 1, #skus do
        local sku = skus[i]
        levels[i] = level_of(sku)
        withheld[i] = levels[i][5] > 0 and QUANTITY_MAX or 0
      end
    end
    local refusal = nil
    local after = {}
    for i = 1, #skus do
      local l, why, available = apply(levels[i], change, qtys[i], withheld[i] or 0)
      if not l then
        refusal = { why, { i, available or 0 } }
        break
      end
      after[i] = l
    end
    if not refusal then
      return levels, after
    end
    local retry = false
    if refusal[1] == 'insufficient' and not swept then
      -- Short: give back what is due; check again when anything came back.
      swept = true
      retry = sweep_leases() + #expire_due() > 0
    end
    if not retry then
      count('refusals')
      return nil, refusal
    end
    for i = 1, #skus do
      local sku = skus[i]
      levels[i] = level_of(sku)
    end
  end
end
