"""AsyncRedisClient: the kvmgr API, semantics and errors on Redis for asyncio, built on redis.asyncio.

Values, keys, Lua scripts and the meaning of every operation are those of the sync Redis transport
(kvmgr/client/redis_transport.py, whose scripts, encoding helpers, URL checks and error translation are used
here as they are). Each call leases a connection of its own from a small pool (at most MAX_CONNECTIONS at once;
more tasks wait for one, within their timeout): a call that ends without its whole reply (a cancellation,
a timeout, a broken connection) closes its connection, so no later call can read that reply. A blocking
call (rendezvous) runs on a connection opened for it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from kvmgr.client.aio_operations import AsyncOperations, runs_alone
from kvmgr.client.redis_scripts import (
    INTERNAL_INDEX,
    INTERNAL_PREFIX,
    LOCK_PREFIX,
    QUEUE_PREFIX,
    RENDEZVOUS_PREFIX,
    SCRIPTS,
    TOKENS_PREFIX,
    WAKE_PREFIX,
)
from kvmgr.client.redis_transport import (
    CAS_ATTEMPTS,
    GO,
    NO_VALUE,
    QUIT_REFUSED,
    SHORTEST_BLOCK,
    WAKE_MS,
    RedisClient,
    blocking_seconds,
    glob_escape,
    incr_error,
    info_figures,
    milliseconds,
    pack_key,
    processing_list,
    unpack_key,
    unpack_value,
    until_expiry,
)
from kvmgr.client.retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy
from kvmgr.config import DEFAULT_TIMEOUT, RENDEZVOUS_TIMEOUT, SCAN_PAGE
from kvmgr.errors import (
    InvalidValue,
    KeyNotFound,
    KvmgrError,
    LockLost,
    LockTimeout,
    OutcomeUnknown,
    QueueEmpty,
    ServerUnavailable,
    UnknownOperation,
    WaitTimeout,
)
from kvmgr.protocol import wire
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
)
from kvmgr.protocol.values import Number, Value, encode, same_value

if TYPE_CHECKING:
    from redis.asyncio import Redis as AsyncRedis
    from redis.commands.core import AsyncScript

MAX_CONNECTIONS = 64  # connections one async Redis client uses at once; more tasks wait for one


class AsyncRedisClient(AsyncOperations):
    """One Redis database with the kvmgr API for asyncio; any number of tasks at once, each call bounded by `timeout`."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT, name: str = "client", *, retry: RetryPolicy = DEFAULT_RETRY) -> None:
        self._rules = RedisClient(url, timeout, name, retry=retry)  # URL checks and error translation; never connected
        self._redis = self._rules._redis
        self.address, self.timeout, self.name, self.retry = url, timeout, name, retry
        self._where = self._rules._where
        self._limits = self._rules._limits
        self._idle: list[AsyncRedis] = []
        self._busy: set[AsyncRedis] = set()
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._scripts: dict[str, AsyncScript] = {}

    async def _call(self, method: str, args: tuple, timeout: float | None) -> Any:
        """One attempt of one operation on a connection of its own; redis-py errors become kvmgr errors."""
        operation = getattr(self, f"_do_{method}", None)
        if method not in wire.EXPOSED or operation is None:
            raise UnknownOperation(f"{method} is not available on a Redis target (yet)")
        seconds = self.timeout if timeout is None else timeout
        if runs_alone(method):
            return await self._call_alone(method, operation, args, seconds)
        try:
            async with asyncio.timeout(seconds):
                await self._slots.acquire()
        except TimeoutError:
            raise ServerUnavailable(
                f"{method}: no connection to Redis at {self._where} came free within {seconds:g}s; it was not made",
            ) from None
        try:
            db = await self._lease()
            try:
                async with asyncio.timeout(seconds):
                    result = await operation(db, *args)
            except KvmgrError:  # ours (KeyNotFound, ...), raised after a reply was read in full
                self._give_back(db)
                raise
            except TimeoutError:  # asyncio's bound (an OSError): before the OSError branch
                await self._discard(db)
                raise OutcomeUnknown(
                    f"{method}: no reply from Redis at {self._where} within {seconds:g}s; it may or may not have taken effect",
                    timed_out=True,
                ) from None
            except self._redis.ResponseError as exc:  # Redis refused the command: the connection is fine
                self._give_back(db)
                raise self._rules._command_error(method, exc) from None
            except (self._redis.RedisError, OSError) as exc:
                await self._discard(db)
                raise self._rules._command_error(method, exc) from None
            except BaseException:
                await self._discard(db)  # cancelled mid-call: its reply may still come, no other call may read it
                raise
            self._give_back(db)
            return result
        finally:
            self._slots.release()

    async def _call_alone(self, method: str, operation: Any, args: tuple, seconds: float) -> Any:
        """A blocking call on a connection opened for it alone (its socket timeout is the call's), closed after."""
        db = await self._open(seconds)
        self._busy.add(db)
        try:
            async with asyncio.timeout(seconds):
                return await operation(db, *args)
        except KvmgrError:  # ours; LockTimeout, WaitTimeout and QueueEmpty are TimeoutErrors, so OSErrors too
            raise
        except TimeoutError:
            raise OutcomeUnknown(f"{method}: no reply from Redis at {self._where} within {seconds:g}s", timed_out=True) from None
        except (self._redis.RedisError, OSError) as exc:
            raise self._rules._command_error(method, exc) from None
        finally:
            await self._discard(db)

    async def _lease(self) -> AsyncRedis:
        """An idle connection, or a new one (ServerUnavailable or AuthenticationFailed if Redis cannot be reached)."""
        db = self._idle.pop() if self._idle else await self._open(self.timeout)
        self._busy.add(db)
        return db

    def _give_back(self, db: AsyncRedis) -> None:
        self._busy.discard(db)
        self._idle.append(db)

    async def _discard(self, db: AsyncRedis) -> None:
        self._busy.discard(db)
        with contextlib.suppress(Exception):
            await db.aclose()

    async def _open(self, socket_timeout: float) -> AsyncRedis:
        """Connect (and authenticate) one single-connection client within the client's timeout; redis-py never retries."""
        import redis.asyncio
        import redis.asyncio.retry

        module = self._redis
        db = redis.asyncio.Redis.from_url(
            self.address, socket_timeout=socket_timeout, socket_connect_timeout=self.timeout,
            retry=redis.asyncio.retry.Retry(module.backoff.NoBackoff(), 0), single_connection_client=True,
        )
        try:
            async with asyncio.timeout(self.timeout):
                await db.initialize()
        except (module.RedisError, OSError) as exc:  # TimeoutError included
            with contextlib.suppress(Exception):
                await db.aclose()
            raise self._rules._connect_error(exc) from None
        except BaseException:
            with contextlib.suppress(Exception):
                await db.aclose()
            raise
        if not self._scripts:
            self._scripts = {name: db.register_script(source) for name, source in SCRIPTS.items()}
        return cast("AsyncRedis", db)

    async def ping(self) -> None:
        """Connect and PING; ServerUnavailable or AuthenticationFailed if Redis does not answer within the timeout."""
        db = await self._lease()
        try:
            async with asyncio.timeout(self.timeout):
                await db.ping()
        except (self._redis.RedisError, OSError) as exc:
            await self._discard(db)
            raise self._rules._connect_error(exc) from None
        except BaseException:
            await self._discard(db)
            raise
        self._give_back(db)

    async def _script(self, db: AsyncRedis, name: str, keys: list[bytes], args: list[Any]) -> Any:
        """Run one of SCRIPTS on db (EVALSHA, loading it if Redis lacks it), with the sync client's KEYS and ARGV."""
        keys, args = self._rules.script_arguments(name, keys, args)
        return await self._scripts[name](keys=keys, args=args, client=db)

    def session(self) -> AsyncRedisClient:
        """A client of the same database with connections of its own, never repeating a call."""
        return AsyncRedisClient(self.address, self.timeout, self.name, retry=NO_RETRY)

    async def flush(self) -> None:
        """Empty the whole database (FLUSHDB): for a database dedicated to kvmgr."""
        await self._call_pooled_raw(lambda db: db.flushdb())

    async def _call_pooled_raw(self, command: Any) -> Any:
        db = await self._lease()
        try:
            async with asyncio.timeout(self.timeout):
                result = await command(db)
        except BaseException:
            await self._discard(db)
            raise
        self._give_back(db)
        return result

    async def close(self) -> None:
        """Close every connection (calls in flight fail); the next call reconnects."""
        connections = [*self._idle, *self._busy]
        self._idle, self._busy = [], set()
        for db in connections:
            with contextlib.suppress(Exception):
                await db.aclose()

    # --- the operations: RedisClient's `_do_` methods, awaiting redis.asyncio (same scripts, same checks) ---

    async def _do_store(self, db: AsyncRedis, key: str, value: Value, ttl: float | None = None) -> str:
        key, value, ttl = check_key(key, self._limits), check_value(value, self._limits), check_ttl(ttl)
        args: list[Any] = [encode(value)] if ttl is None else [encode(value), milliseconds(ttl)]
        existed = await self._script(db, "store", [pack_key(key)], args)
        return "updated" if existed else "saved"

    async def _do_get(self, db: AsyncRedis, key: str) -> Value:
        check_key(key, self._limits)
        raw = cast(bytes | None, await db.get(pack_key(key)))
        if raw is None:
            raise KeyNotFound(key)
        return unpack_value(raw, key)

    async def _do_delete(self, db: AsyncRedis, key: str) -> bool:
        check_key(key, self._limits)
        return bool(await self._script(db, "delete", [pack_key(key)], []) == 1)

    async def _do_exists(self, db: AsyncRedis, key: str) -> bool:
        check_key(key, self._limits)
        return bool(await db.exists(pack_key(key)) == 1)

    async def _do_keys(self, db: AsyncRedis, prefix: str | None = None, limit: int | None = None, after: str | None = None) -> list[str]:
        check_keys_page(prefix, limit, after)
        pattern = glob_escape(pack_key(prefix)) + b"*" if prefix else None
        deadline = time.monotonic() + self.timeout
        found: set[bytes] = set()
        cursor = 0
        while True:
            cursor, raws = cast(tuple[int, list[bytes]], await db.scan(cursor, match=pattern, count=SCAN_PAGE))
            found.update(raw for raw in raws if not raw.startswith(INTERNAL_PREFIX))
            if cursor == 0:
                break
            if time.monotonic() > deadline:
                raise OutcomeUnknown(
                    f"keys: SCAN of Redis at {self._where} did not finish within {self.timeout:g}s; "
                    "use keys(prefix=..., limit=...) or a larger timeout", timed_out=True,
                )
        return page_of_keys(map(unpack_key, found), prefix, limit, after)

    async def _do_size(self, db: AsyncRedis) -> int:
        return int(await self._script(db, "size", [], []))

    async def _do_info(self, db: AsyncRedis) -> dict[str, Any]:
        """info: what kvmgr knows from Redis's INFO and its own key count (as the sync client)."""
        return info_figures(await db.info("everything"), self.address, self._where, await self._do_size(db))

    async def _do_cas(self, db: AsyncRedis, key: str, expected: Value | None, value: Value) -> bool:
        key, expected, value = check_key(key, self._limits), check_expected(expected, self._limits), check_value(value, self._limits)
        wanted, new = (NO_VALUE if expected is None else encode(expected)), encode(value)
        for _ in range(CAS_ATTEMPTS):
            answer = await self._script(db, "cas", [pack_key(key)], [wanted, new])
            if not isinstance(answer, bytes):
                return bool(answer == 1)
            if not same_value(unpack_value(answer, key), expected):
                return False
            wanted = answer
        raise KvmgrError(f"cas: key {key!r} was rewritten {CAS_ATTEMPTS} times in a row while cas compared it; nothing changed, try again")

    async def _do_get_many(self, db: AsyncRedis, keys: list[str]) -> dict[str, Value]:
        keys = check_key_list(keys, self._limits)
        if not keys:
            return {}
        raws = cast(list[bytes | None], await db.mget([pack_key(key) for key in keys]))
        return {key: unpack_value(raw, key) for key, raw in zip(keys, raws, strict=True) if raw is not None}

    async def _do_store_many(self, db: AsyncRedis, mapping: Mapping[str, Value]) -> dict[str, str]:
        mapping = check_mapping(mapping, self._limits)
        if not mapping:
            return {}
        keys = list(mapping)
        existed = await self._script(db, "store_many", [pack_key(key) for key in keys], [encode(mapping[key]) for key in keys])
        return {key: "updated" if flag else "saved" for key, flag in zip(keys, existed, strict=True)}

    async def _do_incr(self, db: AsyncRedis, key: str, by: Number = 1) -> Number:
        return await self._add_number(db, check_key(key, self._limits), check_delta(by))

    async def _do_decr(self, db: AsyncRedis, key: str, by: Number = 1) -> Number:
        return await self._add_number(db, check_key(key, self._limits), -check_delta(by))

    async def _add_number(self, db: AsyncRedis, key: str, delta: Number) -> Number:
        whole = isinstance(delta, int)
        try:
            as_float = repr(float(delta))
        except OverflowError:
            as_float = "inf"
        outcome = await self._script(db, "incr", [pack_key(key)], [str(delta) if whole else "", as_float])
        kind, text = outcome[0], outcome[-1]
        if kind == b"i":
            return int(text)
        if kind == b"f":
            return float(text)
        raise incr_error(key, outcome)

    async def _do_add(self, db: AsyncRedis, key: str, value: Value, ttl: float | None = None) -> bool:
        key, value, ttl = check_key(key, self._limits), check_value(value, self._limits), check_ttl(ttl)
        args: list[Any] = [encode(value)] if ttl is None else [encode(value), milliseconds(ttl)]
        return bool(await self._script(db, "add", [pack_key(key)], args) == 1)

    async def _do_pop(self, db: AsyncRedis, key: str) -> Value:
        key = check_key(key, self._limits)
        raw = await self._script(db, "pop", [pack_key(key)], [])
        if raw is None:
            raise KeyNotFound(key)
        return unpack_value(raw, key)

    async def _do_expire(self, db: AsyncRedis, key: str, ttl: float) -> bool:
        key, seconds = check_key(key, self._limits), check_ttl(ttl)
        if seconds is None:
            raise InvalidValue("expire: ttl must be a number of seconds above 0, not None")
        return bool(await self._script(db, "expire", [pack_key(key)], [milliseconds(seconds)]) == 1)

    async def _do_ttl(self, db: AsyncRedis, key: str) -> float | None:
        key = check_key(key, self._limits)
        left = int(await db.pttl(pack_key(key)))
        if left == -2:
            raise KeyNotFound(key)
        return None if left == -1 else left / 1000

    async def _do_persist(self, db: AsyncRedis, key: str) -> bool:
        return bool(await self._script(db, "persist", [pack_key(check_key(key, self._limits))], []) == 1)

    async def _do_quit(self, db: AsyncRedis) -> str:
        raise KvmgrError(QUIT_REFUSED)

    async def _do_rendezvous(self, db: AsyncRedis, name: str, parties: int, timeout: float = RENDEZVOUS_TIMEOUT) -> int:
        check_rendezvous(name, parties)
        wait = min(float(timeout), RENDEZVOUS_TIMEOUT)
        hash_key = RENDEZVOUS_PREFIX + pack_key(name)
        expiry_ms = int((wait + self.timeout) * 1000) + 1000
        index, opened, generation = await self._script(db, "arrive", [hash_key, INTERNAL_INDEX], [parties, uuid.uuid4().hex, expiry_ms])
        if index < 0:
            raise InvalidValue(f"rendezvous {name!r} was opened for {opened} parties, not {parties}")
        if index + 1 == parties or await self._released(db, hash_key, generation, wait, expiry_ms):
            return int(index)
        raise KvmgrError(f"rendezvous {name!r}: not all {parties} parties arrived within {timeout}s")

    async def _released(self, db: AsyncRedis, hash_key: bytes, generation: bytes, wait: float, expiry_ms: int) -> bool:
        release_key = hash_key + b":" + generation
        popped = await db.blpop([release_key], timeout=wait) if wait > 0 else None
        if popped is not None:
            return bool(popped[1] == GO)
        return bool(await self._script(db, "break", [hash_key, release_key, INTERNAL_INDEX], [generation, expiry_ms]) == GO)

    async def _do_get_versioned(self, db: AsyncRedis, key: str) -> tuple[Value | None, int]:
        value, version, _ = await self._versioned(db, check_key(key, self._limits))
        return value, version

    async def _versioned(self, db: AsyncRedis, key: str) -> tuple[Value | None, int, int]:
        version, left_ms, *raw = await self._script(db, "get_versioned", [pack_key(key)], [])
        value = None if not raw or raw[0] is None else unpack_value(raw[0], key)
        return value, int(version), int(left_ms)

    async def _do_wait(self, db: AsyncRedis, key: str, after: int, timeout: float | None = None) -> tuple[Value | None, int]:
        key, after, wait = check_key(key, self._limits), check_counter(after, "after (a version)"), check_wait(timeout)
        seconds = blocking_seconds(wait)
        deadline = time.monotonic() + seconds
        changes = db.pubsub()
        try:
            await changes.subscribe(self._rules._channels + pack_key(key))
            subscribed = await _confirm_subscription(changes, deadline)
            while True:
                value, version, left_ms = await self._versioned(db, key)
                remaining = deadline - time.monotonic()
                if version > after:
                    return value, version
                if remaining <= 0 or not subscribed:
                    raise WaitTimeout(f"key {key!r} did not change within {seconds:g}s (still version {version})")
                await changes.get_message(ignore_subscribe_messages=True, timeout=until_expiry(remaining, left_ms))
        finally:
            with contextlib.suppress(Exception):
                await changes.aclose()

    async def _do_lock_acquire(self, db: AsyncRedis, name: str, lease: float, timeout: float | None = None) -> int:
        name, lease, wait = check_name(name, "a lock name"), check_lease(lease), check_wait(timeout)
        seconds = blocking_seconds(wait)
        deadline = time.monotonic() + seconds
        raw = pack_key(name)
        keys = [LOCK_PREFIX + raw, TOKENS_PREFIX + raw, WAKE_PREFIX + raw, INTERNAL_INDEX]
        while True:
            token, left_ms = await self._script(db, "lock_acquire", keys, [milliseconds(lease)])
            remaining = deadline - time.monotonic()
            if token:
                return int(token)
            if remaining <= 0:
                raise LockTimeout(f"lock {name!r} was not acquired within {seconds:g}s")
            await db.blpop([keys[2]], timeout=until_expiry(remaining, int(left_ms)))

    async def _do_lock_release(self, db: AsyncRedis, name: str, token: int) -> bool:
        name, token = check_name(name, "a lock name"), check_counter(token, "a fencing token")
        raw = pack_key(name)
        if await self._script(db, "lock_release", [LOCK_PREFIX + raw, WAKE_PREFIX + raw, INTERNAL_INDEX], [token, WAKE_MS]) != 1:
            raise LockLost(f"lock {name!r} is not held with token {token} (its lease ended): nothing was freed")
        return True

    async def _do_lock_extend(self, db: AsyncRedis, name: str, token: int, lease: float) -> bool:
        name, token, lease = check_name(name, "a lock name"), check_counter(token, "a fencing token"), check_lease(lease)
        if await self._script(db, "lock_extend", [LOCK_PREFIX + pack_key(name)], [token, milliseconds(lease)]) != 1:
            raise LockLost(f"lock {name!r} is not held with token {token} (its lease ended): its lease was not extended")
        return True

    async def _do_lock_locked(self, db: AsyncRedis, name: str) -> bool:
        return bool(await db.exists(LOCK_PREFIX + pack_key(check_name(name, "a lock name"))) == 1)

    async def _do_queue_put(self, db: AsyncRedis, name: str, value: Value) -> int:
        name, value = check_name(name, "a queue name"), check_value(value, self._limits)
        return int(await self._script(db, "queue_put", [QUEUE_PREFIX + pack_key(name), INTERNAL_INDEX], [encode(value)]))

    async def _do_queue_get(self, db: AsyncRedis, name: str, timeout: float | None = None) -> Value:
        name, wait = check_name(name, "a queue name"), check_wait(timeout)
        seconds = blocking_seconds(wait)
        queue, processing = QUEUE_PREFIX + pack_key(name), processing_list(name, int(await db.client_id()))
        item = await self._script(db, "queue_take", [queue, processing, INTERNAL_INDEX], [])
        if item is None and seconds > 0:
            item = await db.blmove(queue, processing, max(seconds, SHORTEST_BLOCK), "LEFT", "RIGHT")  # type: ignore[arg-type]
        if item is None:
            await self._script(db, "queue_done", [processing, INTERNAL_INDEX], [b""])
            raise QueueEmpty(f"queue {name!r} had no item within {seconds:g}s")
        await self._script(db, "queue_done", [processing, INTERNAL_INDEX], [item])
        return unpack_value(item, name)

    async def _do_queue_size(self, db: AsyncRedis, name: str) -> int:
        return int(await db.llen(QUEUE_PREFIX + pack_key(check_name(name, "a queue name"))))


async def _confirm_subscription(changes: Any, deadline: float) -> bool:
    """Wait for Redis to confirm the subscription (as redis_transport's); False if it never did."""
    while (remaining := deadline - time.monotonic()) > 0:
        message = await changes.get_message(timeout=remaining)
        if message is not None and message["type"] == "subscribe":
            return True
    return False


async def connect_redis_async(
    url: str, timeout: float = DEFAULT_TIMEOUT, name: str = "client", *, retry: RetryPolicy = DEFAULT_RETRY,
) -> AsyncRedisClient:
    """Connect to Redis at url ('redis://[[user]:password@]host:port/db') and PING it, all within `timeout`."""
    client = AsyncRedisClient(url, timeout, name, retry=retry)
    await client.ping()
    return client
