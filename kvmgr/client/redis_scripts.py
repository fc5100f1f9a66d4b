"""The Lua scripts and kvmgr's own keys on Redis: every operation of the Redis backend is one of these, or one command.

kvmgr's own keys start with the byte 0xFF, which no UTF-8 key can start with, so no user key collides with them.
The scripts of the versioned family (every write, get_versioned, size) take ARGV[1]: the prefix of this
database's notification channels, because pub/sub channels are shared by every database of a Redis server;
and, after their own KEYS, the four bookkeeping keys below (`bookkeeping(tag)`), so that every key a script
touches is declared (Redis Cluster requires it).

On a single server (or behind Sentinel) kvmgr's own keys are the fixed names below. On a Redis Cluster every
script must touch keys of one hash slot only, so each of kvmgr's own keys carries, right after the 0xFF, the
hash tag of the slot it serves (`slot_tag(slot)`): the bookkeeping keys exist once per slot, and a lock's,
queue's or rendezvous's keys carry the tag of the slot of its name. A tag never depends on what the user's key
or name contains, so braces in them cannot split a script's keys across slots.

Versions. One counter, REVISION, numbers every change; VERSIONS maps each key ever written to the revision
of its last change (a deleted key keeps its entry: a tombstone), and every change PUBLISHes that revision on
the channel `<prefix><key>`. Redis runs no script when it expires a key, so EXPIRES lists the keys whose
last change left them with an expiry: `settle(key)` finds such a key gone and records its expiry as a change
of its own. get_versioned, wait and the expiry sweep settle a key before reading its version.
"""

from __future__ import annotations

import functools
from binascii import crc_hqx

HASH_SLOTS = 16384  # Redis Cluster's hash slots


def own_key(name: bytes, tag: bytes = b"") -> bytes:
    """kvmgr's own key called name; tag (b"" on a single server, a hash tag like b"{a3}" on a cluster) fixes its slot."""
    return b"\xff" + tag + b"kvmgr:" + name


@functools.cache
def _slot_tags() -> tuple[bytes, ...]:
    """For every hash slot, the shortest decimal string (the first found) that hashes to it."""
    tags: list[bytes | None] = [None] * HASH_SLOTS
    missing, number = HASH_SLOTS, 0
    while missing:
        text = str(number).encode()
        slot = crc_hqx(text, 0) % HASH_SLOTS
        if tags[slot] is None:
            tags[slot], missing = text, missing - 1
        number += 1
    return tuple(tag for tag in tags if tag is not None)


def slot_tag(slot: int) -> bytes:
    """The hash tag (with its braces) that puts a key in `slot`."""
    return b"{" + _slot_tags()[slot] + b"}"


def bookkeeping(tag: bytes = b"") -> list[bytes]:
    """The versioned scripts' last four KEYS: the revision counter, the versions, the expiries, the expiring index."""
    return [own_key(b"revision", tag), own_key(b"versions", tag), own_key(b"expires", tag), own_key(b"expiring", tag)]


INTERNAL_PREFIX = b"\xffkvmgr:"  # 0xFF never occurs in UTF-8, so no user key starts like this
INTERNAL_INDEX = INTERNAL_PREFIX + b"internal"  # a set of kvmgr's own keys that may exist now
EXPIRING_INDEX = INTERNAL_PREFIX + b"expiring"  # a sorted set: user keys given an expiry, scored a little before it (ms)
REVISION = INTERNAL_PREFIX + b"revision"  # the store's revision counter: every change takes the next one
VERSIONS = INTERNAL_PREFIX + b"versions"  # a hash: key -> the revision of its last change (deleted keys too)
EXPIRES = INTERNAL_PREFIX + b"expires"  # a hash: the keys whose last recorded change left them with an expiry
CHANNEL_PREFIX = INTERNAL_PREFIX + b"changed:"  # + the database number + b":" + the key: a key's change notifications
RENDEZVOUS_PREFIX = INTERNAL_PREFIX + b"rendezvous:"
LOCK_PREFIX = INTERNAL_PREFIX + b"lock:"  # + name: the lock, holding its token, expiring with its lease
TOKENS_PREFIX = INTERNAL_PREFIX + b"lock-tokens:"  # + name: the lock's fencing-token counter (never expires)
WAKE_PREFIX = INTERNAL_PREFIX + b"lock-wake:"  # + name: a list a release pushes one wake-up onto, for a BLPOP waiter
QUEUE_PREFIX = INTERNAL_PREFIX + b"queue:"  # + name: the queue's items, oldest first
PROCESSING_PREFIX = INTERNAL_PREFIX + b"processing:"  # + name + 0xFF + a connection's CLIENT ID: items being handed over
FIXED_KEYS = (INTERNAL_INDEX, EXPIRING_INDEX, REVISION, VERSIONS, EXPIRES)  # never listed in INTERNAL_INDEX
RECLAIM_BATCH = 16  # how many due entries of EXPIRING_INDEX each write with a ttl checks, besides its own key


def lua_bytes(raw: bytes) -> str:
    """raw as a Lua string literal, every byte a decimal escape (Lua 5.1 has no hex escapes)."""
    return '"' + "".join(f"\\{byte}" for byte in raw) + '"'


# Redis reclaims an expired key when a command touches it, or later in a background sweep: until then DBSIZE
# counts it. So every key kvmgr gives an expiry is listed in EXPIRING_INDEX, scored a second before it expires
# (the clock read by TIME is a little later than the one Redis expires by); size() touches every key that is
# due there first, so Redis reclaims those that have expired. `reclaim(limit)` does that for at most limit
# entries: a key that is gone (or lost its expiry) leaves the index, and one that expired gets its version;
# one still expiring stays until it is gone.
VERSIONED = f"""
local n = #KEYS - 4
local REVISION, VERSIONS, EXPIRES, EXPIRING = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3], KEYS[n + 4]
local CHANNEL = ARGV[1]
local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local function record(key, revision)
  redis.call('HSET', VERSIONS, key, revision)
  if redis.call('PTTL', key) > 0 then redis.call('HSET', EXPIRES, key, 1) else redis.call('HDEL', EXPIRES, key) end
  redis.call('PUBLISH', CHANNEL .. key, revision)
end
local function changed(key)
  record(key, redis.call('INCR', REVISION))
end
local function settle(key)
  if redis.call('HEXISTS', EXPIRES, key) == 1 and redis.call('EXISTS', key) == 0 then changed(key) end
end
local function reclaim(limit)
  local due = redis.call('ZRANGEBYSCORE', EXPIRING, '-inf', now_ms(), 'LIMIT', 0, limit)
  for _, key in ipairs(due) do
    if redis.call('PTTL', key) < 0 then
      redis.call('ZREM', EXPIRING, key)
      settle(key)
    end
  end
end
local function expiring(key, ms)
  reclaim({RECLAIM_BATCH})
  redis.call('ZADD', EXPIRING, now_ms() + tonumber(ms) - 1000, key)
end
"""

# KEYS[1]: the key. ARGV[2]: the encoded value, ARGV[3]: the ttl in ms (absent: no expiry). Returns 1 if it existed.
STORE_SCRIPT = VERSIONED + """
local existed = redis.call('EXISTS', KEYS[1])
if ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  expiring(KEYS[1], ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
changed(KEYS[1])
return existed
"""

# add: KEYS and ARGV as store. Returns 1 if it stored.
ADD_SCRIPT = VERSIONED + """
local stored
if ARGV[3] then stored = redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3])
else stored = redis.call('SET', KEYS[1], ARGV[2], 'NX') end
if not stored then return 0 end
if ARGV[3] then expiring(KEYS[1], ARGV[3]) end
changed(KEYS[1])
return 1
"""

# expire: ARGV[2]: the ttl in ms. Returns 1 if the key exists.
EXPIRE_SCRIPT = VERSIONED + """
if redis.call('PEXPIRE', KEYS[1], ARGV[2]) == 0 then return 0 end
expiring(KEYS[1], ARGV[2])
changed(KEYS[1])
return 1
"""

# persist: returns 1 if the key had an expiry.
PERSIST_SCRIPT = VERSIONED + """
if redis.call('PERSIST', KEYS[1]) == 0 then return 0 end
changed(KEYS[1])
return 1
"""

# delete: returns 1 if the key existed.
DELETE_SCRIPT = VERSIONED + """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
changed(KEYS[1])
return 1
"""

# pop: the encoded value, removed; nil if absent.
POP_SCRIPT = VERSIONED + """
local current = redis.call('GET', KEYS[1])
if not current then return false end
redis.call('DEL', KEYS[1])
changed(KEYS[1])
return current
"""

# ARGV[2]: the expected encoded value ('' for None: only if absent), ARGV[3]: the new one.
# Returns 1 if it swapped, else 0 (absent, or present when expected None) or the encoded value that is there.
CAS_SCRIPT = VERSIONED + """
local current = redis.call('GET', KEYS[1])
if ARGV[2] == '' then
  if current then return 0 end
elseif current ~= ARGV[2] then
  return current or 0
end
redis.call('SET', KEYS[1], ARGV[3])
changed(KEYS[1])
return 1
"""

# ARGV[i + 1]: the encoded value of KEYS[i] (i <= n: the KEYS before the bookkeeping). One revision for the whole batch.
# Returns each key's EXISTS before.
STORE_MANY_SCRIPT = VERSIONED + """
local existed = {}
for i = 1, n do
  existed[i] = redis.call('EXISTS', KEYS[i])
  redis.call('SET', KEYS[i], ARGV[i + 1])
end
local revision = redis.call('INCR', REVISION)
for i = 1, n do record(KEYS[i], revision) end
return existed
"""

# incr/decr. ARGV[2]: the delta as decimal digits if it is an int ('' for a float), ARGV[3]: the delta as a float's
# digits. An int delta is tried with INCRBY (exact in 64 bits; the new value is returned as the digits GET reads,
# never through a Lua number, which is a double); Lua doubles only ever add floats. Returns {'i', digits} or
# {'f', digits}: the new value; or {'overflow'}, {'nonfinite'}, {'wrongtype', value}: nothing changed.
INCR_SCRIPT = VERSIONED + """
if ARGV[2] ~= '' and type(redis.pcall('INCRBY', KEYS[1], ARGV[2])) == 'number' then
  changed(KEYS[1])
  return {'i', redis.call('GET', KEYS[1])}
end
local current = redis.call('GET', KEYS[1])
local base
if not current or string.match(current, '^%-?%d+$') then
  if ARGV[2] ~= '' then return {'overflow'} end
  base = tonumber(current or '0')
elseif string.sub(current, 1, 1) == 'f' then
  base = tonumber(string.sub(current, 2))
  if not base then return {'wrongtype', current} end
else
  return {'wrongtype', current}
end
local result = base + tonumber(ARGV[3])
if result ~= result or result == math.huge or result == -math.huge then return {'nonfinite'} end
local text
for precision = 15, 17 do
  text = string.format('%.' .. precision .. 'g', result)
  if tonumber(text) == result then break end
end
redis.call('SET', KEYS[1], 'f' .. text, 'KEEPTTL')
changed(KEYS[1])
return {'f', text}
"""

# Returns {version, PTTL in ms (-1: no expiry, -2: absent), the encoded value or nil}, an expiry not yet recorded first recorded.
GET_VERSIONED_SCRIPT = VERSIONED + """
settle(KEYS[1])
local version = tonumber(redis.call('HGET', VERSIONS, KEYS[1]) or '0')
return {version, redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[1])}
"""

# Keys whose expiry is due are touched first, so Redis reclaims those that expired; expired internal keys leave
# INTERNAL_INDEX here (processing lists stay listed until their consumer is done: they are created by BLMOVE, outside
# any script). DBSIZE comes after, so it never counts a key that expired but was not yet reclaimed.
SIZE_SCRIPT = VERSIONED + f"""
local INDEX, PROCESSING = {lua_bytes(INTERNAL_INDEX)}, {lua_bytes(PROCESSING_PREFIX)}
reclaim(-1)
local own = 0
for _, key in ipairs(redis.call('SMEMBERS', INDEX)) do
  if redis.call('EXISTS', key) == 1 then own = own + 1
  elseif string.sub(key, 1, #PROCESSING) ~= PROCESSING then redis.call('SREM', INDEX, key) end
end
for _, key in ipairs({{{", ".join(lua_bytes(key) for key in FIXED_KEYS)}}}) do own = own + redis.call('EXISTS', key) end
return redis.call('DBSIZE') - own
"""

# KEYS[1]: the rendezvous hash, KEYS[2]: the set of kvmgr's own keys. ARGV: parties, a fresh generation id, expiry in ms.
# Returns {arrival index, parties, generation}; index -1 means it is open for a different number of parties.
ARRIVE_SCRIPT = """
local parties = tonumber(ARGV[1])
local opened = redis.call('HGET', KEYS[1], 'parties')
if opened and tonumber(opened) ~= parties then return {-1, tonumber(opened), ''} end
if not opened then
  redis.call('HSET', KEYS[1], 'parties', parties, 'generation', ARGV[2], 'arrived', 0)
  redis.call('SADD', KEYS[2], KEYS[1])
end
local generation = redis.call('HGET', KEYS[1], 'generation')
local index = redis.call('HINCRBY', KEYS[1], 'arrived', 1) - 1
if index + 1 < parties then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {index, parties, generation}
end
redis.call('DEL', KEYS[1])
local release = KEYS[1] .. ':' .. generation
for _ = 1, parties - 1 do redis.call('RPUSH', release, 'go') end
if parties > 1 then
  redis.call('PEXPIRE', release, ARGV[3])
  redis.call('SADD', KEYS[2], release)
end
return {index, parties, generation}
"""

# A waiter that timed out breaks its generation (waking the others with 'broken'), unless it was released meanwhile.
BREAK_SCRIPT = """
if redis.call('HGET', KEYS[1], 'generation') == ARGV[1] then
  local others = tonumber(redis.call('HGET', KEYS[1], 'arrived')) - 1
  redis.call('DEL', KEYS[1])
  for _ = 1, others do redis.call('RPUSH', KEYS[2], 'broken') end
  if others > 0 then
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
    redis.call('SADD', KEYS[3], KEYS[2])
  end
  return 'broken'
end
return redis.call('LPOP', KEYS[2]) or 'broken'
"""

# KEYS: the lock, its token counter, its wake-up list, INTERNAL_INDEX. ARGV[1]: the lease in ms.
# Returns {token, 0} if granted (the lock now holds the next token, for the lease), else {0, the holder's PTTL in ms}.
# A grant empties the wake-up list: a wake-up left there announced a release this grant has consumed.
LOCK_ACQUIRE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, redis.call('PTTL', KEYS[1])} end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'NX', 'PX', ARGV[1])
redis.call('DEL', KEYS[3])
redis.call('SADD', KEYS[4], KEYS[1], KEYS[2])
return {token, 0}
"""

# KEYS: the lock, its wake-up list, INTERNAL_INDEX. ARGV[1]: the token, ARGV[2]: how long a wake-up waits for a waiter (ms).
# Frees the lock only if it holds that token, and pushes one wake-up (the list never holds more: every grant empties it).
LOCK_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('RPUSH', KEYS[2], 1)
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], KEYS[2])
return 1
"""

# KEYS[1]: the lock. ARGV[1]: the token, ARGV[2]: the new lease in ms. Returns 1 if the lock holds that token.
LOCK_EXTEND_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: the queue, INTERNAL_INDEX. ARGV[1]: the encoded item. Returns the queue's length after the put.
QUEUE_PUT_SCRIPT = """
local length = redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], KEYS[1])
return length
"""

# KEYS: the queue, a processing list, INTERNAL_INDEX. Lists the processing list (before any item can be in it), then
# moves the first item there if there is one. Returns the item or nil (the caller then blocks in BLMOVE).
QUEUE_TAKE_SCRIPT = """
redis.call('SADD', KEYS[3], KEYS[2])
return redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
"""

# KEYS: a processing list, INTERNAL_INDEX. ARGV[1]: the item its consumer received. Removes it (the last one moved in),
# and unlists the processing list once it is empty.
QUEUE_DONE_SCRIPT = """
redis.call('LREM', KEYS[1], -1, ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], KEYS[1]) end
return 1
"""

# KEYS: a processing list whose connection is gone, its queue, INTERNAL_INDEX. Puts its items back at the queue's
# head, in their order, and unlists it. Returns how many.
QUEUE_REQUEUE_SCRIPT = """
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') do moved = moved + 1 end
if moved > 0 then redis.call('SADD', KEYS[3], KEYS[2]) end
redis.call('SREM', KEYS[3], KEYS[1])
return moved
"""

SCRIPTS = {
    "store": STORE_SCRIPT, "add": ADD_SCRIPT, "expire": EXPIRE_SCRIPT, "persist": PERSIST_SCRIPT, "delete": DELETE_SCRIPT,
    "pop": POP_SCRIPT, "cas": CAS_SCRIPT, "store_many": STORE_MANY_SCRIPT, "incr": INCR_SCRIPT,
    "get_versioned": GET_VERSIONED_SCRIPT, "size": SIZE_SCRIPT, "arrive": ARRIVE_SCRIPT, "break": BREAK_SCRIPT,
    "lock_acquire": LOCK_ACQUIRE_SCRIPT, "lock_release": LOCK_RELEASE_SCRIPT, "lock_extend": LOCK_EXTEND_SCRIPT,
    "queue_put": QUEUE_PUT_SCRIPT, "queue_take": QUEUE_TAKE_SCRIPT, "queue_done": QUEUE_DONE_SCRIPT,
    "queue_requeue": QUEUE_REQUEUE_SCRIPT,
}
VERSIONED_SCRIPTS = frozenset({"store", "add", "expire", "persist", "delete", "pop", "cas", "store_many", "incr", "get_versioned", "size"})
"""The scripts that take ARGV[1]: this database's channel prefix."""


def hash_slot(raw: bytes) -> int:
    """The Redis Cluster hash slot of a key (its {hash tag}, if it has a non-empty one, decides)."""
    start = raw.find(b"{")
    if start > -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1:end]
    return crc_hqx(raw, 0) % HASH_SLOTS
