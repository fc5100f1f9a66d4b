"""connect() and Client: a program's way to talk to a kvmgr server, with a timeout on every wait."""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from multiprocessing import connection
from pathlib import Path
from typing import Any

from kvmgr import wire
from kvmgr.config import (
    DEFAULT_ADDRESS,
    DEFAULT_TIMEOUT,
    Address,
    address_family,
    client_authkey,
    format_address,
    parse_address,
)
from kvmgr.errors import AuthenticationFailed, OutcomeUnknown, ProtocolError, ServerUnavailable
from kvmgr.server import set_socket_timeout
from kvmgr.store import Value

SAFE_TO_REPEAT = frozenset({"store", "get", "exists", "keys", "size", "get_many", "store_many"})


def open_connection(address: Address, authkey: bytes, timeout: float) -> connection.Connection:
    """Connect and authenticate, every step bounded by timeout; raise ServerUnavailable or AuthenticationFailed."""
    where = format_address(address)
    sock = socket.socket(address_family(address), socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.setblocking(True)
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        sock.close()
        raise ServerUnavailable(f"cannot reach kvmgr server at {where}: {_reason(exc)}") from None
    conn = connection.Connection(sock.detach())
    set_socket_timeout(conn, timeout)
    try:
        connection.answer_challenge(conn, authkey)
        connection.deliver_challenge(conn, authkey)
    except connection.AuthenticationError:
        conn.close()
        raise AuthenticationFailed(f"kvmgr server at {where} rejected the authkey (check $KVMGR_AUTHKEY or --authkey-file)") from None
    except (OSError, EOFError) as exc:
        conn.close()
        raise ServerUnavailable(f"kvmgr server at {where} did not complete the handshake: {_reason(exc)}") from None
    return conn


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BlockingIOError | TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, EOFError):
        return "connection closed"
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)


class Client:
    """A connection to one kvmgr server. Every call is bounded by `timeout` seconds; it reconnects by itself."""

    def __init__(self, address: Address, authkey: bytes, timeout: float = DEFAULT_TIMEOUT, name: str = "client") -> None:
        self.address = address
        self.timeout = timeout
        self.name = name
        self._authkey = authkey
        self._conn: connection.Connection | None = None
        self._ident: str | None = None

    def store(self, key: str, value: Value) -> str:
        """Set key; "saved" if it was new, "updated" if it overwrote a value."""
        return self.call("store", key, value)

    def get(self, key: str) -> Value:
        """The value of key; raises KeyNotFound if absent."""
        return self.call("get", key)

    def delete(self, key: str) -> bool:
        """Remove key; True if it existed."""
        return self.call("delete", key)

    def exists(self, key: str) -> bool:
        """True if key is present."""
        return self.call("exists", key)

    def keys(self) -> list[str]:
        """Every key, sorted."""
        return self.call("keys")

    def size(self) -> int:
        """How many keys the store holds."""
        return self.call("size")

    def cas(self, key: str, expected: Value | None, value: Value) -> bool:
        """Set key to value only if it holds expected (None: only if absent); True if it swapped."""
        return self.call("cas", key, expected, value)

    def get_many(self, keys: Iterable[str]) -> dict[str, Value]:
        """The values of the keys that are present, read in one atomic step."""
        return self.call("get_many", list(keys))

    def store_many(self, mapping: Mapping[str, Value]) -> dict[str, str]:
        """Store every pair in one atomic step; key -> "saved"/"updated"."""
        return self.call("store_many", dict(mapping))

    def quit(self) -> str:
        """Ask the server to shut down gracefully; returns its confirmation."""
        return self.call("quit")

    def rendezvous(self, name: str, parties: int, timeout: float | None = None) -> int:
        """Block until `parties` clients have called rendezvous(name), then return together."""
        wait = self.timeout if timeout is None else timeout
        return self.call("rendezvous", name, parties, wait, timeout=wait + self.timeout)

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """Call a Store method on the server; raise its error, ServerUnavailable or OutcomeUnknown."""
        conn = self._connection()
        try:
            conn.send_bytes(wire.dump((self._ident, method, args, {})))
        except OSError as exc:
            self.close()
            raise ServerUnavailable(f"lost the connection to {format_address(self.address)}: {_reason(exc)}") from None
        return self._receive(conn, method, timeout)

    def _receive(self, conn: connection.Connection, method: str, timeout: float | None) -> Any:
        if timeout is not None:
            set_socket_timeout(conn, timeout)
        try:
            kind, result = wire.load_reply(conn.recv_bytes())
        except (OSError, EOFError, ProtocolError) as exc:
            self.close()
            raise OutcomeUnknown(
                f"{method}: no reply from {format_address(self.address)} ({_reason(exc)}); it may or may not have taken effect"
            ) from None
        finally:
            if timeout is not None and self._conn is not None:
                set_socket_timeout(conn, self.timeout)
        if kind == wire.RETURN:
            return result
        if isinstance(result, BaseException):
            raise result
        raise ProtocolError(f"unexpected reply {kind!r} from the server")

    def _connection(self) -> connection.Connection:
        if self._conn is None:
            conn = open_connection(self.address, self._authkey, self.timeout)
            try:
                conn.send_bytes(wire.dump((None, wire.OPEN_STORE, (), {})))
                kind, ident = wire.load_reply(conn.recv_bytes())
            except (OSError, EOFError, ProtocolError) as exc:
                conn.close()
                raise ServerUnavailable(f"kvmgr server at {format_address(self.address)} did not open the store: {_reason(exc)}") from None
            if kind != wire.RETURN:
                conn.close()
                raise ServerUnavailable(f"kvmgr server at {format_address(self.address)} refused to open the store: {ident}")
            self._conn, self._ident = conn, ident
        return self._conn

    def close(self) -> None:
        """Close the connection (the next call reconnects)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect(
    address: str | Address = DEFAULT_ADDRESS,
    authkey: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    name: str = "client",
    authkey_file: Path | None = None,
) -> Client:
    """Connect to a kvmgr server at address ('HOST:PORT' or a socket path); raises within `timeout` if it cannot."""
    parsed = parse_address(address) if isinstance(address, str) else address
    key = authkey if authkey is not None else client_authkey(authkey_file)
    client = Client(parsed, key, timeout, name)
    client._connection()
    return client
