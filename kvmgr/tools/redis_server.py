"""A throwaway redis-server on a free loopback port, for tests and local trials of redis:// targets."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

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


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (redis-server needs a concrete port)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def redis_server_argv(binary: str, port: int, extra_args: Sequence[str] = ()) -> list[str]:
    """argv for a loopback-only, memory-only redis-server that writes no files and no log."""
    return [
        binary, "--port", str(port), "--bind", LOOPBACK, "--protected-mode", "yes",
        "--save", "", "--appendonly", "no", "--dir", tempfile.gettempdir(), "--loglevel", "warning", "--logfile", os.devnull,
        *extra_args,
    ]


def start_redis_server(group: ProcessGroup, timeout: float = 10.0, extra_args: Sequence[str] = ()) -> RedisServer:
    """Launch redis-server in the group and return once it answers PING; raise ServerUnavailable if it does not."""
    binary = find_redis_server()
    if binary is None:
        raise ServerUnavailable("redis-server not found: apt-get install redis-server")
    port = free_loopback_port()
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
