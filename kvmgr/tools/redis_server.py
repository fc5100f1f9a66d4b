"""Throwaway Redis deployments on free loopback ports, memory-only, for tests and local trials of redis:// targets.

One redis-server (`start_redis_server`); a primary with replicas watched by Sentinels (`start_sentinel_deployment`,
for redis+sentinel:// URLs); a Redis Cluster of primaries and replicas (`start_cluster`, for redis+cluster://).
Every process is launched in the caller's ProcessGroup, so it is reaped with it.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from kvmgr.errors import ServerUnavailable
from kvmgr.tools.processes import ProcessGroup

LOOPBACK = "127.0.0.1"
POLL_INTERVAL = 0.02
PING_TIMEOUT = 0.5
READY_REPLIES = (b"+PONG", b"-NOAUTH")  # a server with --requirepass answers PING with NOAUTH: it is up


@dataclass
class RedisServer:
    """A redis-server this process started: its process handle, its redis:// URL and its port."""

    process: psutil.Popen
    url: str
    port: int


def find_redis_server() -> str | None:
    """The path of the redis-server executable, or None if it is not installed."""
    return shutil.which("redis-server")


def free_loopback_port(highest: int = 65535) -> int:
    """A TCP port on 127.0.0.1, at most `highest`, that was free a moment ago (redis-server needs a concrete port)."""
    for _ in range(1000):
        with socket.socket() as probe:
            try:
                probe.bind((LOOPBACK, 0 if highest == 65535 else random.randint(20000, highest)))
            except OSError:  # taken: draw again
                continue
            return int(probe.getsockname()[1])
    raise ServerUnavailable(f"no free loopback port at most {highest}")


def redis_server_argv(binary: str, port: int, extra_args: Sequence[str] = ()) -> list[str]:
    """argv for a loopback-only, memory-only redis-server that writes no files and no log."""
    return [
        binary, "--port", str(port), "--bind", LOOPBACK, "--protected-mode", "yes",
        "--save", "", "--appendonly", "no", "--dir", tempfile.gettempdir(), "--loglevel", "warning", "--logfile", os.devnull,
        # A replica's full sync would otherwise write the primary's data to <dir>/dump.rdb, which every later server
        # started with the same --dir loads at startup: load it in memory, and never name a file another server reads.
        "--repl-diskless-load", "swapdb", "--repl-diskless-sync-delay", "0", "--dbfilename", f"kvmgr-{port}-{uuid.uuid4().hex}.rdb",
        *extra_args,
    ]


def start_redis_server(
    group: ProcessGroup, timeout: float = 10.0, extra_args: Sequence[str] = (), port: int | None = None,
) -> RedisServer:
    """Launch redis-server in the group (on `port`, else a free one) and return once it answers PING; ServerUnavailable if not."""
    binary = find_redis_server()
    if binary is None:
        raise ServerUnavailable("redis-server not found: apt-get install redis-server")
    port = port or free_loopback_port()
    process = group.launch(redis_server_argv(binary, port, extra_args), capture=False)
    wait_until_answering(process, port, timeout)
    return RedisServer(process, f"redis://{LOOPBACK}:{port}/0", port)


def wait_until_answering(process: psutil.Popen, port: int, timeout: float) -> None:
    """Poll the port until the server answers PING; raise ServerUnavailable if it exits or the timeout passes."""
    deadline = time.monotonic() + timeout
    while not answers_ping(port):
        status = process.poll()
        if status is not None:
            raise ServerUnavailable(f"redis-server on port {port} did not start: exited with status {status}")
        if time.monotonic() >= deadline:
            raise ServerUnavailable(f"redis-server on port {port} did not answer PING within {timeout:g}s")
        time.sleep(POLL_INTERVAL)


def answers_ping(port: int) -> bool:
    """True if a Redis server on the loopback port replies to an inline PING."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=PING_TIMEOUT) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(64).startswith(READY_REPLIES)
    except OSError:
        return False


@dataclass
class SentinelDeployment:
    """A primary, its replicas and the Sentinels that watch them, under one service name."""

    primary: RedisServer
    replicas: list[RedisServer]
    sentinels: list[RedisServer]
    service: str
    group: ProcessGroup  # the processes' group: a restarted node joins it

    @property
    def url(self) -> str:
        """The redis+sentinel:// URL of the deployment's database 0."""
        hosts = ",".join(f"{LOOPBACK}:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    @property
    def data_nodes(self) -> list[RedisServer]:
        """The primary and the replicas, as started (a failover swaps their roles: see current_primary)."""
        return [self.primary, *self.replicas]

    def current_primary(self) -> RedisServer | None:
        """The data node a Sentinel names as primary now (None if none of them answers)."""
        for sentinel in self.sentinels:
            reply = redis_cli(sentinel.port, "SENTINEL", "get-master-addr-by-name", self.service)
            lines = reply.stdout.split()
            if reply.returncode == 0 and len(lines) == 2 and lines[1].isdigit():
                return next((node for node in self.data_nodes if node.port == int(lines[1])), None)
        return None

    def kill_primary(self) -> RedisServer:
        """kill -9 the current primary (the Sentinels will promote a replica); the node killed."""
        primary = self.current_primary()
        if primary is None:
            raise ServerUnavailable(f"no Sentinel of {self.service!r} names a primary")
        return _kill(primary)

    def wait_for_new_primary(self, old: RedisServer, timeout: float = 20.0) -> RedisServer:
        """The primary the Sentinels promoted instead of old; ServerUnavailable if none is within the timeout."""
        promoted: list[RedisServer] = []

        def moved_on() -> bool:
            primary = self.current_primary()
            promoted[:] = [primary] if primary is not None and primary is not old and _role(primary.port) == "master" else []
            return bool(promoted)

        _wait_for(moved_on, timeout, f"the Sentinels of {self.service!r} to promote a replica")
        return promoted[0]

    def restart(self, node: RedisServer, timeout: float = 20.0) -> RedisServer:
        """Start a killed data node again on its port as a replica of the current primary; returns once it is in sync."""
        primary = self.current_primary()
        if primary is None or primary is node:
            raise ServerUnavailable(f"no primary other than port {node.port} to restart it as a replica of")
        again = start_redis_server(self.group, timeout, ["--replicaof", LOOPBACK, str(primary.port)], port=node.port)
        if node is self.primary:
            self.primary = again
        else:
            self.replicas[self.replicas.index(node)] = again
        _wait_for(lambda: "master_link_status:up" in redis_cli(again.port, "INFO", "replication").stdout, timeout,
                  f"the restarted node on port {node.port} to sync with the primary")
        _wait_for(lambda: _online_replicas(primary.port) == len(self.replicas), timeout,
                  "every replica to follow the new primary (Sentinel reconfigures the others after a failover)")
        return again


def start_sentinel_deployment(
    group: ProcessGroup, scratch: Path, service: str = "kvmgr", replicas: int = 2, sentinels: int = 3,
    down_after_ms: int = 1000, failover_timeout_ms: int = 4000, timeout: float = 20.0,
) -> SentinelDeployment:
    """A primary with `replicas` replicas and `sentinels` Sentinels (quorum: a majority), short failover timeouts;
    returns once every Sentinel knows every replica and the other Sentinels."""
    primary = start_redis_server(group, timeout)
    followers = [start_redis_server(group, timeout, ["--replicaof", LOOPBACK, str(primary.port)]) for _ in range(replicas)]
    quorum = sentinels // 2 + 1
    watchers = [_start_sentinel(group, scratch, primary.port, service, quorum, down_after_ms, failover_timeout_ms, timeout)
                for _ in range(sentinels)]
    deployment = SentinelDeployment(primary, followers, watchers, service, group)
    _wait_for(lambda: all("master_link_status:up" in redis_cli(node.port, "INFO", "replication").stdout for node in followers),
              timeout, "the replicas to sync with the primary")
    _wait_for(lambda: all(_sentinel_sees_all(port.port, service, replicas, sentinels) for port in watchers), timeout,
              f"the Sentinels of {service!r} to see {replicas} replicas and each other")
    return deployment


def _start_sentinel(
    group: ProcessGroup, scratch: Path, primary_port: int, service: str, quorum: int, down_after_ms: int, failover_timeout_ms: int,
    timeout: float,
) -> RedisServer:
    binary = find_redis_server()
    if binary is None:
        raise ServerUnavailable("redis-server not found: apt-get install redis-server")
    port = free_loopback_port()
    config = scratch / f"sentinel-{port}.conf"  # Sentinel rewrites its configuration file: one each, writable
    config.write_text(
        f"port {port}\nbind {LOOPBACK}\nprotected-mode yes\ndir {scratch}\nlogfile {os.devnull}\n"
        f"sentinel monitor {service} {LOOPBACK} {primary_port} {quorum}\n"
        f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
        f"sentinel failover-timeout {service} {failover_timeout_ms}\nsentinel parallel-syncs {service} 1\n",
    )
    process = group.launch([binary, str(config), "--sentinel"], capture=False)
    wait_until_answering(process, port, timeout)
    return RedisServer(process, f"redis://{LOOPBACK}:{port}", port)


def _sentinel_sees_all(port: int, service: str, replicas: int, sentinels: int) -> bool:
    """True once the Sentinel on port lists `replicas` replicas and the other `sentinels - 1` Sentinels."""
    replies = [redis_cli(port, "SENTINEL", command, service) for command in ("replicas", "sentinels")]
    if any(reply.returncode != 0 for reply in replies):
        return False
    seen_replicas, seen_sentinels = (reply.stdout.count(word) for reply, word in zip(replies, ("slave", "sentinel"), strict=True))
    return bool(seen_replicas >= replicas and seen_sentinels >= sentinels - 1)


CLUSTER_HIGHEST_PORT = 55535  # a cluster node also listens on its port + 10000 (the cluster bus)


@dataclass
class Cluster:
    """A Redis Cluster: its nodes (primaries and replicas alike), and the directory holding their nodes-PORT.conf."""

    nodes: list[RedisServer]
    scratch: Path
    group: ProcessGroup  # the processes' group: a restarted node joins it

    @property
    def url(self) -> str:
        """The redis+cluster:// URL naming every node."""
        return "redis+cluster://" + ",".join(f"{LOOPBACK}:{node.port}" for node in self.nodes)

    def primaries(self) -> list[RedisServer]:
        """The nodes that are primaries now (a failover promotes a replica)."""
        return [node for node in self.nodes if node.process.poll() is None and _role(node.port) == "master"]

    def kill_primary(self) -> RedisServer:
        """kill -9 one primary (the cluster will promote its replica); the node killed."""
        return _kill(self.primaries()[0])

    def wait_for_new_primary(self, old: RedisServer, timeout: float = 20.0) -> RedisServer:
        """The replica of old that the cluster promoted, once every live node reports cluster_state:ok again."""
        before = {node.port for node in self.primaries()} - {old.port}
        promoted: list[RedisServer] = []

        def moved_on() -> bool:
            promoted[:] = [node for node in self.primaries() if node.port not in before and node is not old]
            live = [node for node in self.nodes if node.process.poll() is None]
            return bool(promoted) and all("cluster_state:ok" in redis_cli(n.port, "CLUSTER", "INFO").stdout for n in live)

        _wait_for(moved_on, timeout, f"the cluster to promote a replica of port {old.port}")
        return promoted[0]

    def restart(self, node: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Start a killed node again on its port with its nodes.conf: it rejoins as a replica; returns once it is in sync."""
        again = start_redis_server(self.group, timeout, _cluster_node_args(self.scratch, node.port), port=node.port)
        self.nodes[self.nodes.index(node)] = again
        _wait_for(lambda: _role(again.port) == "slave" and "master_link_status:up" in redis_cli(again.port, "INFO", "replication").stdout,
                  timeout, f"the restarted cluster node on port {node.port} to sync as a replica")
        _wait_for(lambda: all("cluster_state:ok" in redis_cli(n.port, "CLUSTER", "INFO").stdout for n in self.nodes)
                  and all(_online_replicas(n.port) >= 1 for n in self.primaries()), timeout,
                  "every cluster node to report cluster_state:ok and every primary to have a replica in sync")
        return again


def start_cluster(group: ProcessGroup, scratch: Path, primaries: int = 3, replicas_each: int = 1, timeout: float = 30.0) -> Cluster:
    """`primaries` primaries with `replicas_each` replicas each, joined by `redis-cli --cluster create`; returns once
    every node reports cluster_state:ok."""
    nodes = []
    for _ in range(primaries * (1 + replicas_each)):
        port = free_cluster_port()
        nodes.append(start_redis_server(group, timeout, _cluster_node_args(scratch, port), port))
    created = redis_cli(nodes[0].port, "--cluster", "create", *(f"{LOOPBACK}:{node.port}" for node in nodes),
                        "--cluster-replicas", str(replicas_each), "--cluster-yes", timeout=timeout)
    if created.returncode != 0:
        raise ServerUnavailable(f"redis-cli --cluster create failed: {created.stdout.strip().splitlines()[-1:]}")
    cluster = Cluster(nodes, scratch, group)
    _wait_for(lambda: all("cluster_state:ok" in redis_cli(node.port, "CLUSTER", "INFO").stdout for node in nodes)
              and all(_online_replicas(node.port) >= replicas_each for node in cluster.primaries()), timeout,
              "every cluster node to report cluster_state:ok and every primary's replicas to be in sync")
    return cluster


def free_cluster_port() -> int:
    """A loopback port that was free a moment ago, and so was its cluster bus port (+10000)."""
    for _ in range(1000):
        port = free_loopback_port(highest=CLUSTER_HIGHEST_PORT)
        with socket.socket() as probe:
            try:
                probe.bind((LOOPBACK, port + 10000))
            except OSError:
                continue
        return port
    raise ServerUnavailable("no free loopback port whose cluster bus port is free too")


def _cluster_node_args(scratch: Path, port: int) -> list[str]:
    """A cluster node's own arguments: its nodes.conf in scratch, a node timeout of 1 s (failover within seconds)."""
    return ["--cluster-enabled", "yes", "--cluster-config-file", str(scratch / f"nodes-{port}.conf"), "--cluster-node-timeout", "1000"]


def _kill(node: RedisServer) -> RedisServer:
    """kill -9 a node and reap it."""
    node.process.kill()
    node.process.wait(timeout=5)
    return node


def _online_replicas(port: int) -> int:
    """How many replicas the server on port has that are connected and in sync (state=online)."""
    return int(redis_cli(port, "INFO", "replication").stdout.count("state=online"))


def _role(port: int) -> str:
    """'master', 'slave' (as Redis names them) or '' if the server on port does not answer."""
    reply = redis_cli(port, "ROLE", timeout=2.0)
    return reply.stdout.split("\n", 1)[0].strip() if reply.returncode == 0 else ""


def redis_cli(port: int, *args: str, timeout: float = 5.0) -> subprocess.CompletedProcess:
    """Run redis-cli against the loopback port (it ships with redis-server); its output as text."""
    binary = shutil.which("redis-cli")
    if binary is None:
        raise ServerUnavailable("redis-cli not found: apt-get install redis-tools")
    argv = [binary, "-h", LOOPBACK, "-p", str(port), *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:  # a stopped or hung server: as if it had failed
        return subprocess.CompletedProcess(argv, 1, "", f"no answer within {timeout:g}s")


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise ServerUnavailable(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)
