-- expire_due.lua: expires up to BATCH_MAX holds due now, in deadline order, and forgets
-- idempotency keys past their retention, and drops the waiters whose lease ran out
-- (queued or granted, in any queue: their lines go back).
-- ARGV (after the common head of common.lua): 3 idempotency retention (us), 4 idempotency
-- keys max.
-- Reply: {"ok", {hold, ...}, events} with hold = {id, deadline_us, SKU, quantity, ...};
-- fewer than BATCH_MAX holds means none is left due.
prune_keys(ARGV[3], ARGV[4])
sweep_leases()
return answer('ok', expire_due())
