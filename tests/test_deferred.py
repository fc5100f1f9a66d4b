"""Deferred replies: calls that answer later (rendezvous, durable batch writes) occupy no thread of the server, never
hold up other clients, are cancelled when their connection closes, and are failed with a clear error on shutdown."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import time
from collections.abc import Iterator
from multiprocessing import connection
from pathlib import Path

import psutil
import pytest

import kvmgr
from kvmgr.client.manager import open_connection
from kvmgr.config import format_address
from kvmgr.errors import KvmgrError, ServerUnavailable
from kvmgr.protocol import wire
from kvmgr.server.durable import DATABASE_NAME
from kvmgr.server.manager import StoreServer
from kvmgr.tools.processes import ProcessGroup, ServerProcess
from tests.commit_failure import Call, until

WAITERS = 200
TIMEOUT = 10.0


def opened_store(address: tuple[str, int] | str, authkey: bytes) -> tuple[connection.Connection, str]:
    """An authenticated connection with the store opened on it, and the store's ident."""
    conn = open_connection(address, authkey, TIMEOUT)
    conn.send_bytes(wire.dump((None, wire.OPEN_STORE, (), {})))
    kind, ident = wire.load_reply(conn.recv_bytes())
    assert kind == wire.RETURN
    return conn, ident


@contextlib.contextmanager
def waiting_connections(server: ServerProcess, count: int, name: str, parties: int) -> Iterator[list[connection.Connection]]:
    """`count` connections, each with a rendezvous under name sent and its reply not read yet."""
    conns: list[connection.Connection] = []
    try:
        for _ in range(count):
            conn, ident = opened_store(server.address, server.authkey.encode())
            conns.append(conn)
            conn.send_bytes(wire.dump((ident, "rendezvous", (name, parties, 20.0), {})))
        yield conns
    finally:
        for conn in conns:
            conn.close()


def is_waiting(client: kvmgr.Client, name: str, parties: int) -> bool:
    """True once the server holds a rendezvous `name` opened for `parties` (>= 2): a probe for one party says so at once,
    and while none is open it passes alone, leaving nothing behind."""
    try:
        client.rendezvous(name, 1, timeout=TIMEOUT)
    except KvmgrError as exc:
        assert f"was opened for {parties} parties, not 1" in str(exc), exc
        return True
    return False


def test_deferred_calls_occupy_no_threads_while_200_clients_wait_in_rendezvous(server: ServerProcess, client: kvmgr.Client) -> None:
    serving = psutil.Process(server.process.pid)
    client.store("k", "v")
    threads_before = serving.num_threads()
    with waiting_connections(server, WAITERS, "crowd", WAITERS + 1) as waiters:
        until(lambda: is_waiting(client, "crowd", WAITERS + 1), "the 200 parties arriving")
        assert serving.num_threads() == threads_before, "the server started threads for calls that wait"
        started = time.monotonic()
        assert client.get("k") == "v"  # others are answered meanwhile
        assert time.monotonic() - started < 1.0
        last = client.rendezvous("crowd", WAITERS + 1, timeout=TIMEOUT)  # one more party releases them all
        replies = [wire.load_reply(conn.recv_bytes()) for conn in waiters]
    assert sorted([(wire.RETURN, last), *replies]) == [(wire.RETURN, index) for index in range(WAITERS + 1)]


@pytest.fixture
def write_lock() -> Iterator[list[sqlite3.Connection]]:
    """Databases whose write lock a test takes (BEGIN IMMEDIATE); released at the end."""
    held: list[sqlite3.Connection] = []
    yield held
    for db in held:
        db.close()


def test_a_get_is_answered_while_a_durable_commit_is_held_back(
    group: ProcessGroup, tmp_path: Path, write_lock: list[sqlite3.Connection],
) -> None:
    """A real hold: another connection owns SQLite's write lock, so the group commit waits (within SQLite's 5 s busy timeout)."""
    server = group.start_server(extra_args=["--data-dir", str(tmp_path), "--fsync", "batch"])
    with kvmgr.connect(server.address_text, authkey=server.authkey.encode(), timeout=TIMEOUT) as writer, \
            kvmgr.connect(server.address_text, authkey=server.authkey.encode(), timeout=TIMEOUT) as reader:
        writer.store("k", "committed")
        db = sqlite3.connect(tmp_path / DATABASE_NAME, isolation_level=None)
        write_lock.append(db)
        db.execute("BEGIN IMMEDIATE")
        held_since = time.monotonic()
        write = Call(writer.store, "k", "held")
        until(lambda: reader.get("k") == "held", "the write being applied (batch mode) while its commit waits")
        started = time.monotonic()
        assert reader.exists("k") and reader.size() == 1
        assert time.monotonic() - started < 0.5, "a read waited behind the held commit"
        assert write.thread.is_alive() and write.ended == 0.0, "the write was acknowledged before its commit"
        assert time.monotonic() - held_since < 4.0, "the test held the commit too long for SQLite's busy timeout"
        db.execute("ROLLBACK")
        write.join()
        assert write.error is None and write.result == "updated"
    with sqlite3.connect(tmp_path / DATABASE_NAME) as check:
        assert check.execute("SELECT value FROM kv WHERE key = 'k'").fetchone() == ("held",)


def test_a_rendezvous_party_whose_connection_closes_is_removed(thread_server: StoreServer) -> None:
    address, authkey = thread_server.address, bytes(thread_server.authkey)
    assert isinstance(address, tuple)
    conn, ident = opened_store(address, authkey)
    conn.send_bytes(wire.dump((ident, "rendezvous", ("pair", 2, 20.0), {})))
    until(lambda: thread_server.store.open_rounds() == 1, "the first party waiting")
    conn.close()
    until(lambda: thread_server.store.open_rounds() == 0, "the party that left being removed, and its round with it")
    with kvmgr.connect(format_address(address), authkey=authkey, timeout=TIMEOUT) as client:
        with pytest.raises(KvmgrError, match=r"not all 2 parties arrived within 0\.2s"):
            client.rendezvous("pair", 2, timeout=0.2)  # the party that left is not counted
        assert thread_server.store.open_rounds() == 0  # a round that timed out empty is gone too


def test_shutdown_fails_a_pending_rendezvous_with_a_clear_error_and_exits_zero_within_2s(
    server: ServerProcess, client: kvmgr.Client,
) -> None:
    with kvmgr.connect(server.address_text, authkey=server.authkey.encode(), timeout=TIMEOUT) as waiter:
        waiting = Call(waiter.rendezvous, "never", 2, 20.0)
        until(lambda: is_waiting(client, "never", 2), "the rendezvous waiting")
        stopped = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=2) == 0
        waiting.join()
    assert time.monotonic() - stopped < 2.0
    assert isinstance(waiting.error, ServerUnavailable)
    assert str(waiting.error) == "the server is shutting down: the call was not completed"


def test_durable_batch_writes_are_answered_as_soon_as_committed_never_at_the_loops_idle_timeout(tmp_path: Path) -> None:
    """Four writers, each waiting for its commit: every reply comes within a fraction of the loop's 1 s idle timeout."""
    from kvmgr.config import fresh_authkey
    from kvmgr.server.durable import SQLiteJournal

    server = StoreServer(("127.0.0.1", 0), fresh_authkey().encode(), journal=SQLiteJournal(tmp_path, "batch"))
    thread = Call(server.serve_until_stopped)
    slowest: list[float] = []

    def write(name: str) -> None:
        with kvmgr.connect(format_address(server.address), authkey=bytes(server.authkey), timeout=TIMEOUT) as client:
            for number in range(150):
                started = time.monotonic()
                client.store(f"{name}-{number}", "v")
                slowest.append(time.monotonic() - started)

    try:
        writers = [Call(write, f"w{n}") for n in range(4)]
        for writer in writers:
            assert writer.join().error is None, writer.error
    finally:
        server.close()
        thread.join()
    assert len(slowest) == 600 and max(slowest) < 0.5, f"a write waited {max(slowest):.2f}s for its reply"
