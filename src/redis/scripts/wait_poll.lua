-- wait_poll.lua: a queued waiter's heartbeat: renews its lease, serves the queue it waits
-- in, and hands it its hold once granted: the hold opens with its deadline in this call
-- (a grant is final only once its waiter has it; one nobody picks up goes back when the
-- waiter's lease runs out).
-- ARGV (after the common head of common.lua): 3 waiter id, 4 "poll" | "cancel", 5 lease
-- (us). With "cancel" a waiter not granted yet leaves its queue and gives back every line
-- it held (the turn passes on); a granted one gets its hold.
-- Reply: {"granted", {deadline_us}, events}   the hold `id` is open, the caller has it
--      | {"queued", {last wake}, events}      see wait_begin
--      | {"timeout", {}, events}
--      | {"gone", {}, {}}  the waiter left: its lease ran out, or an overflow refused it
--      | {"replay" | "idempotency_conflict" | "hold_ended", ..., events}  a keyed waiter
--        whose key another call used meanwhile: it held nothing (see claim)
local id, action, lease = ARGV[3], ARGV[4], tonumber(ARGV[5])
local w = waiter_of(id)
if not w then
  return answer('gone')
end
if w[4] > #w[2] then
  local deadline, seen = claim(w)
  return seen or answer('granted', { deadline })
end
if action == 'cancel' then
  count('timeouts')
  serve(drop_waiter(w))
  return answer('timeout')
end
w[5] = server_now() + lease
store_waiter(w)
call('ZADD', K_LEASES, int(w[5]), id)
sweep_leases()
serve({ w[2][w[4]] })
w = waiter_of(id)
if not w then
  return answer('gone')
end
if w[4] > #w[2] then
  local deadline, seen = claim(w)
  return seen or answer('granted', { deadline })
end
return answer('queued', { last_wake() })
