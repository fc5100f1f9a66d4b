"""Client-side adapters: one per kind of system, each with the same small interface, and the ADAPTERS table."""

from __future__ import annotations

import json
import queue
from collections.abc import Callable, Sequence
from multiprocessing import connection
from typing import Any, cast

from kvmgr.config import parse_address
from kvmgr.errors import KeyNotFound
from kvmgr.tools.bench.aio import Rounds, aio_concurrent_gets, redis_asyncio_concurrent_gets
from kvmgr.tools.bench.common import BenchError
from kvmgr.tools.bench.peers import stdlib_manager_class

PIPELINE_DEPTH = 100
LEASE = 30.0  # the lock row's lease (seconds): far longer than any hold, so no lock is lost to its lease ending


class KvmgrAdapter:
    """A kvmgr Client."""

    ops_per_call = 1

    def __init__(self, address: str, authkey: bytes) -> None:
        from kvmgr.client import connect

        self.client = connect(address, authkey=authkey, timeout=30.0)
        self.get: Callable[..., Any] = self.client.get
        self.store: Callable[..., Any] = self.client.store
        self.get_many, self.store_many = self.client.get_many, self.client.store_many
        self.incr: Callable[[str], Any] = self.client.incr
        self.locks: dict[str, Any] = {}

    def count(self, key: str) -> Any:
        """The counter's final value."""
        return self.client.get(key)

    def lock(self, name: str) -> Any:
        """kvmgr's lock: client.lock(name, lease=30) (acquire() and release()), one Lock object per name, so every
        acquire after the first reuses the session (connection) the Lock keeps."""
        if name not in self.locks:
            self.locks[name] = self.client.lock(name, lease=LEASE)
        return self.locks[name]

    def read_record(self, key: str) -> list | None:
        """The lock row's record (count, holder, stamp), None while absent."""
        try:
            return cast("list", self.client.get(key))
        except KeyNotFound:
            return None

    def write_record(self, key: str, record: list) -> None:
        """Replace the lock row's record."""
        self.client.store(key, record)

    def prepare(self, names: Sequence[str]) -> None:
        """Connect before the phase (qsize of each queue), so no hand-off pays for it."""
        for name in names:
            self.client.queue(name).qsize()

    def put(self, name: str, item: list) -> None:
        """client.queue(name).put(item)."""
        self.client.queue(name).put(item)

    def take(self, name: str, timeout: float) -> list:
        """client.queue(name).get(timeout) (QueueEmpty after timeout)."""
        return cast("list", self.client.queue(name).get(timeout))

    def load(self, mapping: dict[str, bytes], bulk: bool = False) -> None:
        """Store a batch of keys."""
        self.client.store_many(mapping)

    def close(self) -> None:
        """Disconnect, the locks' sessions too."""
        for lock in self.locks.values():
            lock.close()
        self.client.close()


class KvmgrPipelineAdapter(KvmgrAdapter):
    """Each call sends PIPELINE_DEPTH gets or stores on one connection with Client.pipeline."""

    ops_per_call = PIPELINE_DEPTH

    def __init__(self, address: str, authkey: bytes) -> None:
        super().__init__(address, authkey)
        self.get, self.store = self._pipelined_get, self._pipelined_store

    def _pipelined_get(self, key: str) -> list[Any]:
        return self.client.pipeline([("get", key)] * PIPELINE_DEPTH)

    def _pipelined_store(self, key: str, value: bytes) -> list[Any]:
        return self.client.pipeline([("store", key, value)] * PIPELINE_DEPTH)


class StdlibDictAdapter:
    """Proxies of dicts hosted by a multiprocessing SyncManager server."""

    ops_per_call = 1

    def __init__(self, address: str, authkey: bytes) -> None:
        manager = stdlib_manager_class(None)(address=parse_address(address), authkey=authkey)
        manager.connect()
        self.manager = manager
        self.point, self.bulk = manager.point_dict(), manager.bulk_dict()  # type: ignore[attr-defined]  # registered at run time
        self.counter_lock = manager.counter_lock()  # type: ignore[attr-defined]  # registered at run time
        self.locks: dict[str, Any] = {}
        self.queues: dict[str, Any] = {}

    def get(self, key: str) -> bytes:
        """One read through the proxy."""
        return cast(bytes, self.point[key])

    def store(self, key: str, value: bytes) -> None:
        """One write through the proxy."""
        self.point[key] = value

    def incr(self, key: str) -> None:
        """What a Manager user must write for a counter: get and set under a Manager Lock (four round trips)."""
        with self.counter_lock:
            self.point[key] = self.point.get(key, 0) + 1

    def count(self, key: str) -> Any:
        """The counter's final value."""
        return self.point.get(key, 0)

    def lock(self, name: str) -> Any:
        """A Manager Lock() shared by name (acquire() and release() through an AcquirerProxy), one proxy per name."""
        if name not in self.locks:
            self.locks[name] = self.manager.named_lock(name)  # type: ignore[attr-defined]  # registered at run time
        return self.locks[name]

    def read_record(self, key: str) -> list | None:
        """The lock row's record (count, holder, stamp), None while absent."""
        return cast("list | None", self.point.get(key))

    def write_record(self, key: str, record: list) -> None:
        """Replace the lock row's record."""
        self.point[key] = record

    def prepare(self, names: Sequence[str]) -> None:
        """Create the proxies before the phase (each connects and makes a call), so no hand-off pays for it."""
        for name in names:
            self._queue(name).qsize()

    def put(self, name: str, item: list) -> None:
        """Queue.put(item) on the Manager Queue of that name."""
        self._queue(name).put(item)

    def take(self, name: str, timeout: float) -> list:
        """Queue.get(timeout=...) on the Manager Queue of that name; BenchError after timeout."""
        try:
            return cast("list", self._queue(name).get(timeout=timeout))
        except queue.Empty:
            raise BenchError(f"no item in the Manager Queue {name!r} within {timeout:g}s") from None

    def _queue(self, name: str) -> Any:
        if name not in self.queues:
            self.queues[name] = self.manager.named_queue(name)  # type: ignore[attr-defined]  # registered at run time
        return self.queues[name]

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Bulk read: a copy of the dict that holds exactly the bulk keys (the proxy has no multi-get)."""
        return cast("dict[str, bytes]", self.bulk.copy())

    def store_many(self, mapping: dict[str, bytes]) -> None:
        """Bulk write with update()."""
        self.bulk.update(mapping)

    def load(self, mapping: dict[str, bytes], bulk: bool = False) -> None:
        """Store a batch of keys."""
        (self.bulk if bulk else self.point).update(mapping)

    def close(self) -> None:
        """Nothing to close: the manager's connections go with the process."""


class FloorAdapter:
    """A bare multiprocessing.connection to the echo server: one send and one recv per operation."""

    ops_per_call = 1

    def __init__(self, address: str, authkey: bytes) -> None:
        self.conn = connection.Client(parse_address(address), authkey=authkey)

    def get(self, key: str) -> object:
        """Round trip of a (key, None) tuple."""
        self.conn.send((key, None))
        return self.conn.recv()

    def store(self, key: str, value: bytes) -> object:
        """Round trip of a (key, value) tuple."""
        self.conn.send((key, value))
        return self.conn.recv()

    def load(self, mapping: dict[str, bytes], bulk: bool = False) -> None:
        """Nothing to load: the echo server keeps no data."""

    def close(self) -> None:
        """Disconnect."""
        self.conn.close()


class SelectorsFloorAdapter(FloorAdapter):
    """A bare multiprocessing.connection to the reference selectors server: one pickled (op, key, value) per operation."""

    def get(self, key: str) -> object:
        """Read one key."""
        self.conn.send(("get", key, None))
        return self.conn.recv()

    def store(self, key: str, value: bytes) -> object:
        """Write one key."""
        self.conn.send(("store", key, value))
        return self.conn.recv()

    def load(self, mapping: dict[str, bytes], bulk: bool = False) -> None:
        """Store a batch of point keys in one request (it has no bulk workloads)."""
        if not bulk:
            self.conn.send(("load", mapping, None))
            self.conn.recv()


class RedisAdapter:
    """redis-py against the benchmark's own redis-server: GET, SET, MGET, MSET."""

    ops_per_call = 1

    def __init__(self, address: str, authkey: bytes) -> None:
        import redis

        self.redis = redis.Redis.from_url(address, socket_timeout=30.0)
        self.locks: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        """GET."""
        return self.redis.get(key)

    def store(self, key: str, value: bytes) -> object:
        """SET."""
        return self.redis.set(key, value)

    def incr(self, key: str) -> Any:
        """INCR."""
        return self.redis.incr(key)

    def count(self, key: str) -> int:
        """The counter's final value (GET, as an int)."""
        return int(self.redis.get(key) or 0)

    def lock(self, name: str) -> Any:
        """redis-py's Lock: r.lock(name, timeout=30, blocking=True) (its acquire polls every 0.1 s, its default sleep),
        one Lock object per name."""
        if name not in self.locks:
            self.locks[name] = self.redis.lock(name, timeout=LEASE, blocking=True)
        return self.locks[name]

    def read_record(self, key: str) -> list | None:
        """The lock row's record (count, holder, stamp) from GET, as JSON; None while absent."""
        raw = self.redis.get(key)
        return None if raw is None else cast("list", json.loads(raw))

    def write_record(self, key: str, record: list) -> None:
        """SET the lock row's record, as JSON."""
        self.redis.set(key, json.dumps(record))

    def prepare(self, names: Sequence[str]) -> None:
        """Connect before the phase (LLEN of each list), so no hand-off pays for it."""
        for name in names:
            self.redis.llen(name)

    def put(self, name: str, item: list) -> None:
        """RPUSH the item, as JSON."""
        self.redis.rpush(name, json.dumps(item))

    def take(self, name: str, timeout: float) -> list:
        """BLPOP one item; BenchError after timeout."""
        popped = self.redis.blpop([name], timeout=timeout)
        if popped is None:
            raise BenchError(f"no item in the Redis list {name!r} within {timeout:g}s")
        return cast("list", json.loads(popped[1]))

    def get_many(self, keys: Sequence[str]) -> Any:
        """MGET."""
        return self.redis.mget(keys)

    def store_many(self, mapping: dict[str, bytes]) -> object:
        """MSET."""
        return self.redis.mset(mapping)

    def load(self, mapping: dict[str, bytes], bulk: bool = False) -> None:
        """Store a batch of keys."""
        self.redis.mset(mapping)

    def close(self) -> None:
        """Disconnect."""
        self.redis.close()


class RedisPipelineAdapter(RedisAdapter):
    """Each call sends PIPELINE_DEPTH GETs or SETs on random keys in one pipeline."""

    ops_per_call = PIPELINE_DEPTH
    keyspace = 1_000

    def get(self, key: str) -> Any:
        """PIPELINE_DEPTH GETs in one round trip (key is one of them)."""
        pipe = self.redis.pipeline(transaction=False)
        for other in self._keys_like(key):
            pipe.get(other)
        return pipe.execute()

    def store(self, key: str, value: bytes) -> list[Any]:
        """PIPELINE_DEPTH SETs in one round trip (key is one of them)."""
        pipe = self.redis.pipeline(transaction=False)
        for other in self._keys_like(key):
            pipe.set(other, value)
        return pipe.execute()

    def _keys_like(self, key: str) -> list[str]:
        number = int(key[1:])
        return [f"{key[0]}{(number + step) % self.keyspace:015d}" for step in range(PIPELINE_DEPTH)]


class BareDictAdapter:
    """A plain dict in this process: the memory baseline."""

    ops_per_call = 1

    def __init__(self, address: str, authkey: bytes) -> None:
        self.data: dict[str, bytes] = {}

    def load(self, mapping: dict[str, bytes], bulk: bool = False) -> None:
        """Add a batch of keys."""
        self.data.update(mapping)

    def close(self) -> None:
        """Nothing to close."""


class AioAdapter:
    """kvmgr.aio, the asyncio client (a kvmgr server or redis://): rounds of concurrent gets from one process."""

    def __init__(self, address: str, authkey: bytes) -> None:
        self.address, self.authkey = address, authkey or None

    def concurrent_gets(self, count: int, rounds: int, warmup: int, prefix: str) -> Rounds:
        """Store `count` keys, then time rounds of `count` concurrent gets on one client, every answer checked."""
        return aio_concurrent_gets(self.address, self.authkey, count, rounds, warmup, prefix)

    def close(self) -> None:
        """Nothing to close: each measurement connects and closes inside its own event loop."""


class RedisAsyncioAdapter(AioAdapter):
    """redis.asyncio (redis-py) against the benchmark's own redis-server: the same rounds of concurrent GETs."""

    def concurrent_gets(self, count: int, rounds: int, warmup: int, prefix: str) -> Rounds:
        """MSET `count` keys, then time rounds of `count` concurrent GETs on one client, every answer checked."""
        return redis_asyncio_concurrent_gets(self.address, count, rounds, warmup, prefix)


ADAPTERS: dict[str, Callable[[str, bytes], Any]] = {
    "kvmgr": KvmgrAdapter,
    "kvmgr-pipelined": KvmgrPipelineAdapter,
    "stdlib": StdlibDictAdapter,
    "floor": FloorAdapter,
    "selectors-floor": SelectorsFloorAdapter,
    "redis": RedisAdapter,
    "redis-pipelined": RedisPipelineAdapter,
    "bare": BareDictAdapter,
    "kvmgr.aio": AioAdapter,
    "redis.asyncio": RedisAsyncioAdapter,
}
