-- The bare peer of RedisStore::sell (benches/redis.rs, examples/redis_script_cost.rs):
-- DECRBY when the counter holds enough. KEYS[1] the SKU's counter; ARGV[1] units.
-- Reply: 1 sold, 0 refused.
local available = tonumber(redis.call('GET', KEYS[1]) or '0')
local units = tonumber(ARGV[1])
if available < units then
  return 0
end
redis.call('DECRBY', KEYS[1], units)
return 1
