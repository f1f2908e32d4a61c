-- reserve.lua: holds every line, all or nothing, or answers from an idempotency key.
-- ARGV (after the common head of common.lua): 6 deadline (us, 0: none), 7 idempotency
-- key ("": none), 8 number of lines n, then n pairs SKU, quantity (merged, sorted).
-- Reply: {"ok", hold, events} with hold = {id, deadline_us, SKU, quantity, ...}
--      | {"replay", hold, {}}                 the key's reservation, nothing more held
--      | {"idempotency_conflict", {id}, {}}   the key was used with other lines
--      | {"unknown_sku" | "overflow", {line}, events}
--      | {"insufficient", {line, available}, events}
-- A refusal's events are those of due holds it expired while checking.
local deadline, key = tonumber(ARGV[6]), ARGV[7]
local skus, qtys = read_lines(8)
if key ~= '' then
  prune_keys()
  local packed = redis.call('HGET', K_KEYS, key)
  if packed then
    local entry = cmsgpack.unpack(packed)
    local same = #entry[4] == #skus
    for i = 1, #skus do
      same = same and entry[4][i] == skus[i] and entry[5][i] == qtys[i]
    end
    if not same then
      return { 'idempotency_conflict', { entry[1] }, {} }
    end
    count('replays')
    local open = entry[2] == 'open' and hold_of(entry[1])
    local at = open and open[1] or entry[3]
    return { 'replay', hold_reply(entry[1], at, entry[4], entry[5]), {} }
  end
end
local levels, refused = check_lines(skus, qtys, 'reserve')
if not levels then
  refused[3] = events
  return refused
end
local id = redis.call('INCR', K_SEQUENCE)
local before = {}
for i, sku in ipairs(skus) do
  local l = levels[i]
  before[i] = l.o - l.r
  l = apply(l, 'reserve', qtys[i], 0)
  store_level(sku, l)
  record('reserved', id, sku, qtys[i], l, true)
  levels[i] = l
end
for i, sku in ipairs(skus) do
  low_stock(sku, before[i], levels[i])
end
redis.call('HSET', K_HOLDS, int(id), cmsgpack.pack({ deadline, key, skus, qtys }))
if deadline > 0 then
  redis.call('ZADD', K_DEADLINES, int(deadline), int(id))
end
if key ~= '' then
  redis.call('HSET', K_KEYS, key, cmsgpack.pack({ id, 'open', deadline, skus, qtys }))
end
count('reserves')
return { 'ok', hold_reply(id, deadline, skus, qtys), events }
