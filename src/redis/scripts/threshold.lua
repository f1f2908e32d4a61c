-- threshold.lua: sets a SKU's low-stock threshold (0 removes it); no version change.
-- ARGV (after the common head of common.lua): 3 SKU, 4 threshold.
-- Reply: {"ok", {}, {}} | {"unknown_sku", {1}, {}}.
local sku = ARGV[3]
local l = level_of(sku)
if not l then
  return answer('unknown_sku', { 1 })
end
l[4] = tonumber(ARGV[4])
store_level(sku, l)
return answer('ok')
