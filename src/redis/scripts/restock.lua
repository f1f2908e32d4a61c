-- restock.lua: adds units to a SKU, creating it when absent; serves its waiters.
-- ARGV (after the common head of common.lua): 3 SKU, 4 quantity (at least 1).
-- Reply: {"ok", {on_hand, reserved, version}, events} | {"overflow", {}, {}}.
local sku, q = ARGV[3], tonumber(ARGV[4])
local before = level_of(sku) or { 0, 0, 0, 0, 0 }
local l = apply(before, 'restock', q, 0)
if not l then
  return answer('overflow')
end
store_level(sku, l)
record('restocked', '0', sku, q, l, true)
sweep_leases()
serve({ sku })
low_stock(sku, before[1] - before[2])
return answer('ok', { l[1], l[2], l[3] })
