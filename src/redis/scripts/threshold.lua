-- threshold.lua: sets a SKU's low-stock threshold (0 removes it); no version change.
-- ARGV (after the common head of common.lua): 4 SKU, 5 threshold.
-- Reply: {"ok", {}, {}} | {"unknown_sku", {1}, {}}.
local sku = ARGV[4]
local l = level_of(sku)
if not l then
  return answer('unknown_sku', { 1 })
end
l[4] = tonumber(ARGV[5])
store_level(sku, l)
return answer('ok')
