-- wait_poll.lua: a queued waiter's heartbeat: renews its lease, serves the queue it waits
-- in (a head whose process died leaves), and answers whether it was granted.
-- ARGV (after the common head of common.lua): 3 waiter id, 4 "poll" | "cancel".
-- With "cancel" a waiter not granted yet leaves its queue and gives back every line it
-- held (the turn passes on).
-- Reply: {"granted", {id, on_hand, reserved, version per line}, events}
--      | {"queued", {id}, events} | {"timeout", {}, events}
--      | {"gone", {}, {}}  the waiter left: its lease ran out, or an overflow refused it
local id, action = tonumber(ARGV[3]), ARGV[4]
local granted = PREFIX .. 'granted:' .. id_text(id)
local function take_grant()
  local packed = call('GET', granted)
  if not packed then
    return nil
  end
  call('DEL', granted, PREFIX .. 'wake:' .. id_text(id))
  call('ZREM', K_UNCLAIMED, id_text(id))
  local levels = cmsgpack.unpack(packed)
  table.insert(levels, 1, id)
  return answer('granted', levels)
end
local done = take_grant()
if done then
  return done
end
local w = waiter_of(id)
if not w then
  return answer('gone')
end
if action == 'cancel' then
  count('timeouts')
  serve(drop_waiter(w, false))
  call('DEL', PREFIX .. 'wake:' .. id_text(id))
  return answer('timeout')
end
w[5] = server_now() + LEASE_US
store_waiter(w)
reclaim()
serve({ w[2][w[4]] })
return take_grant() or answer('queued', { id })
