-- sell_one.lua: the common case of a one-line sale, on three keys (begin_one in
-- common.lua): the SKU is known, no one is queued on it, it has stock enough and the
-- version stays within QUANTITY_MAX (apply's rules for a sale). Anything else writes
-- nothing and answers "general": the store then sends the general sell.lua, which
-- declares every key (it may serve queues, expire due holds, count a refusal).
-- KEYS: 1 levels, 2 events, 3 the requests hash.
-- ARGV (after the common head of common.lua): 3 SKU, 4 quantity.
-- Reply: {"ok", {}, events} (recorded under the request id) | "general" (not recorded:
-- nothing happened, and a resend answers "general" again).
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
    return record_reply(answer('ok'))
  end
end
return 'general'
