"""The server process: a multiprocessing.managers.Server that hosts one Store, and graceful shutdown."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing import AuthenticationError, connection, process
from multiprocessing.managers import Server
from typing import Any, cast

from kvmgr.config import DEFAULT_LIMITS, DRAIN_TIMEOUT, LISTEN_BACKLOG, REPLY_BATCH_BYTES, Address, Limits, address_family, format_address
from kvmgr.errors import ConfigError, KvmgrError, ProtocolError, UnknownOperation
from kvmgr.protocol import wire
from kvmgr.protocol.wire import set_socket_timeout
from kvmgr.server.journal import IN_MEMORY, Journal
from kvmgr.server.store import Store

log = logging.getLogger("kvmgr.server.manager")


def open_listener(address: Address) -> socket.socket:
    """A listening socket on address (a Unix socket when it is a path)."""
    family = address_family(address)
    if isinstance(address, str) and os.path.exists(address):
        _remove_stale_socket(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _remove_stale_socket(path: str) -> None:
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise ConfigError(f"{path} exists and is not a socket: refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens there: a leftover of a crashed server
    else:
        raise KvmgrError(f"another server is already listening on {path}")
    finally:
        probe.close()


class StoreServer(Server):
    """The manager's Server with a Store registered as `get_store`, bounded handshakes and a graceful stop.

    It keeps the stdlib protocol (create/incref/accept_connection/...), so plain BaseManager proxies work,
    and adds `open_store`: one round trip that returns the store's ident and starts serving calls.
    """

    public = [*Server.public, wire.OPEN_STORE]

    def __init__(self, address: Address, authkey: bytes, limits: Limits = DEFAULT_LIMITS, journal: Journal = IN_MEMORY) -> None:
        self.stop_event = threading.Event()
        self.store = Store(limits, on_quit=self.stop_event.set, journal=journal)
        self.store_ident = f"{id(self.store):x}"  # the ident Server.create gives it
        # The attributes multiprocessing.managers.Server's own methods rely on:
        self.registry = {wire.TYPEID: (lambda: self.store, wire.EXPOSED, None, None)}
        self.authkey = process.AuthenticationString(authkey)  # type: ignore[attr-defined]  # not in typeshed
        self.socket = open_listener(address)
        self.address = self.socket.getsockname()
        if isinstance(self.address, tuple):
            self.address = self.address[:2]
        self.id_to_obj = {"0": (None, set(), {}), self.store_ident: (self.store, set(wire.EXPOSED), {})}
        self.id_to_refcount = {self.store_ident: 1}  # the server's own reference: never disposed of
        self._store_methods = {name: getattr(self.store, name) for name in wire.EXPOSED}
        self.id_to_local_proxy_obj: dict[str, Any] = {}
        self.mutex = threading.Lock()
        self.limits = limits
        self._handshakes = threading.BoundedSemaphore(limits.max_pending_handshakes)
        self._busy: set[int] = set()  # threads running a call right now

    def serve_until_stopped(self) -> None:
        """Accept connections until quit or a signal, then stop gracefully."""
        accepter = threading.Thread(target=self.accepter, name="kvmgr-accepter", daemon=True)
        accepter.start()
        while not self.stop_event.wait(0.5):
            pass
        self.close()
        accepter.join(DRAIN_TIMEOUT)

    def close(self) -> None:
        """Stop accepting, let calls in flight finish (bounded), close the listening socket."""
        self.stop_event.set()
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)  # wakes the accepter thread
        self.socket.close()
        if isinstance(self.address, str):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)  # the socket we bound
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self._busy and time.monotonic() < deadline:
            time.sleep(0.005)  # let calls in flight send their replies
        self.store.close()

    def accepter(self) -> None:
        """Hand each new connection to its own thread until the server stops."""
        while not self.stop_event.is_set():
            try:
                sock, peer = self.socket.accept()
            except OSError as exc:
                if not self.stop_event.is_set():
                    log.warning("accept failed: %s", exc.strerror or exc)
                    self.stop_event.wait(0.05)  # back off when out of file descriptors
                continue
            name = format_address(peer) if peer else "unix-peer"
            if not self._handshakes.acquire(blocking=False):
                log.warning("rejected peer %s: %d handshakes already pending", name, self.limits.max_pending_handshakes)
                sock.close()
                continue
            sock.setblocking(True)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # replies go out at once, never behind Nagle
            conn = connection.Connection(sock.detach())
            threading.Thread(target=self.handle_request, args=(conn, name), daemon=True).start()

    def handle_request(self, conn: connection.Connection, peer: str = "?") -> None:
        """Authenticate a new connection within HANDSHAKE_TIMEOUT, then run the one request it makes."""
        try:
            self._handle_request(conn, peer)
        finally:
            conn.close()

    def _handle_request(self, conn: connection.Connection, peer: str) -> None:
        try:
            request = self._authenticate(conn, peer)
        finally:
            self._handshakes.release()
        if request is None:
            return
        _, funcname, args, kwargs = request
        set_socket_timeout(conn, 0)
        if funcname not in self.public:
            conn.send_bytes(wire.dump((wire.ERROR, ProtocolError(f"unknown server function {funcname!r}"))))
            return
        try:
            result = getattr(self, funcname)(conn, *args, **kwargs)
        except Exception as exc:
            reply = (wire.ERROR, _sendable(exc))
        else:
            reply = (wire.RETURN, result)
        if funcname not in ("accept_connection", wire.OPEN_STORE, "shutdown"):
            conn.send_bytes(wire.dump(reply))

    def _exposed_method(self, ident: str, method: str) -> Callable[..., Any] | None:
        """The bound method `method` of the object `ident` names, if it is exposed (None otherwise)."""
        obj, exposed, _ = self.id_to_obj[ident]
        return getattr(obj, method) if method in exposed else None

    def _authenticate(self, conn: connection.Connection, peer: str) -> tuple | None:
        """The HMAC challenge both ways and the first request, all within the handshake timeout; None if rejected.

        Every read is bounded by the timeout, and a timer cuts the connection when the whole handshake
        takes longer, so a peer that trickles a byte at a time cannot hold a handshake slot.
        """
        timeout = self.limits.handshake_timeout
        set_socket_timeout(conn, timeout)
        expired = threading.Event()
        deadline = threading.Timer(timeout, _cut_off, args=(conn, expired))
        deadline.start()
        try:
            connection.deliver_challenge(conn, self.authkey)
            connection.answer_challenge(conn, self.authkey)
            return wire.load_request(conn.recv_bytes(self.limits.max_request_bytes))
        except AuthenticationError:
            log.warning("rejected peer %s: wrong authkey", peer)
        except (OSError, EOFError, ProtocolError) as exc:
            reason = f"no handshake within {timeout:g}s" if expired.is_set() else _reason(exc, timeout)
            log.warning("rejected peer %s: %s", peer, reason)
        finally:
            deadline.cancel()
        return None

    def open_store(self, conn: connection.Connection, version: int = 0) -> None:
        """Reply with the store's ident (from protocol version 1 on, with the limits a client must know), then serve calls."""
        opened: object = self.store_ident
        if version >= 1:
            opened = {"ident": self.store_ident, "protocol": wire.PROTOCOL_VERSION, "max_request_bytes": self.limits.max_request_bytes}
        conn.send_bytes(wire.dump((wire.RETURN, opened)))
        self.serve_client(conn)

    def shutdown(self, conn: connection.Connection) -> None:
        """The stdlib manager's shutdown request: acknowledge, then stop like quit."""
        conn.send_bytes(wire.dump((wire.RETURN, None)))
        self.stop_event.set()

    def serve_client(self, conn: connection.Connection) -> None:
        """Answer calls on one connection until the peer leaves or the server stops.

        Requests already buffered (a pipelining client) are answered together with one write.
        """
        framed = wire.FramedSocket(conn.fileno(), self.limits.max_request_bytes)
        busy, me, stopping = self._busy, threading.get_ident(), self.stop_event.is_set
        while True:
            try:
                request = framed.recv()
            except (EOFError, OSError, ProtocolError):
                return
            if stopping():
                return
            busy.add(me)
            try:
                replies = [wire.frame(self.dispatch(request))]
                size = len(replies[0])
                while framed.has_message() and size < REPLY_BATCH_BYTES:
                    replies.append(wire.frame(self.dispatch(framed.recv())))
                    size += len(replies[-1])
                framed.send_raw(b"".join(replies) if len(replies) > 1 else replies[0])
            except (OSError, ProtocolError):
                return
            finally:
                busy.discard(me)

    def dispatch(self, request: bytes) -> bytes:
        """Run one call and return the encoded reply; errors become ("#ERROR", exception)."""
        try:
            ident, method, args, kwargs = wire.load_request(request)
            function = self._store_methods.get(method) if ident == self.store_ident else self._exposed_method(ident, method)
            if function is None:
                raise UnknownOperation(f"method {method!r} is not exposed; exposed are {', '.join(sorted(wire.EXPOSED))}")
            reply = (wire.RETURN, function(*args, **kwargs))
        except Exception as exc:
            reply = (wire.ERROR, _sendable(exc))
        try:
            return wire.dump(reply)
        except Exception as exc:
            return wire.dump((wire.ERROR, KvmgrError(f"cannot send the result: {exc}")))


def _cut_off(conn: connection.Connection, expired: threading.Event) -> None:
    """End a handshake that ran out of time: shut the socket down so the blocked read returns."""
    expired.set()
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=conn.fileno())
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.detach()


def _sendable(exc: Exception) -> KvmgrError:
    """exc itself when it is a kvmgr error; anything unexpected becomes a KvmgrError of one line."""
    if isinstance(exc, KvmgrError) and type(exc).__module__ == "kvmgr.errors":
        return exc
    log.warning("a call failed unexpectedly: %s: %s", type(exc).__name__, exc)
    lines = str(exc).strip().splitlines()
    return KvmgrError(f"the server could not run the call: {type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": "))


def _reason(exc: BaseException, handshake_timeout: float) -> str:
    if isinstance(exc, BlockingIOError):
        return f"no handshake within {handshake_timeout:g}s"
    if isinstance(exc, EOFError):
        return "closed the connection during the handshake"
    return str(exc) or type(exc).__name__


def serve(address: Address, authkey: bytes, limits: Limits = DEFAULT_LIMITS, journal: Journal = IN_MEMORY) -> int:
    """Run a server until quit, SIGTERM or SIGINT; print the ready line once listening. Returns the exit status."""
    server = StoreServer(address, authkey, limits, journal)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.stop_event.set())
    print(f"kvmgr listening on {format_address(cast(Address, server.address))}", flush=True)
    server.serve_until_stopped()
    sys.stdout.flush()
    return 0
