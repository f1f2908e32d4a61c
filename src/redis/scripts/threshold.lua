-- threshold.lua: sets a SKU's low-stock threshold (0 removes it); no version change.
-- ARGV (after the common head of common.lua): 6 SKU, 7 threshold.
-- Reply: {"ok", {}, {}} | {"unknown_sku", {1}, {}}.
local sku = ARGV[6]
local l = level_of(sku)
if not l then
  return { 'unknown_sku', { 1 }, {} }
end
l.t = tonumber(ARGV[7])
store_level(sku, l)
return { 'ok', {}, {} }
