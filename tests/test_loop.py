"""The event loop in this process: write buffers and stalled readers, the pending-handshake cap, and the
BaseManager face of the server (StoreManager(...).get_server().serve_forever())."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from multiprocessing.managers import BaseManager
from typing import Any

import pytest

import kvmgr
from kvmgr.client import DEFAULT_RETRY, NO_RETRY, RetryPolicy
from kvmgr.client.manager import open_connection
from kvmgr.config import Limits, format_address, fresh_authkey
from kvmgr.errors import KeyNotFound, OutcomeUnknown, ServerUnavailable
from kvmgr.protocol import wire
from kvmgr.server.deferred import Deferred
from kvmgr.server.journal import Before, Changes, Commit, MemoryJournal
from kvmgr.server.manager import StoreManager, StoreServer
from tests.commit_failure import until

TIMEOUT = 5.0
MiB = 1024 * 1024


def running(server: StoreServer, target: Any = None) -> threading.Thread:
    """Run server (or target) in a daemon thread."""
    thread = threading.Thread(target=target or server.serve_until_stopped, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def small_buffers() -> Iterator[StoreServer]:
    """A server in a thread whose connections may have 1 MiB of replies waiting, and stall for 0.5 s at most."""
    server = StoreServer(("127.0.0.1", 0), fresh_authkey().encode(), Limits(write_buffer_bytes=MiB, stalled_reader_timeout=0.5))
    thread = running(server)
    yield server
    server.close()
    thread.join(TIMEOUT)
    assert not thread.is_alive()


def address_of(server: StoreServer) -> tuple[str, int]:
    assert isinstance(server.address, tuple)
    return server.address


def test_a_client_that_never_reads_is_disconnected_while_another_keeps_getting_answers(
    small_buffers: StoreServer, caplog: pytest.LogCaptureFixture,
) -> None:
    server = small_buffers
    with kvmgr.connect(format_address(address_of(server)), authkey=bytes(server.authkey), timeout=TIMEOUT) as other:
        other.store("big", b"x" * MiB)
        slow = open_connection(address_of(server), bytes(server.authkey), TIMEOUT)
        slow.send_bytes(wire.dump((None, wire.OPEN_STORE, (), {})))
        _, ident = wire.load_reply(slow.recv_bytes())
        with caplog.at_level(logging.WARNING, logger="kvmgr.server.manager"), socket.socket(fileno=slow.fileno()) as sock:
            try:
                sock.sendall(b"".join(wire.frame(wire.dump((ident, "get", ("big",), {}))) for _ in range(100)))  # 100 MiB of replies
                for _ in range(20):  # answered at once while the slow client's buffer is full
                    started = time.monotonic()
                    assert other.get("big") == b"x" * MiB and other.size() == 1
                    assert time.monotonic() - started < 1.0
                until(lambda: server.open == 1, "the client that reads nothing being disconnected")
            finally:
                sock.detach()
        disconnected = [r.getMessage() for r in caplog.records if "disconnected peer" in r.getMessage()]
        assert len(disconnected) == 1 and "it read none of its replies for 0.5s" in disconnected[0], disconnected
        sock = socket.socket(fileno=slow.fileno())
        sock.settimeout(TIMEOUT)  # a read that times out fails the test: the connection must end
        try:
            with contextlib.suppress(ConnectionResetError):  # or EOF: what the kernel still held is readable first
                while sock.recv(MiB):
                    pass
        finally:
            sock.detach()
            slow.close()
        assert other.get("big") == b"x" * MiB


def test_a_pipelining_client_that_reads_gets_every_reply_however_large_they_add_up(small_buffers: StoreServer) -> None:
    server = small_buffers
    with kvmgr.connect(format_address(address_of(server)), authkey=bytes(server.authkey), timeout=TIMEOUT) as client:
        client.store("big", b"y" * MiB)
        assert client.pipeline([("get", "big")] * 40) == [b"y" * MiB] * 40  # 40 MiB of replies through a 1 MiB buffer


def test_pending_handshakes_are_capped_and_expire() -> None:
    limits = Limits(max_pending_handshakes=2, handshake_timeout=0.5)
    server = StoreServer(("127.0.0.1", 0), fresh_authkey().encode(), limits)
    thread = running(server)
    try:
        silent = [socket.create_connection(address_of(server), timeout=TIMEOUT) for _ in range(2)]
        for peer in silent:
            assert peer.recv(100).startswith(b"\x00\x00\x00")  # the challenge: the handshake is pending
        with socket.create_connection(address_of(server), timeout=TIMEOUT) as third:
            assert third.recv(100) == b""  # refused: two handshakes are pending already
        for peer in silent:
            assert peer.recv(100) == b""  # cut off at the handshake deadline
            peer.close()
        with kvmgr.connect(format_address(address_of(server)), authkey=bytes(server.authkey), timeout=TIMEOUT) as client:
            assert client.store("k", "v") == "saved"
    finally:
        server.close()
        thread.join(TIMEOUT)


def test_store_manager_get_server_serve_forever_serves_a_stdlib_proxy() -> None:
    authkey = fresh_authkey().encode()
    server = StoreManager(address=("127.0.0.1", 0), authkey=authkey).get_server()
    assert isinstance(server, StoreServer)
    thread = running(server, server.serve_forever)
    try:
        class Plain(BaseManager):
            pass

        Plain.register("get_store")
        manager: Any = Plain(address=server.address, authkey=authkey)
        manager.connect()
        store = manager.get_store()
        assert store.store("k", "v") == "saved" and store.get("k") == "v"
        with pytest.raises(KeyNotFound):
            store.get("missing")
        assert server.store.get("k") == "v"
    finally:
        server.close()
        thread.join(TIMEOUT)
    assert not thread.is_alive()


def test_a_stopped_server_refuses_new_connections_and_says_so(thread_server: StoreServer) -> None:
    with kvmgr.connect(format_address(address_of(thread_server)), authkey=bytes(thread_server.authkey), timeout=1.0) as client:
        client.store("k", "v")
        thread_server.close()
        with pytest.raises(ServerUnavailable):
            client.get("k")


def test_the_loop_serves_on_poll_where_there_is_no_epoll(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS and the BSDs have no epoll: the same loop runs on select.poll (calls, pipelines, a deferred rendezvous)."""
    from kvmgr.server import loop

    monkeypatch.delattr(loop.select, "epoll")
    server = StoreServer(("127.0.0.1", 0), fresh_authkey().encode())
    assert isinstance(server.selector, loop.Poll)
    thread = running(server)
    try:
        address = format_address(address_of(server))
        with kvmgr.connect(address, authkey=bytes(server.authkey), timeout=TIMEOUT) as client:
            assert client.store("k", "v") == "saved"
            assert client.pipeline([("get", "k"), ("store", "k", "w"), ("get", "k")]) == ["v", "updated", "w"]
            other = threading.Thread(target=client.rendezvous, args=("r", 2, TIMEOUT))
            other.start()
            assert client.rendezvous("r", 2, TIMEOUT) in (0, 1)
            other.join(TIMEOUT)
            with pytest.raises(KeyNotFound):
                client.get("absent")
    finally:
        server.close()
        thread.join(TIMEOUT)
    assert not thread.is_alive()


def test_a_request_arriving_alone_behind_a_deferred_reply_is_answered_in_order(thread_server: StoreServer) -> None:
    """A lone request read while an earlier call of its connection still waits is queued behind it, never dropped."""
    authkey = bytes(thread_server.authkey)
    waiting = open_connection(address_of(thread_server), authkey, TIMEOUT)
    try:
        waiting.send_bytes(wire.dump((None, wire.OPEN_STORE, (), {})))
        _, ident = wire.load_reply(waiting.recv_bytes())
        thread_server.store.store("k", "v")
        waiting.send_bytes(wire.dump((ident, "rendezvous", ("r", 2, TIMEOUT), {})))
        until(lambda: thread_server.store.open_rounds() == 1, "the first party waiting")
        waiting.send_bytes(wire.dump((ident, "get", ("k",), {})))  # read by the loop on its own, behind the rendezvous
        with kvmgr.connect(format_address(address_of(thread_server)), authkey=authkey, timeout=TIMEOUT) as other:
            assert other.rendezvous("r", 2, TIMEOUT) == 1
        assert wire.load_reply(waiting.recv_bytes()) == (wire.RETURN, 0)
        assert waiting.poll(TIMEOUT), "the get behind the rendezvous was never answered"
        assert wire.load_reply(waiting.recv_bytes()) == (wire.RETURN, "v")
    finally:
        waiting.close()


def test_the_timers_of_settled_calls_do_not_pile_up_until_their_deadlines(thread_server: StoreServer) -> None:
    """Every deferred call arms a timer; once settled it is cancelled, and the heap is swept long before its deadline."""
    address = format_address(address_of(thread_server))
    with kvmgr.connect(address, authkey=bytes(thread_server.authkey), timeout=TIMEOUT) as client:
        for _ in range(40):  # 40 x 64 rounds of two parties on one connection: 2,560 deferred calls, each settled at once
            assert client.pipeline([("rendezvous", "pair", 2, 30.0)] * 128) == [0, 1] * 64
    assert len(thread_server._timers) <= 1100, f"{len(thread_server._timers)} timers kept for 2,560 settled calls"


class StuckJournal(MemoryJournal):
    """A journal whose commits never finish (a hung disk): every write waits on a commit that is never decided."""

    def append(self, changes: Changes, before: Before, revision: int) -> Commit:
        return Deferred()


@pytest.mark.parametrize("retry", [NO_RETRY, DEFAULT_RETRY], ids=["no retry", "default retry"])
def test_a_write_whose_commit_is_undecided_at_shutdown_is_an_unknown_outcome_not_a_refusal(retry: RetryPolicy) -> None:
    """The write was applied and may yet be durable: the client hears OutcomeUnknown, never 'not made' (ServerUnavailable),
    also when the retry policy repeats the store and the repeat finds the server gone."""
    server = StoreServer(("127.0.0.1", 0), fresh_authkey().encode(), journal=StuckJournal())
    thread = running(server)
    address = format_address(address_of(server))
    outcome: list[BaseException] = []

    def write() -> None:
        with kvmgr.connect(address, authkey=bytes(server.authkey), timeout=TIMEOUT, retry=retry) as client:
            try:
                client.store("k", "v")
            except Exception as exc:
                outcome.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    until(lambda: server.store.size() == 1, "the write being applied while its commit hangs")
    server.close()
    writer.join(TIMEOUT)
    thread.join(TIMEOUT)
    assert not writer.is_alive() and not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], OutcomeUnknown), outcome
    if retry is NO_RETRY:
        assert "stopped before the write's commit was confirmed" in str(outcome[0])


def test_once_its_handshakes_are_over_the_loop_keeps_no_timer_but_its_sweep(thread_server: StoreServer) -> None:
    """A handshake's deadline is cancelled when the first request comes: the one live timer left is the expiry sweep's
    (a cancelled one leaves the heap once it reaches its head)."""
    address = format_address(address_of(thread_server))
    with kvmgr.connect(address, authkey=bytes(thread_server.authkey), timeout=TIMEOUT) as client:
        client.store("k", "v")
        assert client.get("k") == "v"
        live = [timer[2] for timer in thread_server._timers if timer[2] is not None]
        assert live == [thread_server._sweep_expired], f"{len(live)} live timers kept after every handshake ended"
