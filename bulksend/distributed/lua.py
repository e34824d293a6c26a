"""The Lua scripts of the shared gate. Each runs atomically inside Redis and reads Redis's own
clock (``TIME``), so workers on machines whose clocks disagree still share one timeline.

Keys: ``KEYS[1]`` the group's log (ZSET: admission id -> admission time in seconds),
``KEYS[2]`` its state (HASH). State fields:

* ``epoch``  -- set when the state is created. A worker that sees a different epoch than last
  time knows Redis lost the state (a restart without persistence) and writes its own recent
  admissions back (``RESEED``) before it is admitted again.
* ``tat``    -- the shared GCRA's theoretical arrival time: sends are spaced ``(W + m) / L``
  apart across all workers, so the quota is spread over the window instead of bursting.
* ``hold``   -- admit nothing before this time: a Retry-After or a 429 reported by any worker,
  an exhausted Remaining that the log cannot explain, or the grace after a restart.
* ``limit``  -- the limit the provider announced in its headers (tightens every worker's own).
* ``seeded`` -- the first reseed of this epoch has happened (and set the grace hold).

Times are formatted with ``%.6f`` because Redis turns Lua numbers into integers in replies.
"""

from __future__ import annotations

__all__ = ["ADMIT", "PAUSE", "RESEED"]

_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function f(x) return string.format('%.6f', x) end
local function keep(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
"""

#: ARGV: limit, window, margin, member, known epoch, ttl (ms), slack (s), horizon (s)
#: -> {1 admitted | 0 wait | -1 epoch changed, now, epoch, wait}
ADMIT = (
    _PRELUDE
    + """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local margin = tonumber(ARGV[3])
local ttl = tonumber(ARGV[6])
local slack = tonumber(ARGV[7])
local horizon = tonumber(ARGV[8])
local st = redis.call('HMGET', KEYS[2], 'epoch', 'hold', 'limit', 'tat')
local epoch = st[1]
if not epoch then
  epoch = t[1] .. '.' .. t[2]
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
keep(KEYS[2], ttl)
if epoch ~= ARGV[5] then
  return {-1, f(now), epoch, '0'}
end
local shared = tonumber(st[3])
if shared and shared < limit then limit = shared end
if limit < 1 then limit = 1 end
local span = window + margin
local wait = 0
local hold = tonumber(st[2])
if hold and hold - now > wait then wait = hold - now end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', f(now - window - horizon))
local inside = redis.call('ZCOUNT', KEYS[1], '(' .. f(now - span), '+inf')
if inside >= limit then
  local total = redis.call('ZCARD', KEYS[1])
  local e = redis.call('ZRANGE', KEYS[1], total - limit, total - limit, 'WITHSCORES')
  local w = tonumber(e[2]) + span - now
  if w > wait then wait = w end
end
local tat = tonumber(st[4]) or 0
if tat - now > wait then wait = tat - now end
if wait > 0 then
  return {0, f(now), epoch, f(wait)}
end
if tat < now - slack then tat = now - slack end
redis.call('ZADD', KEYS[1], f(now), ARGV[4])
redis.call('HSET', KEYS[2], 'tat', f(tat + span / limit))
keep(KEYS[1], ttl)
return {1, f(now), epoch, '0'}
"""
)

#: ARGV: pause seconds ('' for none), announced limit ('' for none), ttl (ms), and for a pause
#: that an exhausted Remaining asks for: remaining, limit, admission time of that request, W + m
#: ('' when the pause is a Retry-After or a 429) -> 1 when the pause was applied, else 0
PAUSE = (
    _PRELUDE
    + """
local ttl = tonumber(ARGV[3])
local apply = ARGV[1] ~= ''
if apply and ARGV[4] ~= '' then
  -- Remaining says the server counted more than the log admitted in the window before that
  -- request: traffic the log does not know about (another client on the key). Otherwise the
  -- log already keeps the next send out of the server's window, and nobody needs to stop.
  local at = tonumber(ARGV[6])
  local used = redis.call('ZCOUNT', KEYS[1], '(' .. f(at - tonumber(ARGV[7])), f(at))
  apply = tonumber(ARGV[5]) - tonumber(ARGV[4]) > used
end
if apply then
  local till = now + tonumber(ARGV[1])
  local hold = tonumber(redis.call('HGET', KEYS[2], 'hold')) or 0
  if till > hold then
    redis.call('HSET', KEYS[2], 'hold', f(till))
    keep(KEYS[2], math.ceil((till - now) * 1000) + ttl)
  end
end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[2], 'limit', ARGV[2])
end
keep(KEYS[2], ttl)
if apply then return 1 end
return 0
"""
)

#: ARGV: epoch, grace (s), ttl (ms), then score, member pairs -> 1 done | 0 epoch changed again
RESEED = (
    _PRELUDE
    + """
local ttl = tonumber(ARGV[3])
if redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[1] then
  return 0
end
if not redis.call('HGET', KEYS[2], 'seeded') then
  redis.call('HSET', KEYS[2], 'seeded', '1')
  local till = now + tonumber(ARGV[2])
  local hold = tonumber(redis.call('HGET', KEYS[2], 'hold')) or 0
  if till > hold then redis.call('HSET', KEYS[2], 'hold', f(till)) end
end
for i = 4, #ARGV - 1, 2 do
  redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
end
keep(KEYS[1], ttl)
keep(KEYS[2], ttl)
return 1
"""
)
