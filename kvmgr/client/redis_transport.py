"""RedisClient: the kvmgr client API, semantics and errors on a Redis server, for a store that outgrows one machine.

Encoding. A value is stored in kvmgr's byte form (kvmgr.protocol.values.encode): b"s" + UTF-8 for a str,
b"b" + the raw bytes for bytes, an int as its bare decimal digits (the form INCRBY reads and writes),
b"f" + the digits of a float, b"j" + the JSON form for a bool, list, tuple or dict. Reading it never runs
code. An encoded value is never empty, so an empty str (b"s") is never confused with an absent key. Keys
are the UTF-8 bytes of the key str. A key holding anything decode refuses was not written by kvmgr:
reading it raises ProtocolError naming the key.

Atomicity. Every operation is one native command or one Lua script (kvmgr/client/redis_scripts.py). Every
write is a script, because each change also takes the next store revision, records it as the key's version
and PUBLISHes it (see Versions); get, exists, ttl are GET, EXISTS, PTTL, get_many one MGET. incr/decr try
INCRBY inside their script (exact in 64 bits: the new value is read back as digits, never as a Lua
number); a float, or a value that is not a number, takes the script's other branch. cas compares encoded
values in its script; when they differ but the value there is the same value in another form (a dict in
another key order, a float written by incr in other digits), it asks again with the bytes that are there.
keys() uses SCAN, which does not block Redis but is not a snapshot: keys added or removed while it runs
may or may not be listed; it gives up when the call's timeout runs out.

Expiry is Redis's own (PX, PEXPIRE, PTTL), in whole milliseconds: a ttl is rounded up to the next one.
A plain SET clears a key's expiry, so store, store_many and cas do; incr keeps it (INCRBY, SET KEEPTTL).

Versions and wait. A key's version is the revision of its last change (0: never written; a deleted key
keeps its version). Redis expires keys without running a script, so an expiry is recorded when it is
next looked at: by get_versioned, by a waiter, or by the expiry sweep of size() and of writes with a ttl.
wait SUBSCRIBEs to the key's channel (no keyspace notifications needed), then reads the version, and
sleeps until a change is published or the key's expiry time passes: it never polls.

Locks: SET NX PX holding a fencing token from a per-lock INCR counter; release and extend are scripts that
check the token (LockLost otherwise). A waiter BLPOPs the lock's wake-up list, which a release pushes one
wake-up onto, for no longer than the holder's lease has left, then tries again. A dead holder's lock lasts
until its lease ends, and waiters are not granted in arrival order.

Queues: put is RPUSH; get moves the first item into a processing list of its own connection (LMOVE, or
BLMOVE to wait), then removes it from there. A get whose reply is lost leaves its item in that list,
`<0xFF>kvmgr:processing:<queue><0xFF><CLIENT ID>`; requeue_lost(queue) puts such items back at the queue's head.

Blocking calls (lock_acquire, wait, queue_get, rendezvous) run on a connection of their own, whose read
deadline is their timeout plus the client's.

kvmgr's own keys start with the byte 0xFF, which no UTF-8 key can start with, so no user key can collide
with them; keys() leaves them out, and size() (one Lua step) subtracts those that exist, found through the
set INTERNAL_INDEX that lists them.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, cast, overload
from urllib.parse import urlsplit

from kvmgr.client.operations import Operations, with_history
from kvmgr.client.pool import ConnectionPool
from kvmgr.client.redis_scripts import (
    CHANNEL_PREFIX,
    PROCESSING_PREFIX,
    SCRIPTS,
    VERSIONED_SCRIPTS,
    bookkeeping,
    own_key,
)
from kvmgr.client.redis_urls import CLUSTER_SCHEME, PLAIN_SCHEMES, SENTINEL_SCHEME, RedisTarget, parse_target, redact
from kvmgr.client.retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy
from kvmgr.config import BLOCKING_CEILING, DEFAULT_LIMITS, DEFAULT_TIMEOUT, RENDEZVOUS_TIMEOUT, SCAN_PAGE, VERSION, Limits
from kvmgr.errors import (
    AuthenticationFailed,
    ConfigError,
    InvalidValue,
    KeyNotFound,
    KvmgrError,
    LockLost,
    LockTimeout,
    OutcomeUnknown,
    ProtocolError,
    QueueEmpty,
    ServerUnavailable,
    UnknownOperation,
    WaitTimeout,
    WrongType,
)
from kvmgr.protocol import wire
from kvmgr.protocol.operations import BY_NAME
from kvmgr.protocol.validation import (
    check_counter,
    check_delta,
    check_expected,
    check_key,
    check_key_list,
    check_keys_page,
    check_lease,
    check_mapping,
    check_name,
    check_rendezvous,
    check_ttl,
    check_value,
    check_wait,
    page_of_keys,
    ttl_milliseconds,
)
from kvmgr.protocol.values import Number, Value, ValueRuleError, decode, encode, same_value

if TYPE_CHECKING:
    from types import ModuleType

    import redis
    from redis.commands.core import Script

    from kvmgr.client.recording import RecordingClient
    from kvmgr.verify.history import HistoryWriter

OWN_KEY_START = b"\xff"  # every key of kvmgr's own starts with it, and no UTF-8 key does
NO_VALUE = b""  # what cas sends for expected=None: no encoded value is empty
GO = b"go"
MISSING_REDIS = "redis:// targets need redis-py: pip install 'kvmgr[redis]'"
QUIT_REFUSED = "quit is not supported on a Redis target: kvmgr never shuts down a Redis server it did not start"
CAS_ATTEMPTS = 16  # cas asks again at most this often when the value there is expected's value in other bytes
WAKE_MS = 10_000  # how long a lock's wake-up waits in its list for a waiter about to BLPOP
SHORTEST_BLOCK = 0.001  # seconds: BLPOP/BLMOVE take 0 as "forever", so a wait never asks for less than this


def import_redis() -> ModuleType:
    """The redis-py package; ConfigError if it is not installed (it is the optional extra kvmgr[redis])."""
    try:
        import redis
    except ImportError:
        raise ConfigError(MISSING_REDIS) from None
    return redis


redact_url = redact  # the URL with its passwords replaced by ***, for messages


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


milliseconds = ttl_milliseconds  # a ttl in whole milliseconds, as every backend keeps it


NAMED_KINDS = (b"lock:", b"lock-tokens:", b"lock-wake:", b"queue:", b"processing:", b"rendezvous:")
"""The internal keys named after a lock, a queue or a rendezvous (their name follows the kind)."""


def forget_bookkeeping(db: redis.Redis, pattern: bytes) -> int:
    """On one server: delete the internal keys of names matching pattern, and the entries of keys matching it in the
    version and expiry bookkeeping (on a cluster there is one of each per slot tag: every one found is cleaned)."""
    removed = 0
    for kind in NAMED_KINDS:
        for name in db.scan_iter(match=b"\xff*kvmgr:" + kind + pattern, count=SCAN_PAGE):
            removed += int(db.delete(name))
    for table in (b"versions", b"expires"):
        for name in db.scan_iter(match=b"\xff*kvmgr:" + table, count=SCAN_PAGE):
            fields = [field for field, _ in db.hscan_iter(name, match=pattern, count=SCAN_PAGE)]
            removed += int(db.hdel(name, *fields)) if fields else 0
    for name in db.scan_iter(match=b"\xff*kvmgr:expiring", count=SCAN_PAGE):
        members = [member for member, _ in db.zscan_iter(name, match=pattern, count=SCAN_PAGE)]
        removed += int(db.zrem(name, *members)) if members else 0
    for name in db.scan_iter(match=b"\xff*kvmgr:internal", count=SCAN_PAGE):
        listed = [member for kind in NAMED_KINDS for member in db.sscan_iter(name, match=b"\xff*kvmgr:" + kind + pattern)]
        removed += int(db.srem(name, *listed)) if listed else 0
    for name in db.scan_iter(match=b"\xff*kvmgr:revision", count=SCAN_PAGE):  # a counter no key's version is left from
        removed += int(db.eval(FORGET_REVISION_SCRIPT, 2, name[: -len(b"revision")] + b"versions", name))
    return removed


FORGET_REVISION_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.call('DEL', KEYS[2]) end
return 0
"""
"""Delete a revision counter (KEYS[2]) once no key has a version (KEYS[1], the versions hash of the same slot, is gone),
in one step: a write meanwhile would have recorded a version first."""


def info_figures(info: dict[str, Any], url: str, where: str, keys: int) -> dict[str, Any]:
    """The info operation's figures from Redis's INFO (server, clients, memory, persistence, stats, keyspace)."""
    path = urlsplit(url).path.strip("/")
    database = int(path.rpartition("/")[2] if path.rpartition("/")[2].isdigit() else 0)
    keyspace = info.get(f"db{database}")
    return {
        "uptime_seconds": info.get("uptime_in_seconds"), "version": f"kvmgr {VERSION}, Redis {info.get('redis_version')}",
        "protocol_version": None, "address": where,
        "durable": bool(info.get("aof_enabled")),  # an append-only file (RDB snapshots alone can lose minutes of writes)
        "fsync": info.get("aof_fsync") if info.get("aof_enabled") else None, "keys": keys,
        "expiring_keys": keyspace.get("expires", 0) if isinstance(keyspace, dict) else 0,
        "rss_bytes": info.get("used_memory_rss"), "connected_clients": info.get("connected_clients"),
        "max_connections": info.get("maxclients"), "operations": {}, "errors": {},
        "ops_per_second": info.get("instantaneous_ops_per_sec"), "commands_processed": info.get("total_commands_processed"),
    }


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


class Endpoint:
    """One Redis server a client talks to: how to open a connection to it, and its pool of idle connections."""

    def __init__(self, opener: Callable[[float], redis.Redis], stale: Callable[[redis.Redis], bool], timeout: float) -> None:
        self.open = opener  # given a socket timeout, a new single-connection client (ServerUnavailable if it cannot connect)
        self.pool: ConnectionPool[redis.Redis] = ConnectionPool(lambda: opener(timeout), _close_quietly, stale)


class RedisClient(Operations):
    """One Redis database with the kvmgr API, for any number of threads at once; every call is bounded by `timeout`.

    Like the manager client, each call leases a connection of its own from a small pool: threads never
    share one, a call that is interrupted takes its connection with it, and a forked child opens its own.
    How a connection is opened is the one thing the deployments differ in: this class reaches one server
    (redis://); SentinelRedisClient asks Sentinels for the primary, ClusterRedisClient routes each call to
    the node of its key's hash slot (kvmgr/client/redis_deployments.py). The operations are written once, here.

    With `?durability=replicated` in the URL a write is acknowledged only once `WAIT 1` reports that a replica
    has it; if none does within `replica_timeout`, the call raises OutcomeUnknown (the write stays on the primary).
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
        self._target: RedisTarget = parse_target(url)
        self._check_url()
        self._limits = limits  # validated exactly as the server-side Store does
        self._endpoint = Endpoint(self._open, self._stale, timeout)
        self._pool = self._endpoint.pool
        self._scripts: dict[str, Script] = {}
        self._channels = CHANNEL_PREFIX + str(self._database()).encode() + b":"  # + a key: its change notifications

    def _check_url(self) -> None:
        """Reject a malformed URL, or one with options redis-py does not know, before any network traffic."""
        if self._target.scheme not in PLAIN_SCHEMES:
            raise ConfigError(f"{self._where!r} is not a redis:// URL: open it with connect_redis (or kvmgr.connect)")
        try:
            options = self._redis.connection.parse_url(self._target.url)
            connection_class = options.pop("connection_class", self._redis.Connection)
            connection_class(**options)  # only stores the options: it does not connect
        except ValueError as exc:
            raise ConfigError(f"bad Redis URL {self._where!r}: {exc}") from None
        except TypeError as exc:  # an option redis-py does not know
            unknown = re.search(r"argument '(\w+)'", str(exc))
            raise ConfigError(f"bad Redis URL {self._where!r}: unknown option {unknown[1] if unknown else exc}") from None
        parts = urlsplit(self._target.url)
        database = parts.path.strip("/")
        if parts.scheme in ("redis", "rediss") and database and not database.isdigit():
            raise ConfigError(f"bad Redis URL {self._where!r}: the database after the port must be a number, like /0")

    def _database(self) -> int:
        """The database number the URL selects (pub/sub channels are shared by all of a server's databases)."""
        return int(self._redis.connection.parse_url(self._target.url).get("db", 0))

    def session(self) -> RedisClient:
        """A client of the same database with connections of its own, never repeating a call."""
        return type(self)(self.address, self.timeout, self.name, limits=self._limits, retry=NO_RETRY)

    # --- where kvmgr's own keys live (a cluster puts each in the hash slot it serves) ---

    def _tag(self, raw: bytes) -> bytes:
        """The hash tag of kvmgr's own keys that serve the user key or name raw: none on a single server."""
        return b""

    def _own(self, kind: bytes, raw: bytes) -> bytes:
        """kvmgr's own key of that kind (b"lock:", b"queue:", ...) for the name raw."""
        return own_key(kind, self._tag(raw)) + raw

    def _index(self, raw: bytes) -> bytes:
        """The set listing kvmgr's own keys that may exist now (those serving raw's slot, on a cluster)."""
        return own_key(b"internal", self._tag(raw))

    def _processing_list(self, name: str, client_id: int | None) -> bytes:
        """The processing list of one connection (its CLIENT ID) for a queue; given None, the prefix of them all."""
        return processing_list(name, client_id, self._tag(pack_key(name)))

    # --- one call: dispatch, connection, error translation ---

    def _call(self, method: str, args: tuple, timeout: float | None) -> Any:
        """Validate and run one attempt of one operation on a connection of its own; translate redis-py errors into kvmgr errors.

        A call with its own timeout (a rendezvous) opens a connection for itself alone and closes it after.
        A pooled connection goes back to the pool unless the call ended without its whole reply.
        """
        if method not in wire.EXPOSED:
            raise UnknownOperation(f"method {method!r} is not exposed; exposed are {', '.join(sorted(wire.EXPOSED))}")
        return self._attempt(self._endpoint, method, args, timeout)

    def _attempt(self, endpoint: Endpoint, method: str, args: tuple, timeout: float | None) -> Any:
        """One attempt of one operation on a connection to endpoint (see _call)."""
        operation = getattr(self, f"_do_{method}")
        if timeout is not None:
            own = endpoint.open(timeout)
            try:
                return self._replicated(own, method, operation(own, *args))
            except KvmgrError:  # ours; LockTimeout, WaitTimeout and QueueEmpty are TimeoutErrors, so OSErrors too
                raise
            except (self._redis.RedisError, OSError) as exc:
                raise self._command_error(method, exc) from None
            finally:
                _close_quietly(own)
        lease = endpoint.pool.acquire()
        try:
            result = self._replicated(lease.connection, method, operation(lease.connection, *args))
        except KvmgrError:  # ours (KeyNotFound, InvalidKey, ...), raised after a reply was read in full
            endpoint.pool.release(lease)
            raise
        except (self._redis.RedisError, OSError) as exc:
            answered = isinstance(exc, self._redis.ResponseError)  # Redis refused the command: the connection is fine
            (endpoint.pool.release if answered else endpoint.pool.discard)(lease)
            raise self._command_error(method, exc) from None
        except BaseException:
            endpoint.pool.discard(lease)  # interrupted mid-call: its reply may still come, no other call may read it
            raise
        endpoint.pool.release(lease)
        return result

    def _replicated(self, db: redis.Redis, method: str, result: Any) -> Any:
        """result, once a replica has confirmed this connection's writes (WAIT 1), given durability=replicated.

        OutcomeUnknown if no replica confirms within replica_timeout (capped at half the client's timeout, so
        the WAIT's reply still arrives within it): the write is on the primary, but a failover may lose it.
        """
        if not self._target.replicated or not BY_NAME[method].mutates:
            return result
        wait_ms = max(1, int(min(self._target.replica_timeout, self.timeout / 2) * 1000))
        confirmed = int(db.execute_command("WAIT", 1, wait_ms))
        if confirmed < 1:
            raise OutcomeUnknown(
                f"{method}: Redis at {self._where} applied the write but no replica confirmed it within {wait_ms} ms "
                "(durability=replicated); a failover may lose it", timed_out=True,
            )
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
                self._target.url, socket_timeout=socket_timeout, socket_connect_timeout=self.timeout,
                retry=module.retry.Retry(module.backoff.NoBackoff(), 0), retry_on_timeout=False, single_connection_client=True,
            ))
        except (module.RedisError, OSError) as exc:
            raise self._connect_error(exc) from None
        return self._with_scripts(db)

    def _with_scripts(self, db: redis.Redis) -> redis.Redis:
        """db, once the scripts are registered (with the first connection opened: they are run with any connection)."""
        if not self._scripts:
            self._scripts = {name: db.register_script(source) for name, source in SCRIPTS.items()}
        return db

    def _every_endpoint(self) -> list[Endpoint]:
        """The endpoints that together hold the whole database: the one server here, every primary on a cluster."""
        return [self._endpoint]

    def _ping(self) -> None:
        """Connect and PING; ServerUnavailable or AuthenticationFailed if Redis does not answer within the timeout."""
        for endpoint in self._every_endpoint():
            lease = endpoint.pool.acquire()
            try:
                lease.connection.ping()
            except (self._redis.RedisError, OSError) as exc:
                endpoint.pool.discard(lease)
                raise self._connect_error(exc) from None
            endpoint.pool.release(lease)

    def _script(self, db: redis.Redis, name: str, keys: list[bytes], args: list[Any]) -> Any:
        """Run one of SCRIPTS on db (EVALSHA, loading it if Redis lacks it); see script_arguments."""
        keys, args = self.script_arguments(name, keys, args)
        return self._scripts[name](keys=keys, args=args, client=db)

    def script_arguments(self, name: str, keys: list[bytes], args: list[Any]) -> tuple[list[bytes], list[Any]]:
        """A versioned script's KEYS and ARGV: its keys, then the bookkeeping keys of their slot; the channel prefix first."""
        if name not in VERSIONED_SCRIPTS:
            return keys, args
        return [*keys, *bookkeeping(self._tag(keys[0]) if keys else b"")], [self._channels, *args]

    def close(self) -> None:
        """Close the connections (the next call reconnects)."""
        self._endpoint.pool.close()

    def flush(self) -> None:
        """Empty the whole database (FLUSHDB; on a cluster, of every primary): for a database dedicated to kvmgr."""
        for endpoint in self._every_endpoint():
            self._on_endpoint(endpoint, "flush", lambda db: db.flushdb())

    def forget_namespace(self, prefix: str) -> int:
        """Remove kvmgr's own bookkeeping about the keys, locks, queues and rendezvous under prefix (after a namespace's
        keys were deleted): their versions, recorded expiries and index entries, and every internal key of theirs.
        How many entries and keys went. (NamespacedClient.delete_namespace calls it: a run leaves no trace.)"""
        pattern = glob_escape(pack_key(prefix)) + b"*"
        return sum(self._on_endpoint(endpoint, "forget_namespace", partial(forget_bookkeeping, pattern=pattern))
                   for endpoint in self._every_endpoint())

    # --- the operations, with the Store's validation and semantics ---

    def _do_store(self, db: redis.Redis, key: str, value: Value, ttl: float | None = None) -> str:
        """store: one Lua step that checks EXISTS, then SETs (with PX given a ttl; without, clearing any expiry)."""
        key, value, ttl = check_key(key, self._limits), check_value(value, self._limits), check_ttl(ttl)
        args: list[Any] = [encode(value)] if ttl is None else [encode(value), milliseconds(ttl)]
        existed = self._script(db, "store", [pack_key(key)], args)
        return "updated" if existed else "saved"

    def _do_get(self, db: redis.Redis, key: str) -> Value:
        """get: GET, KeyNotFound if absent."""
        check_key(key, self._limits)
        raw = cast(bytes | None, db.get(pack_key(key)))
        if raw is None:
            raise KeyNotFound(key)
        return unpack_value(raw, key)

    def _do_delete(self, db: redis.Redis, key: str) -> bool:
        """delete: a Lua step: DEL, and a new version if it existed."""
        check_key(key, self._limits)
        return bool(self._script(db, "delete", [pack_key(key)], []) == 1)

    def _do_exists(self, db: redis.Redis, key: str) -> bool:
        """exists: EXISTS."""
        check_key(key, self._limits)
        return db.exists(pack_key(key)) == 1

    def _do_keys(self, db: redis.Redis, prefix: str | None = None, limit: int | None = None, after: str | None = None) -> list[str]:
        """keys: SCAN (MATCH prefix*) page by page within the call's timeout; kvmgr's own keys are left out."""
        check_keys_page(prefix, limit, after)
        found = self._scan(db, prefix, time.monotonic() + self.timeout)
        return page_of_keys(map(unpack_key, found), prefix, limit, after)

    def _scan(self, db: redis.Redis, prefix: str | None, deadline: float) -> set[bytes]:
        """The user keys (starting with prefix) of one server, by SCAN; OutcomeUnknown if it does not finish by deadline."""
        pattern = glob_escape(pack_key(prefix)) + b"*" if prefix else None
        found: set[bytes] = set()  # SCAN may repeat a key
        cursor = 0
        while True:
            cursor, raws = cast(tuple[int, list[bytes]], db.scan(cursor, match=pattern, count=SCAN_PAGE))
            found.update(raw for raw in raws if not raw.startswith(OWN_KEY_START))
            if cursor == 0:
                return found
            if time.monotonic() > deadline:
                raise OutcomeUnknown(
                    f"keys: SCAN of Redis at {self._where} did not finish within {self.timeout:g}s; "
                    "use keys(prefix=..., limit=...) or a larger timeout", timed_out=True,
                )

    def _do_size(self, db: redis.Redis) -> int:
        """size: DBSIZE less kvmgr's own keys, in one Lua step that first has Redis reclaim the keys that expired."""
        return int(self._script(db, "size", [], []))

    def _do_info(self, db: redis.Redis) -> dict[str, Any]:
        """info: what kvmgr knows from Redis's INFO and its own key count."""
        return info_figures(cast("dict[str, Any]", db.info("everything")), self.address, self._where, self._do_size(db))

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
        """Add delta to the number at key in one Lua step: INCRBY within 64 bits, else a float sum, overflow or WrongType."""
        whole = isinstance(delta, int)  # beyond 64 bits INCRBY refuses it and the script answers overflow
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
        """add: a Lua step: SET NX (PX given a ttl, and the key listed as expiring)."""
        key, value, ttl = check_key(key, self._limits), check_value(value, self._limits), check_ttl(ttl)
        args: list[Any] = [encode(value)] if ttl is None else [encode(value), milliseconds(ttl)]
        return bool(self._script(db, "add", [pack_key(key)], args) == 1)

    def _do_pop(self, db: redis.Redis, key: str) -> Value:
        """pop: a Lua step: GET and DEL; KeyNotFound if absent."""
        key = check_key(key, self._limits)
        raw = cast(bytes | None, self._script(db, "pop", [pack_key(key)], []))
        if raw is None:
            raise KeyNotFound(key)
        return unpack_value(raw, key)

    def _do_expire(self, db: redis.Redis, key: str, ttl: float) -> bool:
        """expire: a Lua step: PEXPIRE, and the key listed as expiring; False if absent."""
        key, seconds = check_key(key, self._limits), check_ttl(ttl)
        if seconds is None:
            raise InvalidValue("expire: ttl must be a number of seconds above 0, not None")
        return bool(self._script(db, "expire", [pack_key(key)], [milliseconds(seconds)]) == 1)

    def _do_ttl(self, db: redis.Redis, key: str) -> float | None:
        """ttl: PTTL in seconds; None for no expiry (-1), KeyNotFound if absent (-2)."""
        key = check_key(key, self._limits)
        left = int(db.pttl(pack_key(key)))
        if left == -2:
            raise KeyNotFound(key)
        return None if left == -1 else left / 1000

    def _do_persist(self, db: redis.Redis, key: str) -> bool:
        """persist: a Lua step: PERSIST; True if the key had an expiry."""
        return bool(self._script(db, "persist", [pack_key(check_key(key, self._limits))], []) == 1)

    def _do_quit(self, db: redis.Redis) -> str:
        """quit: refused, kvmgr never shuts down a Redis server."""
        raise KvmgrError(QUIT_REFUSED)

    def _do_rendezvous(self, db: redis.Redis, name: str, parties: int, timeout: float = RENDEZVOUS_TIMEOUT) -> int:
        """rendezvous: arrive atomically, then wait for this generation's release token."""
        check_rendezvous(name, parties)
        wait = min(float(timeout), RENDEZVOUS_TIMEOUT)
        hash_key = self._own(b"rendezvous:", pack_key(name))
        expiry_ms = int((wait + self.timeout) * 1000) + 1000
        arrival = [parties, uuid.uuid4().hex, expiry_ms]
        index, opened, generation = self._script(db, "arrive", [hash_key, self._index(pack_key(name))], arrival)
        if index < 0:
            raise InvalidValue(f"rendezvous {name!r} was opened for {opened} parties, not {parties}")
        if index + 1 == parties or self._released(db, name, generation, wait, expiry_ms):
            return int(index)
        raise KvmgrError(f"rendezvous {name!r}: not all {parties} parties arrived within {timeout}s")

    def _released(self, db: redis.Redis, name: str, generation: bytes, wait: float, expiry_ms: int) -> bool:
        """Wait for this generation's release token; on timeout break the rendezvous unless released meanwhile."""
        hash_key = self._own(b"rendezvous:", pack_key(name))
        release_key = hash_key + b":" + generation
        popped = db.blpop([release_key], timeout=wait) if wait > 0 else None
        if popped is not None:
            return popped[1] == GO
        return bool(self._script(db, "break", [hash_key, release_key, self._index(pack_key(name))], [generation, expiry_ms]) == GO)

    # --- versions and wait ---

    def _do_get_versioned(self, db: redis.Redis, key: str) -> tuple[Value | None, int]:
        """get_versioned: one Lua step reading the value and the version (an expiry not yet recorded is recorded first)."""
        value, version, _ = self._versioned(db, check_key(key, self._limits))
        return value, version

    def _versioned(self, db: redis.Redis, key: str) -> tuple[Value | None, int, int]:
        """(value or None, version, PTTL in ms: -1 no expiry, -2 absent) of key, in one step."""
        version, left_ms, *raw = self._script(db, "get_versioned", [pack_key(key)], [])
        value = None if not raw or raw[0] is None else unpack_value(raw[0], key)
        return value, int(version), int(left_ms)

    def _do_wait(self, db: redis.Redis, key: str, after: int, timeout: float | None = None) -> tuple[Value | None, int]:
        """wait: SUBSCRIBE to the key's channel, then read its version; sleep until a change is published, the
        key's expiry time passes (Redis runs no script then: the read after it records the expiry), or the timeout."""
        key, after, wait = check_key(key, self._limits), check_counter(after, "after (a version)"), check_wait(timeout)
        seconds = blocking_seconds(wait)
        deadline = time.monotonic() + seconds
        changes = db.pubsub()
        try:
            changes.subscribe(self._channels + pack_key(key))
            subscribed = _confirm_subscription(changes, deadline)
            while True:
                value, version, left_ms = self._versioned(db, key)
                remaining = deadline - time.monotonic()
                if version > after:
                    return value, version
                if remaining <= 0 or not subscribed:
                    raise WaitTimeout(f"key {key!r} did not change within {seconds:g}s (still version {version})")
                changes.get_message(ignore_subscribe_messages=True, timeout=until_expiry(remaining, left_ms))
        finally:
            changes.close()

    # --- locks ---

    def _do_lock_acquire(self, db: redis.Redis, name: str, lease: float, timeout: float | None = None) -> int:
        """lock_acquire: SET NX PX with the next token, in a Lua step; while held, BLPOP the lock's wake-up list
        (a release pushes one) no longer than the holder's lease has left, then try again."""
        name, lease, wait = check_name(name, "a lock name"), check_lease(lease), check_wait(timeout)
        seconds = blocking_seconds(wait)
        deadline = time.monotonic() + seconds
        raw = pack_key(name)
        keys = [self._own(b"lock:", raw), self._own(b"lock-tokens:", raw), self._own(b"lock-wake:", raw), self._index(raw)]
        while True:
            token, left_ms = self._script(db, "lock_acquire", keys, [milliseconds(lease)])
            remaining = deadline - time.monotonic()
            if token:
                return int(token)
            if remaining <= 0:
                raise LockTimeout(f"lock {name!r} was not acquired within {seconds:g}s")
            db.blpop([keys[2]], timeout=until_expiry(remaining, int(left_ms)))

    def _do_lock_release(self, db: redis.Redis, name: str, token: int) -> bool:
        """lock_release: a Lua step that frees the lock only if it holds token, and wakes one waiter; LockLost otherwise."""
        name, token = check_name(name, "a lock name"), check_counter(token, "a fencing token")
        raw = pack_key(name)
        keys = [self._own(b"lock:", raw), self._own(b"lock-wake:", raw), self._index(raw)]
        if self._script(db, "lock_release", keys, [token, WAKE_MS]) != 1:
            raise LockLost(f"lock {name!r} is not held with token {token} (its lease ended): nothing was freed")
        return True

    def _do_lock_extend(self, db: redis.Redis, name: str, token: int, lease: float) -> bool:
        """lock_extend: a Lua step that sets the lease (PEXPIRE) only if the lock holds token; LockLost otherwise."""
        name, token, lease = check_name(name, "a lock name"), check_counter(token, "a fencing token"), check_lease(lease)
        if self._script(db, "lock_extend", [self._own(b"lock:", pack_key(name))], [token, milliseconds(lease)]) != 1:
            raise LockLost(f"lock {name!r} is not held with token {token} (its lease ended): its lease was not extended")
        return True

    def _do_lock_locked(self, db: redis.Redis, name: str) -> bool:
        """lock_locked: EXISTS."""
        return bool(db.exists(self._own(b"lock:", pack_key(check_name(name, "a lock name")))) == 1)

    # --- queues ---

    def _do_queue_put(self, db: redis.Redis, name: str, value: Value) -> int:
        """queue_put: a Lua step: RPUSH (and the queue listed as kvmgr's own key); the length after it."""
        name, value = check_name(name, "a queue name"), check_value(value, self._limits)
        raw = pack_key(name)
        return int(self._script(db, "queue_put", [self._own(b"queue:", raw), self._index(raw)], [encode(value)]))

    def _do_queue_get(self, db: redis.Redis, name: str, timeout: float | None = None) -> Value:
        """queue_get: move the first item into this connection's processing list (LMOVE, else BLMOVE up to the
        timeout), then remove it from there: a reply lost in between leaves the item in the processing list."""
        name, wait = check_name(name, "a queue name"), check_wait(timeout)
        seconds = blocking_seconds(wait)
        queue, index = self._own(b"queue:", pack_key(name)), self._index(pack_key(name))
        processing = self._processing_list(name, int(db.client_id()))
        item = self._script(db, "queue_take", [queue, processing, index], [])
        if item is None and seconds > 0:
            item = db.blmove(queue, processing, max(seconds, SHORTEST_BLOCK), "LEFT", "RIGHT")  # type: ignore[arg-type]
        if item is None:
            self._script(db, "queue_done", [processing, index], [b""])
            raise QueueEmpty(f"queue {name!r} had no item within {seconds:g}s")
        self._script(db, "queue_done", [processing, index], [item])
        return unpack_value(cast(bytes, item), name)

    def _do_queue_size(self, db: redis.Redis, name: str) -> int:
        """queue_size: LLEN."""
        return int(db.llen(self._own(b"queue:", pack_key(check_name(name, "a queue name")))))

    def requeue_lost(self, name: str) -> int:
        """Put back at the head of queue `name` every item whose get lost its reply (its connection is gone); how many."""
        name = check_name(name, "a queue name")
        return int(self._on_endpoint(self._endpoint_of_name(name), "requeue_lost", lambda db: self._requeue_lost(db, name)))

    def _endpoint_of_name(self, name: str) -> Endpoint:
        """The endpoint that holds the keys of a key, lock or queue name (the one server here)."""
        return self._endpoint

    def _on_endpoint(self, endpoint: Endpoint, what: str, command: Callable[[redis.Redis], Any]) -> Any:
        """Run command on a pooled connection of endpoint; redis-py errors become kvmgr errors."""
        lease = endpoint.pool.acquire()
        try:
            result = command(lease.connection)
        except (self._redis.RedisError, OSError) as exc:
            endpoint.pool.discard(lease)
            raise self._command_error(what, exc) from None
        except BaseException:
            endpoint.pool.discard(lease)
            raise
        endpoint.pool.release(lease)
        return result

    def _requeue_lost(self, db: redis.Redis, name: str) -> int:
        """requeue_lost on one connection: each processing list of the queue whose CLIENT ID is no longer connected."""
        prefix, raw = self._processing_list(name, None), pack_key(name)
        connected = {int(client["id"]) for client in db.client_list()}
        moved = 0
        for member in cast(set[bytes], db.smembers(self._index(raw))):
            if member.startswith(prefix) and int(member[len(prefix):]) not in connected:
                moved += int(self._script(db, "queue_requeue", [member, self._own(b"queue:", raw), self._index(raw)], []))
        return moved


def blocking_seconds(timeout: float | None) -> float:
    """How long a blocking call waits: its own timeout, never more than the ceiling (None: the ceiling)."""
    return BLOCKING_CEILING if timeout is None else min(timeout, BLOCKING_CEILING)


def until_expiry(remaining: float, left_ms: int) -> float:
    """How long to block: what is left of the call's wait, but no longer than until a key's expiry (left_ms >= 0)."""
    nap = remaining if left_ms < 0 else min(remaining, (left_ms + 1) / 1000)
    return max(nap, SHORTEST_BLOCK)


def processing_list(queue: str, client_id: int | None, tag: bytes = b"") -> bytes:
    """The processing list of one connection (its CLIENT ID) for a queue; given None, the prefix of them all."""
    prefix = (own_key(b"processing:", tag) if tag else PROCESSING_PREFIX) + pack_key(queue) + b"\xff"  # 0xFF is never in UTF-8
    return prefix if client_id is None else prefix + str(client_id).encode()


def _confirm_subscription(changes: redis.client.PubSub, deadline: float) -> bool:
    """Wait for Redis to confirm the subscription (so no change after the next read can be missed); False if it never did."""
    while (remaining := deadline - time.monotonic()) > 0:
        message = changes.get_message(timeout=remaining)
        if message is not None and message["type"] == "subscribe":
            return True
    return False


def _close_quietly(db: redis.Redis) -> None:
    """Close one connection (redis-py never shuts down a socket that a forked child inherited)."""
    with contextlib.suppress(Exception):
        db.close()


def glob_escape(raw: bytes) -> bytes:
    """raw with Redis MATCH's special characters escaped, so it matches only itself."""
    return re.sub(rb"([*?\[\]\\])", rb"\\\1", raw)


def redis_client_class(url: str) -> type[RedisClient]:
    """The client class for a Redis URL's scheme."""
    scheme = url.partition("://")[0]
    if scheme in (SENTINEL_SCHEME, CLUSTER_SCHEME):
        from kvmgr.client.redis_deployments import ClusterRedisClient, SentinelRedisClient

        return SentinelRedisClient if scheme == SENTINEL_SCHEME else ClusterRedisClient
    return RedisClient


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
    """Connect to Redis at url and PING it, all within `timeout` (ServerUnavailable, AuthenticationFailed, ConfigError).

    url is 'redis://[[user]:password@]host:port/db' (one server), 'redis+sentinel://[user:password@]host:port[,...]/SERVICE/DB'
    (the primary the Sentinels name) or 'redis+cluster://[user:password@]host:port[,...]' (a Redis Cluster); see
    kvmgr/client/redis_urls.py for the options. Given a history, the client comes wrapped in a RecordingClient.
    """
    client = redis_client_class(url)(url, timeout, name, retry=retry)
    client._ping()
    return with_history(client, history)
