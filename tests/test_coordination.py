"""Locks, waiting for a change and work queues, with real processes on both backends: mutual exclusion, a holder
killed -9, fencing tokens, fair order, queues that lose nothing, wait woken by the change, shutdown, and no polling."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import psutil
import pytest

import kvmgr
from kvmgr.client.operations import Operations
from kvmgr.errors import KvmgrError, LockLost, LockTimeout, QueueEmpty, ServerUnavailable, WaitTimeout
from kvmgr.tools.processes import ProcessGroup

FORK = multiprocessing.get_context("fork")  # children inherit nothing but the target and its address


@dataclass(frozen=True)
class Backend:
    """A server for one test: where it is, how to connect to it, and its process."""

    kind: str
    target: str
    authkey: bytes | None
    process: psutil.Popen

    def connect(self, timeout: float = 5.0) -> Operations:
        return kvmgr.connect(self.target, authkey=self.authkey, timeout=timeout)


@pytest.fixture(params=["manager", "redis"])
def backend(request: pytest.FixtureRequest, group: ProcessGroup) -> Backend:
    """A kvmgr server, or a redis-server, of this test's own."""
    if request.param == "manager":
        server = group.start_server()
        return Backend("manager", server.address_text, server.authkey.encode(), server.process)
    from kvmgr.tools.redis_server import find_redis_server, start_redis_server

    if find_redis_server() is None:
        pytest.skip("redis-server not found: apt-get install redis-server")
    redis = start_redis_server(group)
    return Backend("redis", redis.url, None, redis.process)


@pytest.fixture
def client(backend: Backend) -> Iterator[Operations]:
    with backend.connect() as connected:
        yield connected


def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def run_children(target: Callable[..., None], argument_lists: list[tuple], timeout: float = 60.0) -> None:
    """Run target(*arguments) in one forked process per argument list; all must exit 0 within timeout."""
    children = [FORK.Process(target=target, args=arguments) for arguments in argument_lists]
    for child in children:
        child.start()
    try:
        for child in children:
            child.join(timeout)
            assert child.exitcode == 0, f"a child process ended with {child.exitcode}"
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join(5)


# --- locks ---


def increment_under_the_lock(backend: Backend, times: int) -> None:
    with backend.connect() as client:
        lock = client.lock("counter-lock", lease=30)
        for _ in range(times):
            with lock:
                client.store("counter", client.get("counter") + 1)  # a read, then a write: safe only under the lock


def test_six_processes_incrementing_under_the_lock_lose_no_update(backend: Backend, client: Operations) -> None:
    client.store("counter", 0)
    run_children(increment_under_the_lock, [(backend, 200)] * 6, timeout=120)
    assert client.get("counter") == 1200


def hold_the_lock_until_killed(backend: Backend, lease: float, held: Any) -> None:
    with backend.connect() as client:
        client.lock("doomed", lease=lease).acquire()
        held.set()
        time.sleep(600)  # killed long before


def test_a_holder_killed_with_sigkill_frees_the_lock(backend: Backend, client: Operations) -> None:
    lease = 30.0 if backend.kind == "manager" else 1.5
    held = FORK.Event()
    holder = FORK.Process(target=hold_the_lock_until_killed, args=(backend, lease, held))
    holder.start()
    try:
        assert held.wait(20)
        lock = client.lock("doomed", lease=10)
        with pytest.raises(LockTimeout):
            lock.acquire(timeout=0.2)  # really held
        killed_at = time.monotonic()
        os.kill(holder.pid, signal.SIGKILL)
        token = lock.acquire(timeout=lease + 10)
        waited = time.monotonic() - killed_at
    finally:
        holder.kill()
        holder.join(5)
    assert token > 0
    if backend.kind == "manager":
        assert waited < 5, f"granted {waited:.1f}s after the kill: the lease ({lease}s) ended, the closed connection did not free it"
    else:  # Redis cannot see the connection close: the lock lasts until its lease ends
        assert waited >= lease - 1.2, f"granted {waited:.2f}s after the kill, before the {lease}s lease could end"
    lock.release()


def test_fencing_tokens_grow_with_every_grant_and_a_lost_lock_frees_nothing(client: Operations) -> None:
    tokens = []
    for _ in range(5):
        with client.lock("fenced") as lock:
            tokens.append(lock.token)
    assert tokens == sorted(tokens) and len(set(tokens)) == 5
    stale = client.lock("fenced", lease=0.2)
    old = stale.acquire()
    until(lambda: not client.lock_locked("fenced"), "the lease to end")
    winner = client.lock("fenced", lease=30)
    assert winner.acquire(timeout=5) > old
    with pytest.raises(LockLost):
        stale.release()  # its lease ended and another holds the lock now
    assert client.lock_locked("fenced")  # ... whose lock was not freed
    winner.extend(30)
    winner.release()
    assert not client.lock_locked("fenced")


def wait_in_line(backend: Backend, index: int, queued: Any, granted: Any) -> None:
    with backend.connect() as client:
        lock = client.lock("fair", lease=30)
        queued.put(index)
        granted.put((lock.acquire(timeout=60), index))  # the token gives the grant's place: the queue's feeder threads may not
        lock.release()


def test_waiters_are_granted_in_arrival_order(backend: Backend, client: Operations) -> None:
    if backend.kind == "redis":
        pytest.skip("fair order is a property of kvmgr's server; on Redis waiters race (README)")
    first = client.lock("fair", lease=30)
    first.acquire()
    queued, granted = FORK.Queue(), FORK.Queue()
    children = []
    try:
        for index in range(5):
            child = FORK.Process(target=wait_in_line, args=(backend, index, queued, granted))
            child.start()
            children.append(child)
            assert queued.get(timeout=20) == index
            until(partial(waiting, client, index + 1), f"waiter {index} to be in line")  # before the next child starts
        first.release()
        assert [index for _, index in sorted(granted.get(timeout=20) for _ in range(5))] == [0, 1, 2, 3, 4]
    finally:
        for child in children:
            child.join(20)
            if child.is_alive():
                child.kill()


def test_a_client_blocked_in_acquire_costs_the_server_next_to_nothing(backend: Backend, client: Operations) -> None:
    holder = client.lock("idle", lease=60)
    holder.acquire()
    waiter = client.lock("idle", lease=60)
    server = psutil.Process(backend.process.pid)
    commands = redis_commands(backend) if backend.kind == "redis" else 0
    before = sum(server.cpu_times()[:2])
    with pytest.raises(LockTimeout):
        waiter.acquire(timeout=2.0)
    spent = sum(server.cpu_times()[:2]) - before
    assert spent < 0.2, f"the server spent {spent:.3f}s of CPU while one client waited 2 s"
    if backend.kind == "redis":
        assert redis_commands(backend) - commands < 50, "the waiter polled Redis"
    holder.release()


def redis_commands(backend: Backend) -> int:
    import redis

    with redis.Redis.from_url(backend.target) as db:
        return int(db.info("stats")["total_commands_processed"])


# --- wait ---


def test_wait_wakes_on_the_change_not_on_its_timeout(client: Operations) -> None:
    value, version = client.get_versioned("config")
    assert (value, version) == (None, 0)
    with client.session() as other:
        started = time.monotonic()
        store_later = FORK.Process(target=store_after, args=(other, "config", {"workers": 4}, 0.3))
        store_later.start()
        try:
            assert client.wait("config", version, timeout=10) == ({"workers": 4}, client.get_versioned("config")[1])
        finally:
            store_later.join(10)
    assert time.monotonic() - started < 5
    changed = client.get_versioned("config")[1]
    assert changed > version
    assert client.wait("config", version, timeout=1)[1] == changed  # already newer: at once
    with pytest.raises(WaitTimeout):
        client.wait("config", changed, timeout=0.2)
    client.incr("counter")
    client.delete("config")
    assert client.wait("config", changed, timeout=1) == (None, client.get_versioned("config")[1])


def store_after(client: Operations, key: str, value: Any, delay: float) -> None:
    time.sleep(delay)
    client.close()  # the parent's connections are the parent's: open our own
    client.store(key, value)


def test_wait_wakes_when_the_key_expires(client: Operations) -> None:
    client.store("lease", "mine", ttl=0.3)
    _, version = client.get_versioned("lease")
    started = time.monotonic()
    value, after = client.wait("lease", version, timeout=10)
    assert value is None and after > version and time.monotonic() - started < 5


# --- queues ---


def produce(backend: Backend, producer: int, count: int) -> None:
    with backend.connect() as client:
        queue = client.queue("work")
        for item in range(count):
            queue.put(f"{producer}:{item}")


def consume(backend: Backend, results: Any) -> None:
    with backend.connect() as client:
        queue, taken = client.queue("work"), []
        while True:
            try:
                taken.append(queue.get(timeout=1.5))
            except QueueEmpty:
                break
        results.put(taken)


def test_four_producers_and_four_consumers_move_2000_items_each_exactly_once(backend: Backend, client: Operations) -> None:
    results = FORK.Queue()
    consumers = [FORK.Process(target=consume, args=(backend, results)) for _ in range(4)]
    for consumer in consumers:
        consumer.start()
    run_children(produce, [(backend, producer, 500) for producer in range(4)], timeout=120)
    taken = [item for _ in consumers for item in results.get(timeout=60)]
    for consumer in consumers:
        consumer.join(10)
    assert len(taken) == 2000 and set(taken) == {f"{producer}:{item}" for producer in range(4) for item in range(500)}
    assert client.queue("work").qsize() == 0


def block_in_get(backend: Backend, waiting: Any) -> None:
    with backend.connect() as client:
        waiting.set()
        client.queue("jobs").get(timeout=60)


def test_a_consumer_killed_while_blocked_in_get_loses_no_item(backend: Backend, client: Operations) -> None:
    waiting = FORK.Event()
    consumer = FORK.Process(target=block_in_get, args=(backend, waiting))
    consumer.start()
    assert waiting.wait(20)
    time.sleep(0.3)  # its get is waiting on the server
    os.kill(consumer.pid, signal.SIGKILL)
    consumer.join(10)
    time.sleep(0.2)  # the server sees the connection close
    queue = client.queue("jobs")
    queue.put("precious")
    assert queue.get(timeout=5) == "precious"


# --- shutdown ---


def test_waiters_get_a_clear_error_when_the_server_quits(backend: Backend, client: Operations) -> None:
    if backend.kind == "redis":
        pytest.skip("quit is kvmgr's own server only")
    holder = client.lock("held", lease=60)
    holder.acquire()
    errors = FORK.Queue()
    waiters = [FORK.Process(target=wait_for_shutdown, args=(backend, call, errors)) for call in ("lock", "wait", "queue")]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.5)  # every waiter is blocked on the server
    client.quit()
    assert backend.process.wait(timeout=5) == 0
    messages = sorted(errors.get(timeout=10) for _ in waiters)
    for waiter in waiters:
        waiter.join(10)
    assert all("shutting down" in message for message in messages), messages


def wait_for_shutdown(backend: Backend, call: str, errors: Any) -> None:
    with backend.connect() as client:
        try:
            if call == "lock":
                client.lock("held").acquire(timeout=30)
            elif call == "wait":
                client.wait("never", client.get_versioned("never")[1], timeout=30)
            else:
                client.queue("empty").get(timeout=30)
        except (ServerUnavailable, KvmgrError) as exc:
            errors.put(str(exc))
        else:
            errors.put("no error")


def test_a_blocking_call_ends_at_its_own_timeout_not_at_the_servers_next_wake(client: Operations) -> None:
    """The loop runs its timers before it releases settled replies: a timed-out call is answered in that same turn."""
    holder = client.lock("busy", lease=60)
    holder.acquire()  # held throughout, so that the lock call waits
    for call in (lambda: client.queue("none").get(timeout=0.3), lambda: client.wait("k", client.get_versioned("k")[1], timeout=0.3),
                 lambda: client.lock("busy").acquire(timeout=0.3)):
        started = time.monotonic()
        with pytest.raises((QueueEmpty, WaitTimeout, LockTimeout)):
            call()
        assert time.monotonic() - started < 0.9, "answered a turn of the loop (up to 1 s) after its timeout"
    holder.release()


def waiting(client: Operations, count: int) -> bool:
    """True once `count` callers wait for a lock on kvmgr's server (its info)."""
    return bool(client.info()["lock_waiters"] == count)
