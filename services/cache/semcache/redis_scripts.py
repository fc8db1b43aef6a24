"""Lua scripts of the Redis store: each change is one atomic round trip.

Layout under the prefix ``P`` (a hash tag, so a Redis Cluster keeps it on one slot;
the scripts derive entry keys from ids, which only a single slot allows):

====================  ======  =====================================================
``P e:<id>``          hash    ns key prompt vec(float32 bytes) resp created exp up
                              xk nk hv; PEXPIRE = the entry's TTL
``P x:<digest>``      string  exact key -> entry id (same TTL)
``P n:<digest>``      zset    a namespace's entry ids, score = expiry
``P lru``             zset    entry id, score = last use (eviction order)
``P exp``             zset    entry id, score = expiry (live count, scans)
``P stream``          stream  changes: add (id ns vec exp), del (id ns), dropns (ns),
                              clear; ``XADD MAXLEN ~``
``P epoch``           string  random; a new value means the data was wiped
====================  ======  =====================================================

Every script takes KEYS = (lru, exp, stream) and ARGV = (prefix, stream maxlen,
...its own arguments). Entries that Redis has expired are cleaned out of the
sorted sets lazily: 32 per store, plus whatever a scan or a drop meets.
"""

from __future__ import annotations

_PRELUDE = """
local LRU, EXP, STREAM = KEYS[1], KEYS[2], KEYS[3]
local PREFIX, MAXLEN = ARGV[1], ARGV[2]

-- Remove one entry and what points at it; its namespace, or false if already gone.
local function drop(id, announce)
  local key = PREFIX .. 'e:' .. id
  local f = redis.call('HMGET', key, 'xk', 'nk', 'ns', 'hv')
  redis.call('ZREM', LRU, id)
  redis.call('ZREM', EXP, id)
  if not f[3] then return false end
  redis.call('DEL', key)
  if f[1] and f[1] ~= '' and redis.call('GET', f[1]) == id then redis.call('DEL', f[1]) end
  redis.call('ZREM', f[2], id)
  if announce and f[4] == '1' then
    redis.call('XADD', STREAM, 'MAXLEN', '~', MAXLEN, '*', 'op', 'del', 'id', id, 'ns', f[3])
  end
  return f[3]
end
"""

# ARGV[3..]: id ns key prompt vec resp created expires upstream ttl_ms now max_entries xk nk
# Returns {replaced id or '', evicted id, its namespace, evicted id, its namespace, ...}.
PUT = (
    _PRELUDE
    + """
local id, ns, vec = ARGV[3], ARGV[4], ARGV[7]
local expires, ttl_ms, now = ARGV[10], ARGV[12], ARGV[13]
local max_entries, xk, nk = tonumber(ARGV[14]), ARGV[15], ARGV[16]
for _, old in ipairs(redis.call('ZRANGEBYSCORE', EXP, '-inf', now, 'LIMIT', 0, 32)) do
  drop(old, true)
end
redis.call('ZREMRANGEBYSCORE', nk, '-inf', now)
local out = {''}
if xk ~= '' then
  local old = redis.call('GET', xk)
  if old and drop(old, true) then out[1] = old end
end
local hv = '0'
if vec ~= '' then hv = '1' end
local key = PREFIX .. 'e:' .. id
redis.call('HSET', key, 'ns', ns, 'key', ARGV[5], 'prompt', ARGV[6], 'vec', vec,
  'resp', ARGV[8], 'created', ARGV[9], 'exp', expires, 'up', ARGV[11],
  'xk', xk, 'nk', nk, 'hv', hv)
redis.call('PEXPIRE', key, ttl_ms)
if xk ~= '' then redis.call('SET', xk, id, 'PX', ttl_ms) end
redis.call('ZADD', nk, expires, id)
if redis.call('PTTL', nk) < tonumber(ttl_ms) then redis.call('PEXPIRE', nk, ttl_ms) end
redis.call('ZADD', LRU, now, id)
redis.call('ZADD', EXP, expires, id)
if hv == '1' then
  redis.call('XADD', STREAM, 'MAXLEN', '~', MAXLEN, '*',
    'op', 'add', 'id', id, 'ns', ns, 'vec', vec, 'exp', expires)
end
local over = redis.call('ZCARD', LRU) - max_entries
if over > 0 then
  for _, victim in ipairs(redis.call('ZRANGE', LRU, 0, over - 1)) do
    if victim ~= id then
      local victim_ns = drop(victim, true)
      if victim_ns then
        table.insert(out, victim)
        table.insert(out, victim_ns)
      end
    end
  end
end
return out
"""
)

# KEYS = (lru); ARGV = (exact pointer key, prefix, now). {id, ns key prompt resp created exp up}
GET_EXACT = """
local id = redis.call('GET', ARGV[1])
if not id then return false end
local f = redis.call('HMGET', ARGV[2] .. 'e:' .. id,
  'ns', 'key', 'prompt', 'resp', 'created', 'exp', 'up')
if not f[1] then return false end
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], id)
table.insert(f, 1, id)
return f
"""

# ARGV[3] = entry id. Returns {id, ns} or {}.
REMOVE = (
    _PRELUDE
    + """
local ns = drop(ARGV[3], true)
if ns then return {ARGV[3], ns} end
return {}
"""
)

# ARGV[3] = exact pointer key. Returns {id, ns} or {}.
REMOVE_EXACT = (
    _PRELUDE
    + """
local id = redis.call('GET', ARGV[3])
if not id then return {} end
local ns = drop(id, true)
if ns then return {id, ns} end
return {}
"""
)

# ARGV[3..] = namespace zset key, namespace, batch. Returns {removed, done}.
DROP_NAMESPACE_BATCH = (
    _PRELUDE
    + """
local nk, batch = ARGV[3], tonumber(ARGV[5])
local ids = redis.call('ZRANGE', nk, 0, batch - 1)
local removed = 0
for _, id in ipairs(ids) do
  if drop(id, false) then removed = removed + 1 end
  redis.call('ZREM', nk, id)
end
if #ids < batch then
  redis.call('DEL', nk)
  redis.call('XADD', STREAM, 'MAXLEN', '~', MAXLEN, '*', 'op', 'dropns', 'ns', ARGV[4])
  return {removed, 1}
end
return {removed, 0}
"""
)

# ARGV[3] = batch. Returns {removed, done}.
CLEAR_BATCH = (
    _PRELUDE
    + """
local batch = tonumber(ARGV[3])
local ids = redis.call('ZRANGE', EXP, 0, batch - 1)
local removed = 0
for _, id in ipairs(ids) do
  if drop(id, false) then removed = removed + 1 end
end
if #ids < batch then return {removed, 1} end
return {removed, 0}
"""
)

# KEYS = (exp); ARGV = (cursor, count, prefix, now).
# Returns {next cursor, id, ns, vec, exp, id, ns, vec, exp, ...} for live entries with a vector.
SCAN = """
local reply = redis.call('ZSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local out = {reply[1]}
local items, now = reply[2], tonumber(ARGV[4])
for i = 1, #items, 2 do
  if tonumber(items[i + 1]) > now then
    local f = redis.call('HMGET', ARGV[3] .. 'e:' .. items[i], 'ns', 'vec', 'exp', 'hv')
    if f[4] == '1' then
      table.insert(out, items[i])
      table.insert(out, f[1])
      table.insert(out, f[2])
      table.insert(out, f[3])
    end
  end
end
return out
"""
