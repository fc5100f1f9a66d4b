"""connect() and Client: a program's way to talk to a kvmgr server, with a timeout on every wait."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterable
from multiprocessing import connection
from pathlib import Path
from typing import Any

from kvmgr import wire
from kvmgr.client.operations import Operations, raise_first_error
from kvmgr.config import (
    DEFAULT_ADDRESS,
    DEFAULT_TIMEOUT,
    IDLE_CHECK_AFTER,
    Address,
    address_family,
    client_authkey,
    format_address,
    is_redis_url,
    parse_address,
)
from kvmgr.errors import AuthenticationFailed, KeyNotFound, OutcomeUnknown, ProtocolError, ServerUnavailable
from kvmgr.history import HistoryWriter
from kvmgr.wire import set_socket_timeout

PIPELINE_WINDOW = 128  # requests in flight at most on one connection
PIPELINE_BYTES = 64 * 1024  # ... and bytes of requests in flight at most (one larger request goes alone)


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


class Client(Operations):
    """A connection to one kvmgr server. Every call is bounded by `timeout` seconds; it reconnects by itself."""

    def __init__(
        self, address: Address, authkey: bytes, timeout: float = DEFAULT_TIMEOUT, name: str = "client",
        history: HistoryWriter | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.name = name
        self.history = history
        self._authkey = authkey
        self._conn: connection.Connection | None = None
        self._framed: wire.FramedSocket | None = None
        self._ident: str | None = None
        self._last_used = 0.0
        self._idle_check = select.poll()

    def _call_once(self, method: str, args: tuple, timeout: float | None) -> Any:
        framed = self._connection()
        try:
            framed.send(wire.dump((self._ident, method, args, {})))
        except OSError as exc:
            self.close()
            raise ServerUnavailable(f"lost the connection to {format_address(self.address)}: {_reason(exc)}") from None
        return self._receive(framed, method, timeout)

    def _receive(self, framed: wire.FramedSocket, method: str, timeout: float | None) -> Any:
        if timeout is not None:
            set_socket_timeout(self._conn, timeout)
        try:
            kind, result = wire.load_reply(framed.recv())
        except (OSError, EOFError, ProtocolError) as exc:
            self.close()
            raise OutcomeUnknown(
                f"{method}: no reply from {format_address(self.address)} ({_reason(exc)}); it may or may not have taken effect",
                timed_out=isinstance(exc, BlockingIOError),
            ) from None
        self._last_used = time.monotonic()
        if timeout is not None:
            set_socket_timeout(self._conn, self.timeout)
        if kind == wire.RETURN:
            return result
        if isinstance(result, BaseException):
            raise result
        raise ProtocolError(f"unexpected reply {kind!r} from the server")

    def _connection(self) -> wire.FramedSocket:
        if self._framed is not None and time.monotonic() - self._last_used > IDLE_CHECK_AFTER and self._idle_check.poll(0):
            self.close()  # the server closed this idle connection (it restarted or quit): start afresh
        if self._framed is None:
            self._conn, self._ident = self._open_store()
            self._framed = wire.FramedSocket(self._conn.fileno())
            self._idle_check = select.poll()
            self._idle_check.register(self._conn.fileno(), select.POLLIN)
            self._last_used = time.monotonic()
        return self._framed

    def _open_store(self) -> tuple[connection.Connection, str]:
        conn = open_connection(self.address, self._authkey, self.timeout)
        where = format_address(self.address)
        try:
            conn.send_bytes(wire.dump((None, wire.OPEN_STORE, (), {})))
            kind, ident = wire.load_reply(conn.recv_bytes())
        except (OSError, EOFError, ProtocolError) as exc:
            conn.close()
            raise ServerUnavailable(f"kvmgr server at {where} did not open the store: {_reason(exc)}") from None
        if kind != wire.RETURN:
            conn.close()
            raise ServerUnavailable(f"kvmgr server at {where} refused to open the store: {ident}")
        return conn, ident

    def pipeline(self, calls: Iterable[tuple], raise_on_error: bool = True, window: int = PIPELINE_WINDOW) -> list[Any]:
        """Run many calls, each a tuple (method, *args), with up to `window` requests in flight on the connection.

        The server answers them in order. The requests in flight are also bounded to PIPELINE_BYTES in all
        (one larger request goes alone), so neither side can block writing while the other blocks writing
        too. Results come back in order; with raise_on_error=False a call's error is returned in its place.
        """
        calls = [(method, tuple(args)) for method, *args in calls]
        framed = self._connection()
        requests = [wire.frame(wire.dump((self._ident, method, args, {}))) for method, args in calls]
        results: list[Any] = []
        started: list[int] = []
        in_flight_bytes = 0
        while len(results) < len(requests):
            sent = len(started)
            end = sent
            while end < len(requests) and end - len(results) < window and (
                end == len(results) or in_flight_bytes + len(requests[end]) <= PIPELINE_BYTES
            ):
                in_flight_bytes += len(requests[end])
                end += 1
            if end > sent:
                self._send_batch(framed, calls, b"".join(requests[sent:end]), len(results), end, started)
            results.append(self._pipelined_reply(framed, calls, len(results), started))
            in_flight_bytes -= len(requests[len(results) - 1])
        return raise_first_error(results) if raise_on_error else results

    def _send_batch(self, framed: wire.FramedSocket, calls: list, batch: bytes, answered: int, end: int, started: list[int]) -> None:
        started.extend([time.monotonic_ns()] * (end - len(started)))
        try:
            framed.send_raw(batch)
        except OSError as exc:
            self._lose_in_flight(calls, answered, started)
            raise OutcomeUnknown(
                f"pipeline: lost the connection to {format_address(self.address)} ({_reason(exc)}); "
                f"calls {answered} to {end - 1} may or may not have taken effect"
            ) from None

    def _pipelined_reply(self, framed: wire.FramedSocket, calls: list, index: int, started: list[int]) -> Any:
        method, args = calls[index]
        try:
            result = self._receive(framed, method, None)
        except OutcomeUnknown:
            self._lose_in_flight(calls, index, started)
            raise
        except Exception as exc:
            self._record(method, args, "ok" if isinstance(exc, KeyNotFound) else "fail", None, started[index], time.monotonic_ns())
            return exc
        self._record(method, args, "ok", result, started[index], time.monotonic_ns())
        return result

    def _lose_in_flight(self, calls: list, first: int, started: list[int]) -> None:
        """The connection broke: close it and record every call sent but not answered as outcome unknown."""
        self.close()
        for index in range(first, len(started)):
            self._record(*calls[index], "info", None, started[index], None)

    def close(self) -> None:
        """Close the connection (the next call reconnects)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = self._framed = None


def connect(
    address: str | Address = DEFAULT_ADDRESS,
    authkey: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    name: str = "client",
    authkey_file: Path | None = None,
    history: HistoryWriter | None = None,
) -> Operations:
    """Connect to a kvmgr server at address ('HOST:PORT' or a socket path), or to Redis at 'redis://host:port/db'.

    Raises ServerUnavailable or AuthenticationFailed within `timeout` if it cannot.
    """
    if is_redis_url(address):
        from kvmgr.redis_client import connect_redis  # redis-py is an optional extra

        return connect_redis(address, timeout, name=name, history=history)
    parsed = parse_address(address) if isinstance(address, str) else address
    key = authkey if authkey is not None else client_authkey(authkey_file)
    client = Client(parsed, key, timeout, name, history)
    client._connection()
    return client
