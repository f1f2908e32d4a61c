-- resolve.lua: commits or releases an open hold, or expires it when past its deadline.
-- ARGV (after the common head of common.lua): 3 id, 4 "commit" | "release".
-- Reply: {"ok", hold, events} | {"expired", hold, events} | {"unknown_reservation", {}, {}}
-- with hold = {id, deadline_us, SKU, quantity, ...} as it was when resolved.
local id, change = ARGV[3], ARGV[4]
local h = hold_of(id)
if not h then
  return answer('unknown_reservation')
end
if h[1] > 0 and tonumber(NOW) >= h[1] then
  settle(id, h, 'release', 'expired')
  return answer_hold('expired', id, h[1], h[3], h[4])
end
settle(id, h, change, change == 'commit' and 'committed' or 'released')
return answer_hold('ok', id, h[1], h[3], h[4])
