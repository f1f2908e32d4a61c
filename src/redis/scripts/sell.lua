-- sell.lua: sells every line without a hold, all or nothing.
-- ARGV (after the common head of common.lua): 6 number of lines n, then n pairs SKU,
-- quantity (merged, sorted).
-- Reply: {"ok", {}, events} | {"unknown_sku" | "overflow", {line}, events}
--      | {"insufficient", {line, available}, events}
local skus, qtys = read_lines(6)
local levels, refused = check_lines(skus, qtys, 'sell')
if not levels then
  refused[3] = events
  return refused
end
local before = {}
for i, sku in ipairs(skus) do
  local l = levels[i]
  before[i] = l.o - l.r
  l = apply(l, 'sell', qtys[i], 0)
  store_level(sku, l)
  record('sold', 0, sku, qtys[i], l, true)
  levels[i] = l
end
for i, sku in ipairs(skus) do
  low_stock(sku, before[i], levels[i])
end
return { 'ok', {}, events }
