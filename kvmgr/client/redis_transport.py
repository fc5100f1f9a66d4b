"""RedisClient: the kvmgr client API, semantics and errors on a Redis server, for a store that outgrows one machine.

Encoding. A value is stored in kvmgr's byte form (kvmgr.protocol.values.encode): b"s" + UTF-8 for a str,
b"b" + the raw bytes for bytes, an int as its bare decimal digits (the form INCRBY reads and writes),
b"f" + the digits of a float, b"j" + the JSON form for a bool, list, tuple or dict. Reading it never runs
code. An encoded value is never empty, so an empty str (b"s") is never confused with an absent key. Keys
are the UTF-8 bytes of the key str. A key holding anything decode refuses was not written by kvmgr:
reading it raises ProtocolError naming the key.

Atomicity. Every operation is one native command or one Lua script: store, cas, store_many and size are
scripts, get_many is one MGET, add is SET NX, pop GETDEL, incr/decr INCRBY (with one script for what
INCRBY refuses: a float, or a value that is not a number), expire/ttl/persist PEXPIRE/PTTL/PERSIST.
cas compares encoded values in its script; when they differ but the value there is the same value in
another form (a dict in another key order, a float written by incr in other digits), it asks again with
the bytes that are there. keys() uses SCAN, which does not block Redis but is not a snapshot: keys added
or removed while it runs may or may not be listed; it gives up when the call's timeout runs out.

Expiry is Redis's own (PX, PEXPIRE, PTTL), in whole milliseconds: a ttl is rounded up to the next one.
A plain SET clears a key's expiry, so store, store_many and cas do; INCRBY keeps it, and so does incr's
script (SET KEEPTTL).

kvmgr's own keys. rendezvous keeps its state in keys that start with the byte 0xFF, which no UTF-8 key can
start with, so no user key can collide with them; keys() leaves them out, and size() (one Lua step)
subtracts those that exist, found through the set INTERNAL_INDEX that lists them.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast, overload
from urllib.parse import urlsplit, urlunsplit

from kvmgr.client.operations import Operations, with_history
from kvmgr.client.pool import ConnectionPool
from kvmgr.client.retry import DEFAULT_RETRY, RetryPolicy
from kvmgr.config import DEFAULT_LIMITS, DEFAULT_TIMEOUT, RENDEZVOUS_TIMEOUT, SCAN_PAGE, Limits
from kvmgr.errors import (
    AuthenticationFailed,
    ConfigError,
    InvalidValue,
    KeyNotFound,
    KvmgrError,
    OutcomeUnknown,
    ProtocolError,
    ServerUnavailable,
    UnknownOperation,
    WrongType,
)
from kvmgr.protocol import wire
from kvmgr.protocol.validation import (
    check_delta,
    check_expected,
    check_key,
    check_key_list,
    check_keys_page,
    check_mapping,
    check_rendezvous,
    check_ttl,
    check_value,
    page_of_keys,
)
from kvmgr.protocol.values import Number, Value, ValueRuleError, decode, encode, same_value

if TYPE_CHECKING:
    from types import ModuleType

    import redis
    from redis.commands.core import Script

    from kvmgr.client.recording import RecordingClient
    from kvmgr.verify.history import HistoryWriter

NO_VALUE = b""  # what cas sends for expected=None: no encoded value is empty
INTERNAL_PREFIX = b"\xffkvmgr:"  # 0xFF never occurs in UTF-8, so no user key starts like this
INTERNAL_INDEX = INTERNAL_PREFIX + b"internal"  # a set of kvmgr's own keys that may exist now
EXPIRING_INDEX = INTERNAL_PREFIX + b"expiring"  # a sorted set: user keys given an expiry, scored a little before it (ms)
RENDEZVOUS_PREFIX = INTERNAL_PREFIX + b"rendezvous:"
GO = b"go"
MISSING_REDIS = "redis:// targets need redis-py: pip install 'kvmgr[redis]'"
QUIT_REFUSED = "quit is not supported on a Redis target: kvmgr never shuts down a Redis server it did not start"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
CAS_ATTEMPTS = 16  # cas asks again at most this often when the value there is expected's value in other bytes
RECLAIM_BATCH = 16  # how many due entries of EXPIRING_INDEX each write with a ttl checks, besides its own key

# Redis reclaims an expired key when a command touches it, or later in a background sweep: until then DBSIZE
# counts it. So every key kvmgr gives an expiry is listed in EXPIRING_INDEX, scored a second before it expires
# (the clock read by TIME is a little later than the one Redis expires by); size() touches every key that is
# due there first, so Redis reclaims those that have expired. `reclaim(limit)` does that for at most limit
# entries: a key that is gone (or lost its expiry) leaves the index; one still expiring stays until it is gone.
RECLAIM = """
local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local function reclaim(index, limit)
  local due = redis.call('ZRANGEBYSCORE', index, '-inf', now_ms(), 'LIMIT', 0, limit)
  for _, key in ipairs(due) do
    if redis.call('PTTL', key) < 0 then redis.call('ZREM', index, key) end
  end
end
local function expiring(index, key, ms)
  reclaim(index, RECLAIM_BATCH)
  redis.call('ZADD', index, now_ms() + tonumber(ms) - 1000, key)
end
""".replace("RECLAIM_BATCH", str(RECLAIM_BATCH))

# KEYS[1]: the key, KEYS[2]: EXPIRING_INDEX. ARGV[1]: the encoded value, ARGV[2]: the ttl in ms (absent: no expiry).
STORE_SCRIPT = RECLAIM + """
local existed = redis.call('EXISTS', KEYS[1])
if ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  expiring(KEYS[2], KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return existed
"""

# add: KEYS and ARGV as store. Returns 1 if it stored.
ADD_SCRIPT = RECLAIM + """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
expiring(KEYS[2], KEYS[1], ARGV[2])
return 1
"""

# expire: KEYS as store. ARGV[1]: the ttl in ms. Returns 1 if the key exists.
EXPIRE_SCRIPT = RECLAIM + """
if redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 0 then return 0 end
expiring(KEYS[2], KEYS[1], ARGV[1])
return 1
"""

# ARGV[1]: the expected encoded value ('' for None: only if absent), ARGV[2]: the new one.
# Returns 1 if it swapped, else 0 (absent, or present when expected None) or the encoded value that is there.
CAS_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if current then return 0 end
elseif current ~= ARGV[1] then
  return current or 0
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""

STORE_MANY_SCRIPT = """
local existed = {}
for i, key in ipairs(KEYS) do
  existed[i] = redis.call('EXISTS', key)
  redis.call('SET', key, ARGV[i])
end
return existed
"""

# incr/decr where INCRBY alone will not do. ARGV[1]: the delta as decimal digits if it is an int ('' for a
# float), ARGV[2]: the delta as a float's digits. An int delta is first tried with INCRBY (exact in 64 bits;
# it may have become possible since the client's own INCRBY was refused); Lua doubles only ever add floats.
# Returns {'i', digits} or {'f', digits}: the new value; or {'overflow'}, {'nonfinite'}, {'wrongtype', value}.
INCR_SCRIPT = """
if ARGV[1] ~= '' and type(redis.pcall('INCRBY', KEYS[1], ARGV[1])) == 'number' then
  return {'i', redis.call('GET', KEYS[1])}
end
local current = redis.call('GET', KEYS[1])
local base
if not current or string.match(current, '^%-?%d+$') then
  if ARGV[1] ~= '' then return {'overflow'} end
  base = tonumber(current or '0')
elseif string.sub(current, 1, 1) == 'f' then
  base = tonumber(string.sub(current, 2))
  if not base then return {'wrongtype', current} end
else
  return {'wrongtype', current}
end
local result = base + tonumber(ARGV[2])
if result ~= result or result == math.huge or result == -math.huge then return {'nonfinite'} end
local text
for precision = 15, 17 do
  text = string.format('%.' .. precision .. 'g', result)
  if tonumber(text) == result then break end
end
redis.call('SET', KEYS[1], 'f' .. text, 'KEEPTTL')
return {'f', text}
"""

# KEYS[1]: the set of kvmgr's own keys, KEYS[2]: EXPIRING_INDEX. Keys whose expiry is due are touched first, so
# Redis reclaims those that expired; expired internal keys leave the set here. DBSIZE comes after, so it never
# counts a key that expired but was not yet reclaimed.
SIZE_SCRIPT = RECLAIM + """
reclaim(KEYS[2], -1)
local own = 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', key) == 1 then own = own + 1 else redis.call('SREM', KEYS[1], key) end
end
own = own + redis.call('EXISTS', KEYS[1]) + redis.call('EXISTS', KEYS[2])
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

SCRIPTS = {
    "store": STORE_SCRIPT, "add": ADD_SCRIPT, "expire": EXPIRE_SCRIPT, "cas": CAS_SCRIPT, "store_many": STORE_MANY_SCRIPT,
    "incr": INCR_SCRIPT, "size": SIZE_SCRIPT, "arrive": ARRIVE_SCRIPT, "break": BREAK_SCRIPT,
}


def import_redis() -> ModuleType:
    """The redis-py package; ConfigError if it is not installed (it is the optional extra kvmgr[redis])."""
    try:
        import redis
    except ImportError:
        raise ConfigError(MISSING_REDIS) from None
    return redis


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, for messages."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError as exc:
        raise ConfigError(f"bad Redis URL: {exc}") from None
    if password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def pack_key(key: str) -> bytes:
    """A key as Redis stores it: its UTF-8 bytes (validation has refused any key UTF-8 cannot encode)."""
    return key.encode()


def unpack_key(raw: bytes) -> str:
    """A Redis key back as the str it was stored from."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ProtocolError(f"Redis holds a key kvmgr did not write (not UTF-8): {raw[:40]!r}") from None


def unpack_value(raw: bytes, key: str) -> Value:
    """A stored value back as the value it was stored from; ProtocolError naming the key if kvmgr did not write it."""
    try:
        return decode(raw)
    except ValueRuleError as exc:
        raise ProtocolError(f"key {key!r} holds a value kvmgr did not write ({exc})") from None


def milliseconds(ttl: float) -> int:
    """A ttl in whole milliseconds, rounded up (0.05 is 50 ms, as written, and 0.0001 is 1 ms)."""
    return math.ceil(Decimal(repr(ttl)) * 1000)


def incr_error(key: str, outcome: list[bytes]) -> KvmgrError:
    """The error for an incr/decr the script refused (nothing changed)."""
    reason = outcome[0]
    if reason == b"overflow":
        return InvalidValue(f"incr/decr: the result at key {key!r} would leave Redis's signed 64-bit integers; nothing changed")
    if reason == b"nonfinite":
        return InvalidValue(f"incr/decr: the result at key {key!r} would not be a finite float; nothing changed")
    held = type(unpack_value(outcome[1], key)).__name__
    return WrongType(f"incr/decr: key {key!r} holds a {held}, not an int or float; nothing changed")


def describe_error(exc: BaseException) -> str:
    """A short reason for a redis-py or socket error: the OS reason when there is one."""
    if "timeout" in type(exc).__name__.lower() or "timeout" in str(exc).lower():
        return "timed out"
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(exc) or type(exc).__name__


class RedisClient(Operations):
    """One Redis database with the kvmgr API, for any number of threads at once; every call is bounded by `timeout`.

    Like the manager client, each call leases a connection of its own from a small pool: threads never
    share one, a call that is interrupted takes its connection with it, and a forked child opens its own.
    """

    def __init__(
        self, url: str, timeout: float = DEFAULT_TIMEOUT, name: str = "client",
        *, limits: Limits = DEFAULT_LIMITS, retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self._redis = import_redis()
        self.address = url
        self.timeout = timeout
        self.name = name
        self.retry = retry
        self._where = redact_url(url)
        self._check_url()
        self._limits = limits  # validated exactly as the server-side Store does
        self._pool: ConnectionPool[redis.Redis] = ConnectionPool(lambda: self._open(self.timeout), _close_quietly, self._stale)
        self._scripts: dict[str, Script] = {}

    def _check_url(self) -> None:
        """Reject a malformed URL, or one with options redis-py does not know, before any network traffic."""
        try:
            options = self._redis.connection.parse_url(self.address)
            connection_class = options.pop("connection_class", self._redis.Connection)
            connection_class(**options)  # only stores the options: it does not connect
        except ValueError as exc:
            raise ConfigError(f"bad Redis URL {self._where!r}: {exc}") from None
        except TypeError as exc:  # an option redis-py does not know
            unknown = re.search(r"argument '(\w+)'", str(exc))
            raise ConfigError(f"bad Redis URL {self._where!r}: unknown option {unknown[1] if unknown else exc}") from None
        parts = urlsplit(self.address)
        database = parts.path.strip("/")
        if parts.scheme in ("redis", "rediss") and database and not database.isdigit():
            raise ConfigError(f"bad Redis URL {self._where!r}: the database after the port must be a number, like /0")

    # --- one call: dispatch, connection, error translation ---

    def _call(self, method: str, args: tuple, timeout: float | None) -> Any:
        """Validate and run one attempt of one operation on a connection of its own; translate redis-py errors into kvmgr errors.

        A call with its own timeout (a rendezvous) opens a connection for itself alone and closes it after.
        A pooled connection goes back to the pool unless the call ended without its whole reply.
        """
        if method not in wire.EXPOSED:
            raise UnknownOperation(f"method {method!r} is not exposed; exposed are {', '.join(sorted(wire.EXPOSED))}")
        operation = getattr(self, f"_do_{method}")
        if timeout is not None:
            own = self._open(timeout)
            try:
                return operation(own, *args)
            except (self._redis.RedisError, OSError) as exc:
                raise self._command_error(method, exc) from None
            finally:
                _close_quietly(own)
        lease = self._pool.acquire()
        try:
            result = operation(lease.connection, *args)
        except KvmgrError:  # ours (KeyNotFound, InvalidKey, ...), raised after a reply was read in full
            self._pool.release(lease)
            raise
        except (self._redis.RedisError, OSError) as exc:
            answered = isinstance(exc, self._redis.ResponseError)  # Redis refused the command: the connection is fine
            (self._pool.release if answered else self._pool.discard)(lease)
            raise self._command_error(method, exc) from None
        except BaseException:
            self._pool.discard(lease)  # interrupted mid-call: its reply may still come, no other call may read it
            raise
        self._pool.release(lease)
        return result

    def _command_error(self, method: str, exc: BaseException) -> KvmgrError:
        """The kvmgr error for a redis-py error raised after the request may have been sent."""
        errors = self._redis.exceptions
        if isinstance(exc, errors.AuthenticationError):
            return AuthenticationFailed(f"Redis at {self._where} rejected the credentials: {exc}")
        if isinstance(exc, errors.ConnectionError | errors.TimeoutError | OSError):
            return OutcomeUnknown(
                f"{method}: no reply from Redis at {self._where} ({describe_error(exc)}); it may or may not have taken effect",
                timed_out=isinstance(exc, errors.TimeoutError),
            )
        return KvmgrError(f"{method}: Redis at {self._where} refused the command: {exc}")

    def _connect_error(self, exc: BaseException) -> KvmgrError:
        """The kvmgr error for a failure to connect, authenticate or PING: nothing was sent yet."""
        if isinstance(exc, self._redis.exceptions.AuthenticationError):
            return AuthenticationFailed(f"Redis at {self._where} rejected the credentials (check the user and password in the URL): {exc}")
        return ServerUnavailable(f"cannot reach Redis at {self._where}: {describe_error(exc)}")

    def _stale(self, db: redis.Redis) -> bool:
        """True if Redis closed this idle connection (restart, timeout, CLIENT KILL) or sent something unasked."""
        try:
            return db.connection is None or bool(db.connection.can_read(timeout=0))
        except (self._redis.RedisError, OSError):
            return True

    def _open(self, socket_timeout: float) -> redis.Redis:
        """Connect (and authenticate) one single-connection client; redis-py never retries on its own."""
        module = self._redis
        try:
            db = cast("redis.Redis", module.Redis.from_url(
                self.address, socket_timeout=socket_timeout, socket_connect_timeout=self.timeout,
                retry=module.retry.Retry(module.backoff.NoBackoff(), 0), retry_on_timeout=False, single_connection_client=True,
            ))
        except (module.RedisError, OSError) as exc:
            raise self._connect_error(exc) from None
        if not self._scripts:
            self._scripts = {name: db.register_script(source) for name, source in SCRIPTS.items()}
        return db

    def _ping(self) -> None:
        """Connect and PING; ServerUnavailable or AuthenticationFailed if Redis does not answer within the timeout."""
        lease = self._pool.acquire()
        try:
            lease.connection.ping()
        except (self._redis.RedisError, OSError) as exc:
            self._pool.discard(lease)
            raise self._connect_error(exc) from None
        self._pool.release(lease)

    def _script(self, db: redis.Redis, name: str, keys: list[bytes], args: list[Any]) -> Any:
        """Run one of SCRIPTS on db (EVALSHA, loading it if Redis lacks it)."""
        return self._scripts[name](keys=keys, args=args, client=db)

    def close(self) -> None:
        """Close the connections (the next call reconnects)."""
        self._pool.close()

    def flush(self) -> None:
        """Empty the whole database (FLUSHDB): for a database dedicated to kvmgr scenarios or stress runs."""
        lease = self._pool.acquire()
        try:
            lease.connection.flushdb()
        except BaseException:
            self._pool.discard(lease)
            raise
        self._pool.release(lease)

    # --- the operations, with the Store's validation and semantics ---

    def _do_store(self, db: redis.Redis, key: str, value: Value, ttl: float | None = None) -> str:
        """store: one Lua step that checks EXISTS, then SETs (with PX given a ttl; without, clearing any expiry)."""
        key, value, ttl = check_key(key, self._limits), check_value(value, self._limits), check_ttl(ttl)
        args: list[Any] = [encode(value)] if ttl is None else [encode(value), milliseconds(ttl)]
        existed = self._script(db, "store", [pack_key(key), EXPIRING_INDEX], args)
        return "updated" if existed else "saved"

    def _do_get(self, db: redis.Redis, key: str) -> Value:
        """get: GET, KeyNotFound if absent."""
        check_key(key, self._limits)
        raw = cast(bytes | None, db.get(pack_key(key)))
        if raw is None:
            raise KeyNotFound(key)
        return unpack_value(raw, key)

    def _do_delete(self, db: redis.Redis, key: str) -> bool:
        """delete: DEL."""
        check_key(key, self._limits)
        return db.delete(pack_key(key)) == 1

    def _do_exists(self, db: redis.Redis, key: str) -> bool:
        """exists: EXISTS."""
        check_key(key, self._limits)
        return db.exists(pack_key(key)) == 1

    def _do_keys(self, db: redis.Redis, prefix: str | None = None, limit: int | None = None, after: str | None = None) -> list[str]:
        """keys: SCAN (MATCH prefix*) page by page within the call's timeout; kvmgr's own keys are left out."""
        check_keys_page(prefix, limit, after)
        pattern = glob_escape(pack_key(prefix)) + b"*" if prefix else None
        deadline = time.monotonic() + self.timeout
        found: set[bytes] = set()  # SCAN may repeat a key
        cursor = 0
        while True:
            cursor, raws = cast(tuple[int, list[bytes]], db.scan(cursor, match=pattern, count=SCAN_PAGE))
            found.update(raw for raw in raws if not raw.startswith(INTERNAL_PREFIX))
            if cursor == 0:
                break
            if time.monotonic() > deadline:
                raise OutcomeUnknown(
                    f"keys: SCAN of Redis at {self._where} did not finish within {self.timeout:g}s; "
                    "use keys(prefix=..., limit=...) or a larger timeout", timed_out=True,
                )
        return page_of_keys(map(unpack_key, found), prefix, limit, after)

    def _do_size(self, db: redis.Redis) -> int:
        """size: DBSIZE less kvmgr's own keys, in one Lua step that first has Redis reclaim the keys that expired."""
        return int(self._script(db, "size", [INTERNAL_INDEX, EXPIRING_INDEX], []))

    def _do_cas(self, db: redis.Redis, key: str, expected: Value | None, value: Value) -> bool:
        """cas: a Lua step comparing encoded values (b'' stands for None: only if absent), asked again with the
        bytes that are there when they are expected's value in another form (same_value: a dict in another order)."""
        key, expected, value = check_key(key, self._limits), check_expected(expected, self._limits), check_value(value, self._limits)
        wanted, new = (NO_VALUE if expected is None else encode(expected)), encode(value)
        for _ in range(CAS_ATTEMPTS):
            answer = self._script(db, "cas", [pack_key(key)], [wanted, new])
            if not isinstance(answer, bytes):
                return bool(answer == 1)
            if not same_value(unpack_value(answer, key), expected):
                return False
            wanted = answer
        raise KvmgrError(f"cas: key {key!r} was rewritten {CAS_ATTEMPTS} times in a row while cas compared it; nothing changed, try again")

    def _do_get_many(self, db: redis.Redis, keys: list[str]) -> dict[str, Value]:
        """get_many: one MGET."""
        keys = check_key_list(keys, self._limits)
        if not keys:
            return {}
        raws = cast(list[bytes | None], db.mget([pack_key(key) for key in keys]))
        return {key: unpack_value(raw, key) for key, raw in zip(keys, raws, strict=True) if raw is not None}

    def _do_store_many(self, db: redis.Redis, mapping: Mapping[str, Value]) -> dict[str, str]:
        """store_many: one Lua step that checks EXISTS then SETs each key (clearing any expiry)."""
        mapping = check_mapping(mapping, self._limits)
        if not mapping:
            return {}
        keys = list(mapping)
        existed = self._script(db, "store_many", [pack_key(key) for key in keys], [encode(mapping[key]) for key in keys])
        return {key: "updated" if flag else "saved" for key, flag in zip(keys, existed, strict=True)}

    def _do_incr(self, db: redis.Redis, key: str, by: Number = 1) -> Number:
        """incr: INCRBY for an int within 64 bits (exact, keeps the expiry); what INCRBY refuses, INCR_SCRIPT."""
        return self._add_number(db, check_key(key, self._limits), check_delta(by))

    def _do_decr(self, db: redis.Redis, key: str, by: Number = 1) -> Number:
        """decr: incr by -by."""
        return self._add_number(db, check_key(key, self._limits), -check_delta(by))

    def _add_number(self, db: redis.Redis, key: str, delta: Number) -> Number:
        """Add delta to the number at key in one step: INCRBY, or INCR_SCRIPT for floats, overflow and wrong types."""
        whole = isinstance(delta, int)
        if isinstance(delta, int) and INT64_MIN <= delta <= INT64_MAX:
            with contextlib.suppress(self._redis.ResponseError):  # not an int there, or an overflow: the script says which
                return int(db.incrby(pack_key(key), delta))
        try:
            as_float = repr(float(delta))
        except OverflowError:  # an int beyond any float: only an int there could take it, and not within 64 bits
            as_float = "inf"
        outcome = self._script(db, "incr", [pack_key(key)], [str(delta) if whole else "", as_float])
        kind, text = outcome[0], outcome[-1]
        if kind == b"i":
            return int(text)
        if kind == b"f":
            return float(text)
        raise incr_error(key, outcome)

    def _do_add(self, db: redis.Redis, key: str, value: Value, ttl: float | None = None) -> bool:
        """add: SET NX (with a ttl, a Lua step: SET NX PX, and the key listed as expiring)."""
        key, value, ttl = check_key(key, self._limits), check_value(value, self._limits), check_ttl(ttl)
        if ttl is None:
            return bool(db.set(pack_key(key), encode(value), nx=True))
        return bool(self._script(db, "add", [pack_key(key), EXPIRING_INDEX], [encode(value), milliseconds(ttl)]) == 1)

    def _do_pop(self, db: redis.Redis, key: str) -> Value:
        """pop: GETDEL, KeyNotFound if absent."""
        key = check_key(key, self._limits)
        raw = cast(bytes | None, db.getdel(pack_key(key)))
        if raw is None:
            raise KeyNotFound(key)
        return unpack_value(raw, key)

    def _do_expire(self, db: redis.Redis, key: str, ttl: float) -> bool:
        """expire: a Lua step: PEXPIRE, and the key listed as expiring; False if absent."""
        key, seconds = check_key(key, self._limits), check_ttl(ttl)
        if seconds is None:
            raise InvalidValue("expire: ttl must be a number of seconds above 0, not None")
        return bool(self._script(db, "expire", [pack_key(key), EXPIRING_INDEX], [milliseconds(seconds)]) == 1)

    def _do_ttl(self, db: redis.Redis, key: str) -> float | None:
        """ttl: PTTL in seconds; None for no expiry (-1), KeyNotFound if absent (-2)."""
        key = check_key(key, self._limits)
        left = int(db.pttl(pack_key(key)))
        if left == -2:
            raise KeyNotFound(key)
        return None if left == -1 else left / 1000

    def _do_persist(self, db: redis.Redis, key: str) -> bool:
        """persist: PERSIST; True if the key had an expiry."""
        return bool(db.persist(pack_key(check_key(key, self._limits))))

    def _do_quit(self, db: redis.Redis) -> str:
        """quit: refused, kvmgr never shuts down a Redis server."""
        raise KvmgrError(QUIT_REFUSED)

    def _do_rendezvous(self, db: redis.Redis, name: str, parties: int, timeout: float = RENDEZVOUS_TIMEOUT) -> int:
        """rendezvous: arrive atomically, then wait for this generation's release token."""
        check_rendezvous(name, parties)
        wait = min(float(timeout), RENDEZVOUS_TIMEOUT)
        hash_key = RENDEZVOUS_PREFIX + pack_key(name)
        expiry_ms = int((wait + self.timeout) * 1000) + 1000
        index, opened, generation = self._script(db, "arrive", [hash_key, INTERNAL_INDEX], [parties, uuid.uuid4().hex, expiry_ms])
        if index < 0:
            raise InvalidValue(f"rendezvous {name!r} was opened for {opened} parties, not {parties}")
        if index + 1 == parties or self._released(db, hash_key, generation, wait, expiry_ms):
            return int(index)
        raise KvmgrError(f"rendezvous {name!r}: not all {parties} parties arrived within {timeout}s")

    def _released(self, db: redis.Redis, hash_key: bytes, generation: bytes, wait: float, expiry_ms: int) -> bool:
        """Wait for this generation's release token; on timeout break the rendezvous unless released meanwhile."""
        release_key = hash_key + b":" + generation
        popped = db.blpop([release_key], timeout=wait) if wait > 0 else None
        if popped is not None:
            return popped[1] == GO
        return bool(self._script(db, "break", [hash_key, release_key, INTERNAL_INDEX], [generation, expiry_ms]) == GO)


def _close_quietly(db: redis.Redis) -> None:
    """Close one connection (redis-py never shuts down a socket that a forked child inherited)."""
    with contextlib.suppress(Exception):
        db.close()


def glob_escape(raw: bytes) -> bytes:
    """raw with Redis MATCH's special characters escaped, so it matches only itself."""
    return re.sub(rb"([*?\[\]\\])", rb"\\\1", raw)


@overload
def connect_redis(
    url: str, timeout: float = ..., name: str = ..., *, history: None = None, retry: RetryPolicy = ...,
) -> RedisClient: ...


@overload
def connect_redis(
    url: str, timeout: float = ..., name: str = ..., *, history: HistoryWriter, retry: RetryPolicy = ...,
) -> RecordingClient[RedisClient]: ...


def connect_redis(
    url: str, timeout: float = DEFAULT_TIMEOUT, name: str = "client", *,
    history: HistoryWriter | None = None, retry: RetryPolicy = DEFAULT_RETRY,
) -> RedisClient | RecordingClient[RedisClient]:
    """Connect to Redis at url ('redis://[[user]:password@]host:port/db') and PING it, all within `timeout`.

    Given a history, the client comes wrapped in a RecordingClient that records every call there.
    """
    client = RedisClient(url, timeout, name, retry=retry)
    client._ping()
    return with_history(client, history)
