"""The server's protocol with the server in a thread of this process (the thread_server fixture): no subprocess needed."""

from __future__ import annotations

import pickle
import socket
from collections.abc import Iterator
from multiprocessing import AuthenticationError, connection
from multiprocessing.managers import BaseManager
from pathlib import Path
from typing import Any

import pytest

import kvmgr
from kvmgr.client.manager import open_connection
from kvmgr.client.operations import Operations
from kvmgr.config import format_address
from kvmgr.errors import AuthenticationFailed, InvalidValue, KeyNotFound, ProtocolError, UnknownOperation
from kvmgr.protocol import wire
from kvmgr.server.manager import StoreServer
from kvmgr.tools.driver import is_listening
from tests.commit_failure import until
from tests.test_codec import Exploit, nested_lists

TIMEOUT = 5.0


def address(server: StoreServer) -> tuple[str, int]:
    """The server's (host, port)."""
    assert isinstance(server.address, tuple)
    return server.address


def connected(server: StoreServer, authkey: bytes | None = None) -> Operations:
    """kvmgr's own client of the server."""
    return kvmgr.connect(format_address(address(server)), authkey=authkey or bytes(server.authkey), timeout=TIMEOUT)


@pytest.fixture
def raw(thread_server: StoreServer) -> Iterator[connection.Connection]:
    """An authenticated connection on which the test speaks the manager protocol itself."""
    conn = open_connection(address(thread_server), bytes(thread_server.authkey), TIMEOUT)
    yield conn
    conn.close()


def call(conn: connection.Connection, request: object) -> tuple[str, Any]:
    """Send one request, return the decoded reply."""
    conn.send_bytes(request if isinstance(request, bytes) else wire.dump(request))
    return wire.load_reply(conn.recv_bytes())


def opened(conn: connection.Connection) -> str:
    """open_store (protocol version 1) on conn; the store's ident."""
    kind, reply = call(conn, (None, wire.OPEN_STORE, (wire.PROTOCOL_VERSION,), {}))
    assert kind == wire.RETURN
    ident: str = reply["ident"]
    return ident


def test_the_kvmgr_client_against_a_server_in_a_thread(thread_server: StoreServer) -> None:
    with connected(thread_server) as client:
        assert client.store("k", "v") == "saved" and client.store("k", b"w") == "updated"
        assert client.get("k") == b"w" and client.cas("k", b"w", "x") and client.keys() == ["k"]
        with pytest.raises(KeyNotFound):
            client.get("missing")
    assert thread_server.store.get("k") == "x"  # the very Store the server holds


def test_quit_stops_the_server_in_the_thread(thread_server: StoreServer) -> None:
    with connected(thread_server) as client:
        assert client.quit() == "Server Quitting..!"
    assert thread_server.stop_event.wait(TIMEOUT)
    until(lambda: not is_listening(address(thread_server)), "the listening socket closing after quit")


def test_the_stdlib_base_manager_client(thread_server: StoreServer) -> None:
    class StoreManager(BaseManager):
        pass

    StoreManager.register("get_store")
    manager: Any = StoreManager(address=address(thread_server), authkey=bytes(thread_server.authkey))
    manager.connect()
    store = manager.get_store()  # create, then incref by the proxy
    assert store.store("foo", "bar") == "saved" and store.get("foo") == "bar"
    with pytest.raises(KeyNotFound):
        store.get("nope")
    with pytest.raises(InvalidValue):
        store.store("foo", {1, 2})  # a set is not a value
    assert store.store("n", 1) == "saved" and store.incr("n", 2) == 3  # plain data and the new operations, for a stdlib proxy too
    del store  # decref of the last proxy: the server keeps the one Store all the same
    again = manager.get_store()
    assert again.get("foo") == "bar"


def test_the_stdlib_shutdown_request_stops_the_server(raw: connection.Connection, thread_server: StoreServer) -> None:
    assert call(raw, (None, "shutdown", (), {})) == (wire.RETURN, None)
    assert thread_server.stop_event.wait(TIMEOUT)


def test_open_store_version_0_answers_the_bare_ident(raw: connection.Connection, thread_server: StoreServer) -> None:
    assert call(raw, (None, wire.OPEN_STORE, (), {})) == (wire.RETURN, thread_server.store_ident)
    assert call(raw, (thread_server.store_ident, "store", ("k", "v"), {})) == (wire.RETURN, "saved")


def test_open_store_version_1_answers_the_settings_a_client_needs(raw: connection.Connection, thread_server: StoreServer) -> None:
    kind, reply = call(raw, (None, wire.OPEN_STORE, (1,), {}))
    assert (kind, reply) == (wire.RETURN, {
        "ident": thread_server.store_ident, "protocol": wire.PROTOCOL_VERSION, "max_request_bytes": thread_server.limits.max_request_bytes,
    })
    assert call(raw, (reply["ident"], "size", (), {})) == (wire.RETURN, 0)


def test_an_unknown_server_function_is_refused(raw: connection.Connection) -> None:
    kind, error = call(raw, (None, "no_such_function", (), {}))
    assert kind == wire.ERROR and isinstance(error, ProtocolError) and "unknown server function 'no_such_function'" in str(error)


def test_hostile_and_odd_requests_get_an_error_and_the_connection_keeps_serving(raw: connection.Connection, tmp_path: Path) -> None:
    ident = opened(raw)
    target = tmp_path / "pwned"
    exploit = pickle.dumps((ident, "store", ("k", Exploit(eval, f"open({str(target)!r}, 'w').close()")), {}))
    kind, error = call(raw, exploit)
    assert kind == wire.ERROR and isinstance(error, ProtocolError) and "refused to unpickle builtins.eval" in str(error)
    assert not target.exists()
    deep = b"\x80\x04(" + pickle.dumps(ident)[2:-1] + b"\x8c\x05store\x8c\x01k" + nested_lists(100_000) + b"\x86}t."
    kind, error = call(raw, deep)
    assert kind == wire.ERROR and isinstance(error, InvalidValue)
    kind, error = call(raw, (ident, "no_such_method", (), {}))
    assert kind == wire.ERROR and isinstance(error, UnknownOperation)
    assert call(raw, (ident, "store", ("k", "still serving"), {})) == (wire.RETURN, "saved")


def test_requests_merged_in_one_write_are_answered_in_order(raw: connection.Connection) -> None:
    ident = opened(raw)
    calls: list[tuple[str, str, tuple[str, ...], dict[str, str]]] = [(ident, "store", ("k", str(n)), {}) for n in range(50)]
    calls.append((ident, "get", ("k",), {}))
    with socket.socket(fileno=raw.fileno()) as sock:
        try:
            sock.sendall(b"".join(wire.frame(wire.dump(request)) for request in calls))
        finally:
            sock.detach()
    replies = [wire.load_reply(raw.recv_bytes()) for _ in calls]
    assert replies == [(wire.RETURN, "saved")] + [(wire.RETURN, "updated")] * 49 + [(wire.RETURN, "49")]


def test_a_wrong_authkey_is_refused_and_the_server_keeps_serving(thread_server: StoreServer) -> None:
    with pytest.raises(AuthenticationFailed), connected(thread_server, b"wrong") as wrong:
        wrong.store("k", "v")
    with pytest.raises(AuthenticationError):
        connection.Client(address(thread_server), authkey=b"wrong")
    with connected(thread_server) as client:
        assert client.store("k", "v") == "saved"
