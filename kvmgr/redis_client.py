"""RedisClient: the kvmgr client API, semantics and errors on a Redis server, for a store that outgrows one machine.

Encoding. A value is stored with a one-byte type tag so it comes back as the type it went in as:
b"s" + its UTF-8 bytes for a str, b"b" + the raw bytes for bytes. An encoded value is never empty, so an
empty str (b"s") is never confused with an absent key, and cas compares encoded values, so "x" != b"x" as in
Python. Keys are the UTF-8 bytes of the key str. A key holding anything else was not written by kvmgr:
reading it raises ProtocolError. Strings are encoded with "surrogatepass", like the Store's size checks.

Atomicity. store, cas and store_many are Lua scripts, get_many is one MGET: each runs as one step on Redis.
keys() uses SCAN, which does not block Redis but is not a snapshot: keys added or removed while it runs may
or may not be listed. rendezvous keeps its state under "kvmgr:rendezvous:NAME" while a rendezvous is open.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from kvmgr import wire
from kvmgr.client.operations import Operations
from kvmgr.config import DEFAULT_LIMITS, DEFAULT_TIMEOUT, IDLE_CHECK_AFTER, RENDEZVOUS_TIMEOUT, Limits
from kvmgr.errors import (
    AuthenticationFailed,
    ConfigError,
    InvalidValue,
    KeyNotFound,
    KvmgrError,
    OutcomeUnknown,
    ProtocolError,
    ServerUnavailable,
)
from kvmgr.history import HistoryWriter
from kvmgr.validation import Value, check_key, check_key_list, check_mapping, check_rendezvous, check_value

if TYPE_CHECKING:
    from types import ModuleType

    import redis
    from redis.commands.core import Script

STR_TAG = b"s"
BYTES_TAG = b"b"
NO_VALUE = b""  # what cas sends for expected=None: no encoded value is empty
RENDEZVOUS_PREFIX = "kvmgr:rendezvous:"
GO = b"go"
MISSING_REDIS = "redis:// targets need redis-py: pip install 'kvmgr[redis]'"
QUIT_REFUSED = "quit is not supported on a Redis target: kvmgr never shuts down a Redis server it did not start"

STORE_SCRIPT = """
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
return existed
"""

CAS_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if current then return 0 end
elseif current ~= ARGV[1] then
  return 0
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

# KEYS[1]: the rendezvous hash. ARGV: parties, a fresh generation id, expiry in ms.
# Returns {arrival index, parties, generation}; index -1 means it is open for a different number of parties.
ARRIVE_SCRIPT = """
local parties = tonumber(ARGV[1])
local opened = redis.call('HGET', KEYS[1], 'parties')
if opened and tonumber(opened) ~= parties then return {-1, tonumber(opened), ''} end
if not opened then redis.call('HSET', KEYS[1], 'parties', parties, 'generation', ARGV[2], 'arrived', 0) end
local generation = redis.call('HGET', KEYS[1], 'generation')
local index = redis.call('HINCRBY', KEYS[1], 'arrived', 1) - 1
if index + 1 < parties then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {index, parties, generation}
end
redis.call('DEL', KEYS[1])
local release = KEYS[1] .. ':' .. generation
for _ = 1, parties - 1 do redis.call('RPUSH', release, 'go') end
if parties > 1 then redis.call('PEXPIRE', release, ARGV[3]) end
return {index, parties, generation}
"""

# A waiter that timed out breaks its generation (waking the others with 'broken'), unless it was released meanwhile.
BREAK_SCRIPT = """
if redis.call('HGET', KEYS[1], 'generation') == ARGV[1] then
  local others = tonumber(redis.call('HGET', KEYS[1], 'arrived')) - 1
  redis.call('DEL', KEYS[1])
  for _ = 1, others do redis.call('RPUSH', KEYS[2], 'broken') end
  if others > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
  return 'broken'
end
return redis.call('LPOP', KEYS[2]) or 'broken'
"""

SCRIPTS = {"store": STORE_SCRIPT, "cas": CAS_SCRIPT, "store_many": STORE_MANY_SCRIPT, "arrive": ARRIVE_SCRIPT, "break": BREAK_SCRIPT}


def import_redis() -> ModuleType:
    """The redis-py package; ConfigError if it is not installed (it is the optional extra kvmgr[redis])."""
    try:
        import redis
    except ImportError:
        raise ConfigError(MISSING_REDIS) from None
    return redis


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def pack_key(key: str) -> bytes:
    """A key as Redis stores it."""
    return key.encode("utf-8", "surrogatepass")


def unpack_key(raw: bytes) -> str:
    """A Redis key back as the str it was stored from."""
    return raw.decode("utf-8", "surrogatepass")


def pack_value(value: Value) -> bytes:
    """A value as Redis stores it: a type tag (b"s" str, b"b" bytes) then its bytes."""
    if isinstance(value, str):
        return STR_TAG + value.encode("utf-8", "surrogatepass")
    return BYTES_TAG + value


def unpack_value(raw: bytes, key: str) -> Value:
    """A stored value back as the str or bytes it was stored from."""
    tag, body = raw[:1], raw[1:]
    if tag == STR_TAG:
        return body.decode("utf-8", "surrogatepass")
    if tag == BYTES_TAG:
        return body
    raise ProtocolError(f"key {key!r} holds a value kvmgr did not write (no type tag)")


def describe_error(exc: BaseException) -> str:
    """A short reason for a redis-py or socket error: the OS reason when there is one."""
    if "timeout" in type(exc).__name__.lower() or "timeout" in str(exc).lower():
        return "timed out"
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(exc) or type(exc).__name__


class RedisClient(Operations):
    """A connection to one Redis database with the kvmgr API; every call is bounded by `timeout` seconds."""

    def __init__(
        self, url: str, timeout: float = DEFAULT_TIMEOUT, name: str = "client",
        history: HistoryWriter | None = None, limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._redis = import_redis()
        self.address = url
        self.timeout = timeout
        self.name = name
        self.history = history
        self._where = redact_url(url)
        self._check_url()
        self._limits = limits  # validated exactly as the server-side Store does
        self._db: redis.Redis | None = None
        self._scripts: dict[str, Script] = {}
        self._last_used = 0.0
        self._call_timeout: float | None = None
        self._temporary: redis.Redis | None = None

    def _check_url(self) -> None:
        """Reject a malformed URL before any network traffic."""
        try:
            self._redis.connection.parse_url(self.address)
        except ValueError as exc:
            raise ConfigError(f"bad Redis URL {self._where!r}: {exc}") from None
        parts = urlsplit(self.address)
        database = parts.path.strip("/")
        if parts.scheme in ("redis", "rediss") and database and not database.isdigit():
            raise ConfigError(f"bad Redis URL {self._where!r}: the database after the port must be a number, like /0")

    # --- one call: dispatch, connection, error translation ---

    def _call_once(self, method: str, args: tuple, timeout: float | None) -> Any:
        """Validate and run one operation; translate redis-py errors into kvmgr errors."""
        if method not in wire.EXPOSED:
            raise AttributeError(f"method {method!r} is not exposed; exposed are {sorted(wire.EXPOSED)}")
        self._call_timeout = timeout
        try:
            return getattr(self, f"_do_{method}")(*args)
        except KvmgrError:  # ours (KeyNotFound, ServerUnavailable, ...): some are OSErrors too, pass them on as they are
            raise
        except (self._redis.RedisError, OSError) as exc:
            raise self._command_error(method, exc) from None
        finally:
            self._close_temporary()

    def _command_error(self, method: str, exc: BaseException) -> KvmgrError:
        """The kvmgr error for a redis-py error raised after the request may have been sent."""
        errors = self._redis.exceptions
        if isinstance(exc, errors.AuthenticationError):
            self.close()
            return AuthenticationFailed(f"Redis at {self._where} rejected the credentials: {exc}")
        if isinstance(exc, errors.ConnectionError | errors.TimeoutError | OSError):
            self.close()
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

    def _conn(self) -> redis.Redis:
        """The connection for the current call: the shared one, or a temporary one when the call has its own timeout."""
        if self._call_timeout is None:
            return self._connection()
        if self._temporary is None:
            self._temporary = self._open(self._call_timeout)
        return self._temporary

    def _connection(self) -> redis.Redis:
        """The shared connection, reopened if it is closed or Redis dropped it while idle."""
        if self._db is not None and time.monotonic() - self._last_used > IDLE_CHECK_AFTER and self._stale(self._db):
            self.close()  # Redis closed this idle connection (restart, timeout, CLIENT KILL): start afresh
        if self._db is None:
            self._db = self._open(self.timeout)
            self._scripts = {name: self._db.register_script(source) for name, source in SCRIPTS.items()}
        self._last_used = time.monotonic()
        return self._db

    def _stale(self, db: redis.Redis) -> bool:
        """True if Redis closed this idle connection (or sent something unasked)."""
        try:
            return bool(db.connection.can_read(timeout=0))
        except (self._redis.RedisError, OSError):
            return True

    def _open(self, socket_timeout: float) -> redis.Redis:
        """Connect (and authenticate) one single-connection client; redis-py never retries on its own."""
        redis = self._redis
        try:
            return redis.Redis.from_url(
                self.address, socket_timeout=socket_timeout, socket_connect_timeout=self.timeout,
                retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0), retry_on_timeout=False, single_connection_client=True,
            )
        except (redis.RedisError, OSError) as exc:
            raise self._connect_error(exc) from None

    def _ping(self) -> None:
        """Connect and PING; ServerUnavailable or AuthenticationFailed if Redis does not answer within the timeout."""
        database = self._connection()
        try:
            database.ping()
        except (self._redis.RedisError, OSError) as exc:
            self.close()
            raise self._connect_error(exc) from None

    def _close_temporary(self) -> None:
        """Close the connection opened for one call with its own timeout, if any."""
        if self._temporary is not None:
            self._temporary.close()
            self._temporary = None

    def _script(self, name: str, keys: list[bytes], args: list[Any]) -> Any:
        """Run one of SCRIPTS on the current call's connection (EVALSHA, loading it if Redis lacks it)."""
        db = self._conn()
        script = self._scripts[name] if db is self._db else db.register_script(SCRIPTS[name])
        return script(keys=keys, args=args, client=db)

    def close(self) -> None:
        """Close the connection (the next call reconnects)."""
        if self._db is not None:
            db, self._db = self._db, None
            db.close()

    def flush(self) -> None:
        """Empty the whole database (FLUSHDB): for a database dedicated to kvmgr scenarios or stress runs."""
        self._conn().flushdb()

    # --- the operations, with the Store's validation and semantics ---

    def _do_store(self, key: str, value: Value) -> str:
        """store: one Lua step that checks EXISTS, then SETs."""
        check_key(key, self._limits)
        check_value(value, self._limits)
        existed = self._script("store", [pack_key(key)], [pack_value(value)])
        return "updated" if existed else "saved"

    def _do_get(self, key: str) -> Value:
        """get: GET, KeyNotFound if absent."""
        check_key(key, self._limits)
        raw = self._conn().get(pack_key(key))
        if raw is None:
            raise KeyNotFound(key)
        return unpack_value(raw, key)

    def _do_delete(self, key: str) -> bool:
        """delete: DEL."""
        check_key(key, self._limits)
        return self._conn().delete(pack_key(key)) == 1

    def _do_exists(self, key: str) -> bool:
        """exists: EXISTS."""
        check_key(key, self._limits)
        return self._conn().exists(pack_key(key)) == 1

    def _do_keys(self) -> list[str]:
        """keys: SCAN every page, sorted."""
        found = set(self._conn().scan_iter(count=1000))  # SCAN may repeat a key
        return sorted(unpack_key(raw) for raw in found)

    def _do_size(self) -> int:
        """size: DBSIZE."""
        return int(self._conn().dbsize())

    def _do_cas(self, key: str, expected: Value | None, value: Value) -> bool:
        """cas: one Lua step comparing encoded values (b'' stands for None: only if absent)."""
        check_key(key, self._limits)
        if expected is not None:
            check_value(expected, self._limits)
        check_value(value, self._limits)
        wanted = NO_VALUE if expected is None else pack_value(expected)
        return self._script("cas", [pack_key(key)], [wanted, pack_value(value)]) == 1

    def _do_get_many(self, keys: list[str]) -> dict[str, Value]:
        """get_many: one MGET."""
        keys = check_key_list(keys, self._limits)
        if not keys:
            return {}
        raws = self._conn().mget([pack_key(key) for key in keys])
        return {key: unpack_value(raw, key) for key, raw in zip(keys, raws, strict=True) if raw is not None}

    def _do_store_many(self, mapping: Mapping[str, Value]) -> dict[str, str]:
        """store_many: one Lua step that checks EXISTS then SETs each key."""
        check_mapping(mapping, self._limits)
        if not mapping:
            return {}
        keys = list(mapping)
        existed = self._script("store_many", [pack_key(key) for key in keys], [pack_value(mapping[key]) for key in keys])
        return {key: "updated" if flag else "saved" for key, flag in zip(keys, existed, strict=True)}

    def _do_quit(self) -> str:
        """quit: refused, kvmgr never shuts down a Redis server."""
        raise KvmgrError(QUIT_REFUSED)

    def _do_rendezvous(self, name: str, parties: int, timeout: float = RENDEZVOUS_TIMEOUT) -> int:
        """rendezvous: arrive atomically, then wait for this generation's release token."""
        check_rendezvous(name, parties)
        wait = min(float(timeout), RENDEZVOUS_TIMEOUT)
        hash_key = RENDEZVOUS_PREFIX + name
        expiry_ms = int((wait + self.timeout) * 1000) + 1000
        index, opened, generation = self._script("arrive", [pack_key(hash_key)], [parties, uuid.uuid4().hex, expiry_ms])
        if index < 0:
            raise InvalidValue(f"rendezvous {name!r} was opened for {opened} parties, not {parties}")
        if index + 1 == parties or self._released(hash_key, generation, wait, expiry_ms):
            return int(index)
        raise KvmgrError(f"rendezvous {name!r}: not all {parties} parties arrived within {timeout}s")

    def _released(self, hash_key: str, generation: bytes, wait: float, expiry_ms: int) -> bool:
        """Wait for this generation's release token; on timeout break the rendezvous unless released meanwhile."""
        release_key = pack_key(hash_key) + b":" + generation
        popped = self._conn().blpop([release_key], timeout=wait) if wait > 0 else None
        if popped is not None:
            return popped[1] == GO
        return self._script("break", [pack_key(hash_key), release_key], [generation, expiry_ms]) == GO


def connect_redis(url: str, timeout: float = DEFAULT_TIMEOUT, name: str = "client", *, history: HistoryWriter | None = None) -> RedisClient:
    """Connect to Redis at url ('redis://[[user]:password@]host:port/db') and PING it, all within `timeout`."""
    client = RedisClient(url, timeout, name, history)
    client._ping()
    return client
