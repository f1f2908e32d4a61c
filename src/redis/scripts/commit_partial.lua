-- commit_partial.lua: commits part of an open hold and releases the rest in one call, or
-- expires the hold when past its deadline. The lines are checked against the hold before
-- the first write: a refusal changes nothing and the hold stays open.
-- ARGV (after the common head of common.lua): 3 id, from 4 the lines to commit, pairs SKU,
-- quantity (merged, sorted, each at least 1).
-- Reply: {"ok", hold, events} | {"expired", hold, events} | {"unknown_reservation", {}, {}}
--      | {"not_in_hold", {line}, {}} | {"above_hold", {line, held}, {}}
-- with hold = {id, deadline_us, SKU, quantity, ...} as it was made.
local id = ARGV[3]
local h = hold_of(id)
if not h then
  return answer('unknown_reservation')
end
local skus, qtys = read_lines(4)
local held = {}
for i = 1, #h[3] do
  held[h[3][i]] = h[4][i]
end
for i = 1, #skus do
  local q = held[skus[i]]
  if not q then
    return answer('not_in_hold', { i })
  end
  if qtys[i] > q then
    return answer('above_hold', { i, q })
  end
end
if h[1] > 0 and tonumber(NOW) >= h[1] then
  settle(id, h, 'release', 'expired')
  return answer_hold('expired', id, h[1], h[3], h[4])
end
local taken = {}
for i = 1, #skus do
  taken[skus[i]] = qtys[i]
end
local rest_skus, rest_qtys = {}, {}
for i = 1, #h[3] do
  local left = h[4][i] - (taken[h[3][i]] or 0)
  if left > 0 then
    rest_skus[#rest_skus + 1], rest_qtys[#rest_qtys + 1] = h[3][i], left
  end
end
settle_partial(id, h, skus, qtys, rest_skus, rest_qtys)
return answer_hold('ok', id, h[1], h[3], h[4])
