"""Redis beyond one server: a primary found through Sentinel, and a Redis Cluster. Only how a connection is opened differs.

SentinelRedisClient (redis+sentinel://) opens each connection through redis-py's Sentinel support: the
Sentinels name the current primary. When the primary dies a call in flight fails with OutcomeUnknown (its
connection broke: the write may or may not have happened, and may or may not survive the failover); the
next connection asks the Sentinels again, and while they have no primary to name (a failover takes about
down-after-milliseconds plus an election) the client keeps asking until the call's timeout has passed.

ClusterRedisClient (redis+cluster://) learns the cluster's slot map with redis-py's RedisCluster and sends
each call, on a single-connection client of its own, to the primary serving the hash slot of the call's key
or name; so every operation is the same code as on one server. kvmgr's own keys carry the hash tag of the slot
they serve (kvmgr/client/redis_scripts.py), so each Lua script touches one slot. On a cluster:
- get_many and store_many are split per hash slot: each slot's part is one atomic step (MGET, one script),
  so keys sharing a {tag} are read or written together, but the call as a whole is not atomic across slots.
- A key's version grows with every change of that key (each slot numbers its own changes), which is all
  wait() needs; versions of keys in different slots are not comparable.
- keys() and size() visit every primary with SCAN: not a snapshot while others write.
- A MOVED, ASK, TRYAGAIN or CLUSTERDOWN answer (a failover or resharding under way) means the command was
  not run: the client refreshes its slot map and runs the call again, until its timeout has passed.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from kvmgr.client.redis_scripts import hash_slot, slot_tag
from kvmgr.client.redis_transport import Endpoint, RedisClient, info_figures, pack_key, unpack_key
from kvmgr.errors import KvmgrError, OutcomeUnknown, ServerUnavailable
from kvmgr.protocol.validation import check_key_list, check_keys_page, check_mapping, page_of_keys

if TYPE_CHECKING:
    import redis
    from redis.cluster import RedisCluster
    from redis.sentinel import Sentinel

    from kvmgr.protocol.values import Value

FAILOVER_POLL = 0.05  # seconds between two attempts to reach a primary while a failover is under way
SENTINEL_SOCKET_TIMEOUT = 1.0  # the longest one Sentinel may take to answer (another is asked next)
REDIRECTS = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")  # answers meaning the command was not run on this node
UNREPEATABLE_ON_REDIRECT = frozenset({"queue_get", "rendezvous"})  # calls of several commands: one may have run


class SentinelRedisClient(RedisClient):
    """A Redis database served by whichever primary the Sentinels of its service name now (redis+sentinel://)."""

    _sentinel: Sentinel | None = None

    def _check_url(self) -> None:
        """The URL was checked by parse_target."""

    def _database(self) -> int:
        return self._target.database

    def _sentinels(self) -> Sentinel:
        """redis-py's Sentinel for the URL's Sentinels (made once; its connections are redis-py's, fork-safe)."""
        if self._sentinel is None:
            module, target = self._redis, self._target
            seconds = min(self.timeout, SENTINEL_SOCKET_TIMEOUT)
            own = {"socket_timeout": seconds, "socket_connect_timeout": seconds, "password": target.sentinel_password}
            self._sentinel = module.sentinel.Sentinel(list(target.hosts), min_other_sentinels=0, sentinel_kwargs=own)
        return self._sentinel

    def _open(self, socket_timeout: float) -> redis.Redis:
        """A connection to the primary the Sentinels name; while they name none (or it refuses), ask again until the timeout."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return self._with_scripts(self._open_primary(socket_timeout))
            except (self._redis.RedisError, OSError) as exc:
                if isinstance(exc, self._redis.exceptions.AuthenticationError) or time.monotonic() + FAILOVER_POLL > deadline:
                    raise self._connect_error(exc) from None
            time.sleep(FAILOVER_POLL)

    def _open_primary(self, socket_timeout: float) -> redis.Redis:
        """One single-connection client of the primary (connecting asks the Sentinels where it is)."""
        module, target = self._redis, self._target
        pool = module.sentinel.SentinelConnectionPool(
            target.service, self._sentinels(), is_master=True, check_connection=False, db=target.database,
            username=target.username, password=target.password, socket_timeout=socket_timeout,
            socket_connect_timeout=self.timeout, retry=module.retry.Retry(module.backoff.NoBackoff(), 0),
        )
        try:
            db: redis.Redis = module.Redis(connection_pool=pool, single_connection_client=True)
        except BaseException:
            pool.disconnect()
            raise
        db.auto_close_connection_pool = True  # closing the client closes its pool's connection
        return db

    def close(self) -> None:
        """Close the connections, and those to the Sentinels."""
        super().close()
        if self._sentinel is not None:
            self._sentinel.close()


class ClusterRedisClient(RedisClient):
    """A Redis Cluster (redis+cluster://): each call goes to the primary of its key's (or name's) hash slot."""

    def __init__(self, url: str, *args: Any, **options: Any) -> None:
        super().__init__(url, *args, **options)
        self._topology: RedisCluster | None = None
        self._topology_pid = 0
        self._nodes: dict[str, Endpoint] = {}
        self._lock = threading.Lock()

    def _check_url(self) -> None:
        """The URL was checked by parse_target."""

    def _database(self) -> int:
        return 0

    def _tag(self, raw: bytes) -> bytes:
        """The hash tag of the slot raw hashes to: kvmgr's own keys serving raw live in that slot."""
        return slot_tag(hash_slot(raw))

    # --- the slot map and the nodes ---

    def _cluster(self) -> RedisCluster:
        """redis-py's RedisCluster, for the slot map (made on first use, and again in a forked child)."""
        with self._lock:
            if self._topology is None or self._topology_pid != os.getpid():
                module, target = self._redis, self._target
                nodes = [module.cluster.ClusterNode(host, port) for host, port in target.hosts]
                try:
                    self._topology = module.cluster.RedisCluster(
                        startup_nodes=nodes, username=target.username, password=target.password,
                        socket_timeout=self.timeout, socket_connect_timeout=self.timeout, require_full_coverage=False,
                    )
                except (module.RedisError, module.exceptions.RedisClusterException, OSError) as exc:  # no node answered
                    raise self._connect_error(exc) from None
                self._topology_pid, self._nodes = os.getpid(), {}
            return self._topology

    def _refresh(self) -> None:
        """Ask the cluster for its slot map again (after a failover, a MOVED, a node that does not answer)."""
        topology = self._cluster()
        errors = (self._redis.RedisError, self._redis.exceptions.RedisClusterException, OSError)
        with contextlib.suppress(*errors):  # no node answered: the next attempt finds out
            topology.nodes_manager.initialize()

    def _node(self, host: str, port: int) -> Endpoint:
        """The endpoint of one node, made on first use."""
        name = f"{host}:{port}"
        endpoint = self._nodes.get(name)
        if endpoint is None:
            endpoint = self._nodes.setdefault(name, Endpoint(partial(self._open_node, host, port), self._stale, self.timeout))
        return endpoint

    def _open_node(self, host: str, port: int, socket_timeout: float) -> redis.Redis:
        """One single-connection client of one node."""
        module, target = self._redis, self._target
        try:
            db = module.Redis(
                host=host, port=port, username=target.username, password=target.password, socket_timeout=socket_timeout,
                socket_connect_timeout=self.timeout, retry=module.retry.Retry(module.backoff.NoBackoff(), 0),
                single_connection_client=True,
            )
        except (module.RedisError, OSError) as exc:
            raise self._connect_error(exc) from None
        return self._with_scripts(db)

    def _endpoint_of_slot(self, slot: int) -> Endpoint:
        """The endpoint of the primary serving slot; ServerUnavailable if the map has no node for it."""
        try:
            node = self._cluster().nodes_manager.get_node_from_slot(slot)
        except self._redis.exceptions.SlotNotCoveredError:
            raise ServerUnavailable(f"no node of the Redis Cluster at {self._where} serves hash slot {slot}") from None
        return self._node(node.host, node.port)

    def _endpoint_of_name(self, name: str) -> Endpoint:
        return self._endpoint_of_slot(hash_slot(pack_key(name)))

    def _every_endpoint(self) -> list[Endpoint]:
        """Every primary's endpoint."""
        return [self._node(node.host, node.port) for node in self._cluster().get_primaries()]

    def _command_error(self, method: str, exc: BaseException) -> KvmgrError:
        """As on one server, but a redirect (the command was not run on this node) is a Redirected."""
        if isinstance(exc, self._redis.ResponseError) and str(exc).split(" ", 1)[0] in REDIRECTS:
            return Redirected(f"{method}: the Redis Cluster at {self._where} answered {exc}")
        return super()._command_error(method, exc)

    # --- one call: routed by its slot, repeated after a redirect or a node that cannot be reached ---

    def _call(self, method: str, args: tuple, timeout: float | None) -> Any:
        spanning = SPANNING.get(method)
        if spanning is not None:
            return getattr(self, spanning)(args, timeout)
        if method == "quit":
            return super()._call(method, args, timeout)  # refused without a word to Redis
        return self._routed(method, args, timeout, hash_slot(pack_key(args[0])))

    def _routed(self, method: str, args: tuple, timeout: float | None, slot: int) -> Any:
        """One call on the primary of slot: after a redirect, or when that primary cannot be reached (nothing was
        sent), refresh the slot map and try again until the client's timeout has passed."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return self._attempt(self._endpoint_of_slot(slot), method, args, timeout)
            except Redirected as exc:
                if method in UNREPEATABLE_ON_REDIRECT:
                    raise OutcomeUnknown(f"{exc}; part of the call may have taken effect") from None
                failure: KvmgrError = exc
            except OutcomeUnknown:
                self._refresh()  # a node broke off: most likely it died, and a replica will take over its slots
                raise
            except ServerUnavailable as exc:  # could not connect: nothing was sent
                failure = exc
            if time.monotonic() + FAILOVER_POLL > deadline:
                raise ServerUnavailable(f"{failure} (still so after {self.timeout:g}s); the call was not made") from None
            time.sleep(FAILOVER_POLL)
            self._refresh()

    # --- the calls that span slots or nodes ---

    def _span_get_many(self, args: tuple, timeout: float | None) -> dict[str, Value]:
        """get_many: one MGET per hash slot (atomic within each slot, not across slots)."""
        keys = check_key_list(args[0], self._limits)
        found: dict[str, Value] = {}
        for slot, part in by_slot(keys).items():
            found.update(self._routed("get_many", (part,), timeout, slot))
        return {key: found[key] for key in keys if key in found}

    def _span_store_many(self, args: tuple, timeout: float | None) -> dict[str, str]:
        """store_many: one script per hash slot (atomic within each slot, not across slots).

        If a later slot's part fails, the earlier parts stay stored: the call raises OutcomeUnknown.
        """
        mapping: Mapping[str, Value] = check_mapping(args[0], self._limits)
        outcome: dict[str, str] = {}
        parts = list(by_slot(list(mapping)).items())
        for number, (slot, part) in enumerate(parts):
            try:
                outcome.update(self._routed("store_many", ({key: mapping[key] for key in part},), timeout, slot))
            except KvmgrError as exc:
                if number == 0:
                    raise
                raise OutcomeUnknown(
                    f"store_many: {number} of {len(parts)} hash slots were stored, then: {exc} (a store_many across slots "
                    "is not atomic on a Redis Cluster; keys sharing a {tag} are)",
                ) from None
        return {key: outcome[key] for key in mapping}

    def _span_keys(self, args: tuple, timeout: float | None) -> list[str]:
        """keys: SCAN every primary, then one sorted page."""
        prefix, limit, after = check_keys_page(*args, *(None,) * (3 - len(args)))
        deadline = time.monotonic() + self.timeout
        found: set[bytes] = set()
        for endpoint in self._every_endpoint():
            found |= self._on_endpoint(endpoint, "keys", lambda db: self._scan(db, prefix, deadline))
        return page_of_keys(map(unpack_key, found), prefix, limit, after)

    def _span_size(self, args: tuple, timeout: float | None) -> int:
        """size: the user keys of every primary, counted by SCAN (which skips keys that expired)."""
        deadline = time.monotonic() + self.timeout
        endpoints = self._every_endpoint()
        return sum(len(self._on_endpoint(endpoint, "size", lambda db: self._scan(db, None, deadline))) for endpoint in endpoints)

    def _span_info(self, args: tuple, timeout: float | None) -> dict[str, Any]:
        """info: the first primary's INFO figures, with the whole cluster's key count."""
        figures = self._on_endpoint(self._every_endpoint()[0], "info", lambda db: db.info("everything"))
        return info_figures(cast("dict[str, Any]", figures), "", self._where, self._span_size((), timeout))

    def close(self) -> None:
        """Close every node's connections and the slot map's."""
        with self._lock:
            nodes, topology, self._nodes, self._topology = list(self._nodes.values()), self._topology, {}, None
        for endpoint in nodes:
            endpoint.pool.close()
        if topology is not None:
            topology.close()


SPANNING = {"get_many": "_span_get_many", "store_many": "_span_store_many", "keys": "_span_keys", "size": "_span_size",
            "info": "_span_info"}


class Redirected(KvmgrError):
    """The cluster answered MOVED, ASK, TRYAGAIN or CLUSTERDOWN: the command was not run on that node."""


def by_slot(keys: list[str]) -> dict[int, list[str]]:
    """The keys grouped by hash slot, each group in the order given."""
    groups: dict[int, list[str]] = {}
    for key in keys:
        groups.setdefault(hash_slot(pack_key(key)), []).append(key)
    return groups
