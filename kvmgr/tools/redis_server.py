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

    @property
    def url(self) -> str:
        """The redis+sentinel:// URL of the deployment's database 0."""
        hosts = ",".join(f"{LOOPBACK}:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"


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
    deployment = SentinelDeployment(primary, followers, watchers, service)
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
    """A Redis Cluster: its nodes (primaries and replicas alike)."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        """The redis+cluster:// URL naming every node."""
        return "redis+cluster://" + ",".join(f"{LOOPBACK}:{node.port}" for node in self.nodes)


def start_cluster(group: ProcessGroup, scratch: Path, primaries: int = 3, replicas_each: int = 1, timeout: float = 30.0) -> Cluster:
    """`primaries` primaries with `replicas_each` replicas each, joined by `redis-cli --cluster create`; returns once
    every node reports cluster_state:ok."""
    nodes = []
    for _ in range(primaries * (1 + replicas_each)):
        port = free_loopback_port(highest=CLUSTER_HIGHEST_PORT)
        nodes.append(start_redis_server(group, timeout, [
            "--cluster-enabled", "yes", "--cluster-config-file", str(scratch / f"nodes-{port}.conf"), "--cluster-node-timeout", "1000",
        ], port))
    created = redis_cli(nodes[0].port, "--cluster", "create", *(f"{LOOPBACK}:{node.port}" for node in nodes),
                        "--cluster-replicas", str(replicas_each), "--cluster-yes", timeout=timeout)
    if created.returncode != 0:
        raise ServerUnavailable(f"redis-cli --cluster create failed: {created.stdout.strip().splitlines()[-1:]}")
    _wait_for(lambda: all("cluster_state:ok" in redis_cli(node.port, "CLUSTER", "INFO").stdout for node in nodes), timeout,
              "every cluster node to report cluster_state:ok")
    return Cluster(nodes)


def redis_cli(port: int, *args: str, timeout: float = 5.0) -> subprocess.CompletedProcess:
    """Run redis-cli against the loopback port (it ships with redis-server); its output as text."""
    binary = shutil.which("redis-cli")
    if binary is None:
        raise ServerUnavailable("redis-cli not found: apt-get install redis-tools")
    return subprocess.run([binary, "-h", LOOPBACK, "-p", str(port), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise ServerUnavailable(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)
