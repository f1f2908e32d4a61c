-- extend.lua: gives an open hold a new deadline, or expires it when already past its own.
-- ARGV (after the common head of common.lua): 3 id, 4 new deadline (us, 0: none).
-- Reply: {"ok", hold, {}} | {"expired", hold, events} | {"unknown_reservation", {}, {}}
-- with hold = {id, deadline_us, SKU, quantity, ...}.
local id, deadline = ARGV[3], tonumber(ARGV[4])
local h = hold_of(id)
if not h then
  return answer('unknown_reservation')
end
if h[1] > 0 and tonumber(NOW) >= h[1] then
  settle(id, h, 'release', 'expired')
  return answer_hold('expired', id, h[1], h[3], h[4])
end
h[1] = deadline
call('HSET', K_HOLDS, id, cmsgpack.pack(h))
if deadline > 0 then
  call('ZADD', K_DEADLINES, int(deadline), id)
else
  call('ZREM', K_DEADLINES, id)
end
count('extensions')
return answer_hold('ok', id, deadline, h[3], h[4])
