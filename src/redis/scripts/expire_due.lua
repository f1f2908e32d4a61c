-- expire_due.lua: expires up to BATCH_MAX holds due now, in deadline order, and forgets
-- idempotency keys past their retention and grants no waiter picked up (reclaim).
-- ARGV: the common head of common.lua only.
-- Reply: {"ok", {hold, ...}, events} with hold = {id, deadline_us, SKU, quantity, ...};
-- fewer than BATCH_MAX holds means none is left due.
prune_keys()
reclaim()
return { 'ok', expire_due(), events }
