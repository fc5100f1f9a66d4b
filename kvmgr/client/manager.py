"""The manager transport: Client talks to a kvmgr server over its socket, with a timeout on every wait."""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Iterable
from functools import partial
from multiprocessing import AuthenticationError, connection
from typing import Any

from kvmgr.client.operations import AnswerObserver, Call, Operations, attempt_status, run_pipeline
from kvmgr.client.pool import ConnectionPool
from kvmgr.client.retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy
from kvmgr.config import (
    DEFAULT_TIMEOUT,
    MAX_REQUEST_BYTES,
    PIPELINE_BYTES,
    PIPELINE_WINDOW,
    SEND_PIECE,
    Address,
    address_family,
    format_address,
)
from kvmgr.errors import AuthenticationFailed, InvalidValue, KvmgrError, OutcomeUnknown, ProtocolError, ServerUnavailable
from kvmgr.protocol import wire

MAX_REPLY_BYTES = 1 << 62  # replies come from an authenticated server: no size is refused


def open_socket(address: Address, authkey: bytes, timeout: float) -> socket.socket:
    """Connect and authenticate, every step bounded by timeout; raise ServerUnavailable or AuthenticationFailed."""
    where = format_address(address)
    sock = socket.socket(address_family(address), socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.setblocking(True)
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wire.bound_blocking_calls(sock, timeout)
    except OSError as exc:
        sock.close()
        raise ServerUnavailable(f"cannot reach kvmgr server at {where}: {_reason(exc)}") from None
    handshake = connection.Connection(os.dup(sock.fileno()))  # the stdlib's challenge functions want a Connection
    try:
        connection.answer_challenge(handshake, authkey)
        connection.deliver_challenge(handshake, authkey)
    except AuthenticationError:
        sock.close()
        raise AuthenticationFailed(f"kvmgr server at {where} rejected the authkey (check $KVMGR_AUTHKEY or --authkey-file)") from None
    except (OSError, EOFError) as exc:
        sock.close()
        raise ServerUnavailable(f"kvmgr server at {where} did not complete the handshake: {_reason(exc)}") from None
    except BaseException:  # interrupted: the original exception goes on, the half-made connection goes
        sock.close()
        raise
    finally:
        handshake.close()
    return sock


def open_connection(address: Address, authkey: bytes, timeout: float) -> connection.Connection:
    """An authenticated multiprocessing Connection to the server (for speaking the manager protocol directly)."""
    return connection.Connection(open_socket(address, authkey, timeout).detach())


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BlockingIOError | TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, EOFError):
        return "connection closed"
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)


class Link:
    """One authenticated connection to the server's store, carrying one call at a time.

    The socket blocks, with kernel timeouts (SO_RCVTIMEO/SO_SNDTIMEO), so a call that fits in one write
    and one read costs just those two system calls; when it needs more, each further one is bounded by
    what is left of the call's deadline, so a call never takes longer than its timeout.
    """

    __slots__ = ("armed", "buffer", "fd", "ident", "idle_check", "max_request_bytes", "sock")

    def __init__(self, sock: socket.socket, ident: str | None, max_request_bytes: int, timeout: float) -> None:
        self.sock, self.fd, self.ident, self.max_request_bytes = sock, sock.fileno(), ident, max_request_bytes
        self.buffer = bytearray()
        self.armed = timeout
        self.idle_check = select.poll()
        self.idle_check.register(self.fd, select.POLLIN)

    def request(self, method: str, args: tuple) -> bytes:
        """The framed request for one call on this connection (the one place a request is built);
        InvalidValue if it is larger than the server accepts (nothing is sent)."""
        payload = wire.dump((self.ident, method, args, {}))
        if len(payload) > self.max_request_bytes:
            raise InvalidValue(f"{method}: the request is {len(payload)} bytes; the server accepts at most {self.max_request_bytes}")
        return wire.frame(payload)

    def send(self, data: bytes, deadline: float) -> None:
        """Write framed bytes in full before the deadline (OSError if the server does not take them).

        A large request goes in pieces, the time left re-armed before each: on a Unix socket SO_SNDTIMEO bounds
        each wait for buffer space, not a whole write, so one write of it all could outlast the deadline.
        """
        if len(data) <= SEND_PIECE:
            written = os.write(self.fd, data)
            if written == len(data):
                return
        else:
            written = 0
        view = memoryview(data)
        while written < len(data):
            self._arm_remaining(deadline)
            written += os.write(self.fd, view[written:written + SEND_PIECE])

    def receive(self, deadline: float) -> bytes:
        """Read one whole reply before the deadline (OSError on timeout, EOFError if the server closed)."""
        buffer = self.buffer
        if deadline - time.monotonic() < self.armed * 0.9:  # sending used part of the time: wait only for the rest
            self._arm_remaining(deadline)
        if not buffer:  # the usual case: one read brings exactly one whole reply
            chunk = os.read(self.fd, wire.READ_SIZE)
            if len(chunk) >= 4 and len(chunk) == 4 + wire.HEADER.unpack_from(chunk)[0]:
                return chunk[4:]
            if not chunk:
                raise EOFError("connection closed")
            buffer += chunk
        while True:
            bounds = wire.message_bounds(buffer, MAX_REPLY_BYTES)
            if bounds is not None and len(buffer) >= bounds[1]:
                message = bytes(buffer[bounds[0]:bounds[1]])
                del buffer[:bounds[1]]
                return message
            self._arm_remaining(deadline)
            chunk = os.read(self.fd, max(bounds[1] - len(buffer) if bounds else 0, wire.READ_SIZE))
            if not chunk:
                raise EOFError("connection closed")
            buffer += chunk

    def arm(self, timeout: float) -> None:
        """Bound each blocking read and write by `timeout` seconds."""
        if timeout != self.armed:
            wire.bound_blocking_calls(self.sock, timeout)
            self.armed = timeout

    def _arm_remaining(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        self.arm(remaining)

    def closed_by_server(self) -> bool:
        """True if the server closed this idle connection (it restarted or quit) or sent something unasked."""
        return bool(self.idle_check.poll(0))

    def close(self) -> None:
        """Close this process's descriptor (never shutdown(): after a fork the parent still uses the socket)."""
        self.sock.close()


class Client(Operations):
    """A kvmgr server's store, for any number of threads at once; every call is bounded by `timeout` seconds.

    Each call runs on a connection of its own, leased from a small pool, so threads never read each
    other's replies, a call that is interrupted takes its connection with it, and a forked child opens
    its own connections instead of using the parent's. It reconnects by itself.
    """

    def __init__(
        self, address: Address, authkey: bytes, timeout: float = DEFAULT_TIMEOUT, name: str = "client",
        *, retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.name = name
        self.retry = retry
        self._authkey = authkey
        self._where = format_address(address)
        self._pool: ConnectionPool[Link] = ConnectionPool(self._open_link, Link.close, Link.closed_by_server)

    def _call(self, method: str, args: tuple, timeout: float | None) -> Any:
        """One attempt on a leased connection; the connection is discarded unless its reply was read in full."""
        lease = self._pool.acquire()
        link = lease.connection
        seconds = self.timeout if timeout is None else timeout
        try:
            request = link.request(method, args)
            if link.armed != seconds:
                link.arm(seconds)
            deadline = time.monotonic() + seconds
            try:
                link.send(request, deadline)
            except OSError as exc:
                raise ServerUnavailable(f"{method}: {self._where} did not take the request ({_reason(exc)}); it was not made") from None
            reply = self._reply(link, method, deadline)
        except BaseException:
            self._pool.discard(lease)  # its reply may still come: no other call may read it
            raise
        self._pool.release(lease)
        return _result(reply)

    def _reply(self, link: Link, method: str, deadline: float) -> tuple[str, Any]:
        """Read and decode one reply; OutcomeUnknown if none comes."""
        try:
            return wire.load_reply(link.receive(deadline))
        except (OSError, EOFError, ProtocolError) as exc:
            raise OutcomeUnknown(
                f"{method}: no reply from {self._where} ({_reason(exc)}); it may or may not have taken effect",
                timed_out=isinstance(exc, BlockingIOError | TimeoutError),
            ) from None

    def _open_link(self) -> Link:
        """A new authenticated connection with the store opened on it (open_store, protocol version 1)."""
        link = Link(open_socket(self.address, self._authkey, self.timeout), None, MAX_REQUEST_BYTES, self.timeout)
        try:
            link.send(link.request(wire.OPEN_STORE, (wire.PROTOCOL_VERSION,)), time.monotonic() + self.timeout)
            kind, opened = wire.load_reply(link.receive(time.monotonic() + self.timeout))
        except (OSError, EOFError, ProtocolError) as exc:
            link.close()
            raise ServerUnavailable(f"kvmgr server at {self._where} did not open the store: {_reason(exc)}") from None
        except BaseException:
            link.close()
            raise
        if kind != wire.RETURN or not isinstance(opened, dict):
            link.close()
            raise ServerUnavailable(f"kvmgr server at {self._where} refused to open the store: {opened}")
        link.ident, link.max_request_bytes = opened["ident"], opened["max_request_bytes"]
        return link

    def pipeline(self, calls: Iterable[tuple], raise_on_error: bool = True, window: int = PIPELINE_WINDOW) -> list[Any]:
        """Run many calls, each a tuple (method, *args), with up to `window` requests in flight on one connection.

        The server answers them in order. The requests in flight are also bounded to PIPELINE_BYTES in all
        (one larger request goes alone), so neither side can block writing while the other blocks writing
        too. Results come back in order; with raise_on_error=False a call's error is returned in its place.
        """
        return run_pipeline(calls, raise_on_error, partial(self._run_pipeline, window=window))

    def _run_pipeline(self, calls: list[Call], on_answer: AnswerObserver | None = None, window: int = PIPELINE_WINDOW) -> list[Any]:
        """Every checked call's result or error, pipelined on one connection; on_answer hears of each answer."""
        lease = self._pool.acquire()
        try:
            results = _Pipeline(self, lease.connection, calls, window, on_answer or _ignore_answer).run()
        except BaseException:
            self._pool.discard(lease)
            raise
        self._pool.release(lease)
        return results

    def session(self) -> Client:
        """A client of the same store with connections of its own, never repeating a call."""
        return Client(self.address, self._authkey, self.timeout, self.name, retry=NO_RETRY)

    def close(self) -> None:
        """Close the connections (the next call reconnects)."""
        self._pool.close()


def _ignore_answer(method: str, args: tuple, status: str, result: Any, start: int, end: int | None) -> None:
    """The observer of a pipeline nobody records."""


class _Pipeline:
    """One pipelined run on one connection: sends in windows, tells on_answer of every call, loses none silently."""

    def __init__(self, client: Client, link: Link, calls: list[Call], window: int, on_answer: AnswerObserver) -> None:
        self.client, self.link, self.calls, self.window, self.on_answer = client, link, calls, window, on_answer
        self.requests = [link.request(method, args) for method, args in calls]
        self.started: list[int] = []
        self.results: list[Any] = []

    def run(self) -> list[Any]:
        """Every call's result (or its error) in order; OutcomeUnknown if the connection breaks."""
        in_flight_bytes = 0
        try:
            while len(self.results) < len(self.requests):
                end = self._window_end(in_flight_bytes)
                if end > len(self.started):
                    in_flight_bytes += sum(map(len, self.requests[len(self.started):end]))
                    self._send(end)
                self._next_result()
                in_flight_bytes -= len(self.requests[len(self.results) - 1])
        except BaseException as exc:
            for index in range(len(self.results), len(self.started)):  # sent, never answered: outcome unknown
                self.on_answer(*self.calls[index], "info", None, self.started[index], None)
            if isinstance(exc, OSError | EOFError | ProtocolError):
                raise OutcomeUnknown(
                    f"pipeline: lost the connection to {self.client._where} ({_reason(exc)}); "
                    f"calls {len(self.results)} to {len(self.started) - 1} may or may not have taken effect",
                    timed_out=isinstance(exc, BlockingIOError | TimeoutError),
                ) from None
            raise
        return self.results

    def _window_end(self, in_flight_bytes: int) -> int:
        end, answered = len(self.started), len(self.results)
        while end < len(self.requests) and end - answered < self.window and (
            end == answered or in_flight_bytes + len(self.requests[end]) <= PIPELINE_BYTES
        ):
            in_flight_bytes += len(self.requests[end])
            end += 1
        return end

    def _deadline(self) -> float:
        """A fresh deadline for one send or one reply, the connection's timeouts set to match."""
        self.link.arm(self.client.timeout)
        return time.monotonic() + self.client.timeout

    def _send(self, end: int) -> None:
        batch = b"".join(self.requests[len(self.started):end])
        self.started.extend([time.monotonic_ns()] * (end - len(self.started)))
        self.link.send(batch, self._deadline())

    def _next_result(self) -> None:
        """Read the next reply and keep its result (or its error); answered, it is never reported as unknown."""
        index = len(self.results)
        method, args = self.calls[index]
        reply = wire.load_reply(self.link.receive(self._deadline()))
        try:
            result = _result(reply)
        except KvmgrError as exc:  # the call's own error, in its place
            self.results.append(exc)
            status = attempt_status(exc)
            if status is not None:
                self.on_answer(method, args, status, None, self.started[index], time.monotonic_ns())
            return
        self.results.append(result)
        self.on_answer(method, args, "ok", result, self.started[index], time.monotonic_ns())


def _result(reply: tuple[str, Any]) -> Any:
    """The value a reply carries, or the error it carries raised."""
    kind, result = reply
    if kind == wire.RETURN:
        return result
    if isinstance(result, BaseException):
        raise result
    raise ProtocolError(f"unexpected reply {kind!r} from the server")
