-- wait_begin.lua: starts a waiting reservation (WaitingStore::reserve_timeout): takes the
-- lines in ascending SKU order while stock is there and no one queues before it, and
-- queues on the first line it cannot take (FIFO per SKU, no barging). Granted at once,
-- the waiter has its hold in this call: it opens with its deadline here.
-- ARGV (after the common head of common.lua): 3 the waiter's id (its hold's id, drawn by
-- the store), 4 lease (us), 5 the hold's TTL (us, 0: none), 6 idempotency key ("": none),
-- 7 idempotency retention (us), 8 idempotency keys max, 9 wait units max (-1: no bound);
-- from 10 the lines, pairs SKU, quantity (merged, sorted). A key seen before answers at once, as reserve.lua does (no
-- waiting); a new key waits, and is remembered once its waiter has its hold.
-- Reply: {"granted", {deadline_us}, events}   the hold `id` is open, the caller has it
--      | {"replay", hold, events} | {"idempotency_conflict", {id}, events}
--      | {"hold_ended", {id, outcome}, events}  the key was seen: see reserve.lua
--      | {"queued", {last wake}, events}      poll with wait_poll after the wake-up
--                                             stream's entry `last wake`
--      | {"id_taken", {}, {}}                 the id is taken: draw another
--      | {"unknown_sku", {line}, {}}          nothing held, nothing queued
--      | {"wait_too_large", {line, on_hand}, {}}  a line for more than its SKU's on hand
--                                             plus the wait units max: nothing held,
--                                             nothing queued
--      | {"overflow", {line}, {}}             the lines held before it given back
local id, lease, ttl, key = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local skus, qtys = read_lines(10)
local wait_max = tonumber(ARGV[9])
if call('HEXISTS', K_HOLDS, id) == 1 or call('HEXISTS', K_WAITERS, id) == 1 then
  return answer('id_taken')
end
if key ~= '' then
  prune_keys(ARGV[7], ARGV[8])
  local seen = keyed_answer(key, skus, qtys)
  if seen then
    return seen
  end
end
local on_hands = {}
for i = 1, #skus do
  local l = level_of(skus[i])
  if not l then
    return answer('unknown_sku', { i })
  end
  on_hands[i] = l[1]
end
-- The waiter bound, as the monitor's: checked on every line before any is held or queued
-- (a line that would not wait is within it: on hand covers it). `qty - on_hand` is exact
-- for the quantities a level can hold.
if wait_max >= 0 then
  for i = 1, #skus do
    if qtys[i] - on_hands[i] > wait_max then
      return answer('wait_too_large', { i, int(on_hands[i]) })
    end
  end
end
-- A line is checked for overflow when the waiter gets to it, as in memory: a short line
-- waits (or times out) whatever its size, and an overflow on a later line gives the
-- earlier ones back (their versions move on by two, as the in-memory monitor's do). That
-- is the one refusal that writes; it needs a version near 2^53.
sweep_leases()
local w = { id, skus, qtys, 1, server_now() + lease, {}, '', ttl, key }
call('ZADD', K_LEASES, int(w[5]), id)
local outcome = advance(w)
if outcome == 'overflow' then
  local line = w[4]
  serve(drop_waiter(w))
  return answer('overflow', { line })
end
if outcome == 'granted' then
  local deadline, seen = claim(w)
  return seen or answer('granted', { deadline })
end
return answer('queued', { last_wake() })
