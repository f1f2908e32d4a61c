-- sell.lua: sells every line without a hold, all or nothing.
-- ARGV (after the common head of common.lua): from 3 the lines, pairs SKU, quantity
-- (merged, sorted).
-- Reply: {"ok", {}, events} | {"unknown_sku" | "overflow", {line}, events}
--      | {"insufficient", {line, available}, events}
-- The common case first: one line, no one queued, stock enough. The same steps as below
-- (apply's rules for a sale: enough available, version + reserved within QUANTITY_MAX)
-- on the level's five numbers, without a table (less for Lua's collector); anything
-- else takes the general path.
if #ARGV == 4 then
  local sku, q = ARGV[3], tonumber(ARGV[4])
  local packed = call('HGET', K_LEVELS, sku)
  if packed then
    local o, r, v, t, w = sunpack('<ddddd', packed)
    if w == 0 and q <= o - r and v + 1 + r <= QUANTITY_MAX then
      local available_before = o - r
      o, v = o - q, v + 1
      call('HSET', K_LEVELS, sku, spack('<ddddd', o, r, v, t, w))
      append('sold', '0', q, o, r, v, sku)
      if replied then
        push_event('sold', '0', sku, q, o, r, v)
      end
      crossed(sku, available_before, o - r, t, v)
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
  record('sold', '0', sku, qtys[i], after[i], true)
end
for i = 1, #skus do
  local sku = skus[i]
  local l = levels[i]
  low_stock(sku, l[1] - l[2], after[i])
end
return answer('ok')
