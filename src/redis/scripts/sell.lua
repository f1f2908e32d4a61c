-- sell.lua: sells every line without a hold, all or nothing.
-- ARGV (after the common head of common.lua): from 3 the lines, pairs SKU, quantity
-- (merged, sorted).
-- Reply: {"ok", {}, events} | {"unknown_sku" | "overflow", {line}, events}
--      | {"insufficient", {line, available}, events}
-- The common case (one line, no one queued, stock enough) is sell_one.lua's, on three
-- keys; the store sends this script when that one answered "general".
local skus, qtys = read_lines(3)
local levels, after = check_lines(skus, qtys, 'sell')
if not levels then
  return answer(after[1], after[2])
end
for i = 1, #skus do
  local sku = skus[i]
  store_level(sku, after[i])
  record('sold', '0', sku, qtys[i], after[i], true)
end
for i = 1, #skus do
  local sku = skus[i]
  local l = levels[i]
  low_stock(sku, l[1] - l[2], after[i])
end
return answer('ok')
