"""Throwaway servers for the examples: `kvmgr serve` on a free port, or a memory-only redis-server.

Each is a context manager that yields the address to pass to `kvmgr.connect` and stops the server when the
`with` block ends, however it ends: normally, with an exception, by Ctrl-C, or by SIGTERM (`kill PID`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import kvmgr


@contextmanager
def kvmgr_server() -> Iterator[str]:
    """Run `kvmgr serve` on a free loopback port with a fresh authkey; yield its address, e.g. '127.0.0.1:41234'."""
    handle_stop_signals()
    # The authkey goes in the environment, never on a command line: the server reads $KVMGR_AUTHKEY, and so does
    # kvmgr.connect() in this process and in every process it starts (children inherit the environment).
    os.environ["KVMGR_AUTHKEY"] = secrets.token_hex(32)
    server = subprocess.Popen(
        [sys.executable, "-m", "kvmgr", "serve", "--address", "127.0.0.1:0"],  # port 0: any free port
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        ready = server.stdout.readline()  # the one line it prints: "kvmgr listening on 127.0.0.1:41234"
        if not ready.startswith("kvmgr listening on "):
            raise SystemExit(f"kvmgr serve did not start (exit status {server.wait()})")
        yield ready.split()[-1]
    finally:
        stop(server)


@contextmanager
def redis_server(url: str | None = None) -> Iterator[str]:
    """Yield url if one is given; else run a memory-only redis-server on a free loopback port and yield its URL."""
    if url:
        yield url
        return
    handle_stop_signals()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: apt-get install redis-server, or pass a redis:// URL")
    with socket.socket() as probe:  # ask the kernel for a free port (redis-server cannot report one it picked)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        wait_until_answering(url, server)
        yield url
    finally:
        stop(server)


def handle_stop_signals() -> None:
    """Make SIGTERM raise KeyboardInterrupt here, as Ctrl-C does, so that `finally` blocks stop the servers.

    Processes forked from this one (Pool workers, multiprocessing.Process children) ignore Ctrl-C and die on
    SIGTERM, as a Manager's process does: this process stops them, and a Pool whose workers die of Ctrl-C on
    their own can hang in Pool.terminate() (a worker killed while holding the Pool's queue lock).
    """
    signal.signal(signal.SIGTERM, _interrupt)
    os.register_at_fork(after_in_child=_child_signals)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _child_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def wait_until_answering(url: str, server: subprocess.Popen, timeout: float = 10.0) -> None:
    """Return once the Redis server at url answers; SystemExit if it exits or stays silent for timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with kvmgr.connect(url, timeout=1.0) as client:
                client.exists("kvmgr-examples:ping")  # any call: it fails until Redis answers
                return
        except kvmgr.ServerUnavailable:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"redis-server did not start on {url}") from None
            time.sleep(0.05)


def stop(server: subprocess.Popen) -> None:
    """Ask the server to stop (SIGTERM: a graceful shutdown), wait for it, and kill it if it takes over 10 s."""
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
