-- lookup.lua: reads the open hold `id` as it is now (StockStore::reservation); writes
-- nothing and records no answer (a read: the function is registered `no-writes`).
-- ARGV (after the common head of common.lua): 3 id.
-- Reply: {"ok", hold, {}} with hold = {id, deadline_us, SKU, quantity, ...}
--      | {"unknown_reservation", {}, {}}   never issued, ended, or past its deadline (the
--                                          next call that finds it expires it)
local id = ARGV[3]
local h = hold_of(id)
if not h or (h[1] > 0 and tonumber(NOW) >= h[1]) then
  return answer('unknown_reservation')
end
return answer_hold('ok', id, h[1], h[3], h[4])
