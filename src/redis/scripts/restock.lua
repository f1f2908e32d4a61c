-- restock.lua: adds units to a SKU, creating it when absent; serves its waiters.
-- ARGV (after the common head of common.lua): 4 SKU, 5 quantity (at least 1).
-- Reply: {"ok", {on_hand, reserved, version}, events} | {"overflow", {}, {}}.
local sku, q = ARGV[4], tonumber(ARGV[5])
local before = level_of(sku) or { o = 0, r = 0, v = 0, t = 0, w = 0 }
local l = apply(before, 'restock', q, 0)
if not l then
  return answer('overflow')
end
store_level(sku, l)
record('restocked', 0, sku, q, l, true)
reclaim()
serve({ sku })
low_stock(sku, before.o - before.r)
return answer('ok', { l.o, l.r, l.v })
