-- wait_begin.lua: starts a waiting reservation (WaitingStore::reserve_timeout): takes the
-- lines in ascending SKU order while stock is there and no one queues before it, and
-- queues on the first line it cannot take (FIFO per SKU, no barging).
-- ARGV (after the common head of common.lua): from 3 the lines, pairs SKU, quantity
-- (merged, sorted).
-- Reply: {"granted", {id, on_hand, reserved, version per line}, events}  the hold is open
--      | {"queued", {id}, events}           poll with wait_poll, give up with wait_cancel
--      | {"unknown_sku", {line}, {}}        nothing held, nothing queued
--      | {"overflow", {line}, {}}           lines held so far given back
local skus, qtys = read_lines(3)
for i = 1, #skus do
  local sku = skus[i]
  if not level_of(sku) then
    return answer('unknown_sku', { i })
  end
end
reclaim()
local id = call('INCR', K_SEQUENCE)
local w = { id, skus, qtys, 1, server_now() + LEASE_US, {} }
local outcome = advance(w)
if outcome == 'overflow' then
  local line = w[4]
  serve(drop_waiter(w, false))
  return answer('overflow', { line })
end
if outcome == 'granted' then
  local granted = PREFIX .. 'granted:' .. id_text(id)
  local levels = cmsgpack.unpack(call('GET', granted))
  call('DEL', granted, PREFIX .. 'wake:' .. id_text(id))
  call('ZREM', K_UNCLAIMED, id_text(id))
  table.insert(levels, 1, id)
  return answer('granted', levels)
end
return answer('queued', { id })
