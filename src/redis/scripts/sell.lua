-- sell.lua: sells every line without a hold, all or nothing.
-- ARGV (after the common head of common.lua): from 3 the lines, pairs SKU, quantity
-- (merged, sorted).
-- Reply: {"ok", {}, events} | {"unknown_sku" | "overflow", {line}, events}
--      | {"insufficient", {line, available}, events}
-- The common case first: one line, no one queued, stock enough. The same steps as below
-- without their tables (less for Lua's collector); anything else takes the general path.
if #ARGV == 4 then
  local sku, q = ARGV[3], tonumber(ARGV[4])
  local l = level_of(sku)
  if l and l[5] == 0 then
    local after = apply(l, 'sell', q, 0)
    if after then
      store_level(sku, after)
      record('sold', 0, sku, q, after, true)
      low_stock(sku, l[1] - l[2], after)
      return answer('ok')
    end
  end
end
local skus, qtys = read_lines(3)
local levels, after = check_lines(skus, qtys, 'sell')
if not levels then
  return answer(after[1], after[2])
end
for i = 1, #skus do
  local sku = skus[i]
  store_level(sku, after[i])
  record('sold', 0, sku, qtys[i], after[i], true)
end
for i = 1, #skus do
  local sku = skus[i]
  local l = levels[i]
  low_stock(sku, l[1] - l[2], after[i])
end
return answer('ok')
