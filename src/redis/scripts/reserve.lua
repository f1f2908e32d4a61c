-- reserve.lua: holds every line, all or nothing, or answers from an idempotency key.
-- ARGV (after the common head of common.lua): 3 the new hold's id (drawn by the store), 4
-- deadline (us, 0: none), 5 idempotency key ("": none); with a key, 6 idempotency
-- retention (us) and 7 idempotency keys max; then the lines: pairs SKU, quantity (merged,
-- sorted).
-- Reply: {"ok", {}, events}: the hold `id` is open (the caller knows its lines and
--        deadline, it sent them)
--      | {"replay", hold, {}}                 the key's reservation, nothing more held
--      | {"idempotency_conflict", {id}, {}}   the key was used with other lines
--      | {"hold_ended", {id, outcome}, {}}    the key's hold ended: outcome "committed",
--                                             "released" or "expired"; nothing held
--      | {"id_taken", {}, {}}                 the id is an open hold's: draw another
--      | {"unknown_sku" | "overflow", {line}, events}
--      | {"insufficient", {line, available}, events}
-- with hold = {id, deadline_us, SKU, quantity, ...}. A refusal's events are those of due
-- holds it expired while checking.
local id, deadline, key = ARGV[3], tonumber(ARGV[4]), ARGV[5]
if call('HEXISTS', K_HOLDS, id) == 1 then
  return answer('id_taken')
end
-- The common case first: one line, no key, no one queued, stock enough. The same steps as
-- below (apply's rules for a hold: enough available, version + reserved within
-- QUANTITY_MAX) on the level's five numbers, without the general path's tables and loops;
-- anything else takes the general path.
if key == '' and #ARGV == 7 then
  local sku, q = ARGV[6], tonumber(ARGV[7])
  local packed = call('HGET', K_LEVELS, sku)
  if packed then
    local o, r, v, t, w = sunpack('<ddddd', packed)
    if w == 0 and q <= o - r and v + 1 + r + q <= QUANTITY_MAX then
      local available_before = o - r
      r, v = r + q, v + 1
      call('HSET', K_LEVELS, sku, spack('<ddddd', o, r, v, t, w))
      append('reserved', id, q, o, r, v, sku)
      if replied then
        push_event('reserved', id, sku, q, o, r, v)
      end
      crossed(sku, available_before, o - r, t, v)
      return open_hold(id, deadline, key, { sku }, { q })
    end
  end
end
local skus, qtys = read_lines(key == '' and 6 or 8)
if key ~= '' then
  -- Forgetting keys past their retention first keeps the key's meaning exact (as in
  -- memory); it is housekeeping, not a change of this call.
  prune_keys(ARGV[6], ARGV[7])
  local seen = keyed_answer(key, skus, qtys)
  if seen then
    return seen
  end
end
local levels, after = check_lines(skus, qtys, 'reserve')
if not levels then
  return answer(after[1], after[2])
end
push_key(id, key)
for i = 1, #skus do
  local sku = skus[i]
  store_level(sku, after[i])
  record('reserved', id, sku, qtys[i], after[i], true)
end
for i = 1, #skus do
  local sku = skus[i]
  local l = levels[i]
  low_stock(sku, l[1] - l[2], after[i])
end
if key ~= '' then
  call('HSET', K_KEYS, key, cmsgpack.pack({ id, 'open', deadline, skus, qtys }))
end
return open_hold(id, deadline, key, skus, qtys)
