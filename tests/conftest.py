"""Fixtures: a real kvmgr server on a free loopback port, and a check that no process of ours outlives the session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

import kvmgr
from kvmgr.client.operations import Operations
from kvmgr.tools.processes import ProcessGroup, ServerProcess, child_environment, python_module

if TYPE_CHECKING:
    from kvmgr.tools.redis_server import Cluster, SentinelDeployment

ROOT = Path(__file__).resolve().parent.parent
SESSION_MARK = "KVMGR_TEST_SESSION"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Mark every process this session starts (children inherit the environment) so leftovers can be found."""
    os.environ[SESSION_MARK] = uuid.uuid4().hex


def processes_of_this_session() -> list[psutil.Process]:
    """Processes other than this one that carry this session's mark."""
    mark = os.environ[SESSION_MARK]
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            if process.environ().get(SESSION_MARK) == mark:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def running(process: psutil.Process) -> bool:
    """True if the process still runs (a zombie, or one gone meanwhile, does not)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


@pytest.fixture(scope="session", autouse=True)
def no_orphans() -> Iterator[None]:
    """Fail the session if any process we started is still running at its end."""
    yield
    leftovers = [p for p in processes_of_this_session() if running(p)]
    for process in leftovers:
        process.kill()
    assert not leftovers, f"processes left behind: {[' '.join(p.cmdline()) for p in leftovers]}"


@pytest.fixture
def group() -> Iterator[ProcessGroup]:
    """A process group reaped when the test ends."""
    with ProcessGroup() as processes:
        yield processes


@pytest.fixture
def server(group: ProcessGroup) -> ServerProcess:
    """A real kvmgr server on a free loopback port with a fresh authkey."""
    return group.start_server()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[kvmgr.Client]:
    """A client connected to the server fixture."""
    with kvmgr.connect(server.address_text, authkey=server.authkey.encode(), timeout=5.0) as connected:
        yield connected


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server for the session (the test is skipped, saying why, where none is installed)."""
    from kvmgr.tools.redis_server import find_redis_server, start_redis_server

    if find_redis_server() is None:
        pytest.skip("redis-server not found: apt-get install redis-server")
    with ProcessGroup() as processes:
        yield start_redis_server(processes).url


def _skip_without_redis() -> None:
    from kvmgr.tools.redis_server import find_redis_server

    if find_redis_server() is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server or redis-cli not found: apt-get install redis-server")


@pytest.fixture(scope="session")
def sentinel_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelDeployment]:
    """A primary, 2 replicas and 3 Sentinels (down-after 1 s) for the session; tests that kill a node restart it."""
    from kvmgr.tools.redis_server import start_sentinel_deployment

    _skip_without_redis()
    with ProcessGroup() as processes:
        yield start_sentinel_deployment(processes, tmp_path_factory.mktemp("sentinel"))


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 3-primary, 3-replica Redis Cluster (node timeout 1 s) for the session; tests that kill a node restart it."""
    from kvmgr.tools.redis_server import start_cluster

    _skip_without_redis()
    with ProcessGroup() as processes:
        yield start_cluster(processes, tmp_path_factory.mktemp("cluster"))


@pytest.fixture(params=["manager", "redis"])
def any_client(request: pytest.FixtureRequest) -> Iterator[Operations]:
    """A client of each backend: a fresh kvmgr server, and an emptied Redis database."""
    if request.param == "manager":
        yield request.getfixturevalue("client")
        return
    from kvmgr.client.redis_transport import connect_redis

    with connect_redis(request.getfixturevalue("redis_url"), timeout=5.0) as connected:
        connected.flush()
        yield connected


@pytest.fixture(params=["manager", "redis"])
def dedicated_backend(request: pytest.FixtureRequest, group: ProcessGroup) -> tuple[psutil.Popen, Callable[..., Operations]]:
    """A server of each backend for this test alone (free to suspend or kill), and a way to connect to it."""
    if request.param == "manager":
        server = group.start_server()
        return server.process, lambda **options: kvmgr.connect(server.address_text, authkey=server.authkey.encode(), **options)
    from kvmgr.client.redis_transport import connect_redis
    from kvmgr.tools.redis_server import find_redis_server, start_redis_server

    if find_redis_server() is None:
        pytest.skip("redis-server not found: apt-get install redis-server")
    redis = start_redis_server(group)
    return redis.process, lambda **options: connect_redis(redis.url, **options)


def run_actor(server: ServerProcess, *args: str, name: str = "alice", authkey: str | None = None) -> subprocess.CompletedProcess:
    """Run `python -m kvmgr.client --name NAME --address ADDR args` against the server; return the finished process."""
    argv = python_module("kvmgr.tools.actor", "--name", name, "--address", server.address_text, *args)
    env = child_environment(authkey or server.authkey)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)


def console_script(name: str) -> str:
    """The path of an installed console script (alice, bob, kvmgr) next to this interpreter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.skip(f"console script {name} is not installed next to {sys.executable}")
    return str(path)


@pytest.fixture
def thread_server() -> Iterator[kvmgr.server.manager.StoreServer]:
    """A real kvmgr server on a free loopback port with a fresh authkey, run by a daemon thread of this process.

    For protocol tests that need no subprocess: reach it at format_address(server.address) with bytes(server.authkey).
    It is closed (and its thread joined) when the test ends.
    """
    import threading

    from kvmgr.config import fresh_authkey
    from kvmgr.server.manager import StoreServer

    server = StoreServer(("127.0.0.1", 0), fresh_authkey().encode())
    thread = threading.Thread(target=server.serve_until_stopped, name="kvmgr-thread-server", daemon=True)
    thread.start()
    yield server
    server.close()
    thread.join(5)
    assert not thread.is_alive(), "the server thread did not stop within 5 s of close()"
