"""The server: one event loop (kvmgr.server.loop) serving one Store, the manager calls a stdlib client makes
(kvmgr.server.compat), StoreManager (a BaseManager whose server is this one) and `serve`, with graceful shutdown."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import socket
import stat
import sys
from multiprocessing import ProcessError
from multiprocessing.managers import BaseManager
from typing import cast

from kvmgr.config import DEFAULT_LIMITS, LISTEN_BACKLOG, Address, Limits, address_family, format_address
from kvmgr.errors import ConfigError, KvmgrError, ProtocolError, UnknownOperation
from kvmgr.protocol import wire
from kvmgr.server.compat import ManagerCalls
from kvmgr.server.deferred import Deferred
from kvmgr.server.journal import IN_MEMORY, Journal
from kvmgr.server.loop import Connection, EventLoop
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


class StoreServer(ManagerCalls, EventLoop):
    """The server: one event loop that serves a Store registered as `get_store` to kvmgr and stdlib clients alike.

    It speaks the manager protocol (the HMAC handshake, create/incref/accept_connection/..., ("#RETURN", x) replies),
    so plain BaseManager proxies work, and adds `open_store`: one round trip that returns the store's ident and
    starts serving calls.
    """

    def __init__(self, address: Address, authkey: bytes, limits: Limits = DEFAULT_LIMITS, journal: Journal = IN_MEMORY) -> None:
        self.store = Store(limits, on_quit=self.stop, journal=journal)
        self.store_ident = f"{id(self.store):x}"
        self._handlers = self.store.handlers()
        listener = open_listener(address)
        super().__init__(listener, authkey, limits)
        bound = listener.getsockname()
        self.address: Address = bound if isinstance(bound, str) else (bound[0], bound[1])

    def serve_until_stopped(self) -> None:
        """Serve until quit, shutdown, stop() or close(), then stop gracefully."""
        raise_open_files_limit(self.limits.max_connections + self.limits.max_pending_handshakes)
        self.run()

    serve_forever = serve_until_stopped  # the name multiprocessing.managers.Server gives it

    def first_request(self, conn: Connection, payload: bytes) -> None:
        """Answer a new connection's manager call; open_store and accept_connection go on serving the store's calls."""
        try:
            _, funcname, args, kwargs = wire.load_request(payload)
            result = self.manager_call(funcname, args, kwargs)
        except Exception as exc:
            self.queue(conn, self.error_frame(exc))
            self.finish(conn)
            return
        reply = wire.reply_frame(wire.RETURN, result)
        if funcname == "accept_connection" or funcname == wire.OPEN_STORE:
            if self.serve(conn):
                self.queue(conn, reply)
            return
        self.queue(conn, reply)
        self.finish(conn)

    def dispatch(self, payload: bytes) -> bytes | Deferred:
        """Run one call on the store: its framed reply, or the Deferred of a call that answers later."""
        try:
            ident, method, args, kwargs = wire.load_request(payload)
            function = self._handlers.get(method)
            if function is None or ident != self.store_ident:
                raise self._not_exposed(ident, method)
            result = function(*args, **kwargs) if kwargs else function(*args)
        except Exception as exc:
            return self.error_frame(exc)
        if type(result) is Deferred:
            return result
        return wire.return_frame(result)

    def _not_exposed(self, ident: object, method: str) -> KvmgrError:
        if ident != self.store_ident:
            return ProtocolError(f"no object {ident!r} on this server")
        return UnknownOperation(f"method {method!r} is not exposed; exposed are {', '.join(sorted(wire.EXPOSED))}")

    def before_drain(self) -> None:
        """Commit what is pending (durable writes in flight are answered once committed) and close the journal."""
        self.store.close()
        if isinstance(self.address, str):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)  # the socket we bound


class _ManagedServer(StoreServer):
    """The server as BaseManager.get_server() and BaseManager.start() build it: (registry, address, authkey, serializer)."""

    def __init__(self, registry: dict, address: Address | None, authkey: bytes, serializer: str) -> None:
        if wire.TYPEID not in registry or serializer != "pickle":
            raise ConfigError(f"a kvmgr server serves {wire.TYPEID!r} with the pickle serializer only")
        super().__init__(address or ("127.0.0.1", 0), bytes(authkey))


class StoreManager(BaseManager):
    """A BaseManager with `get_store` registered whose server is kvmgr's: StoreManager(address, authkey).get_server().serve_forever()."""

    _Server = _ManagedServer

    def get_server(self) -> StoreServer:  # type: ignore[override]  # typeshed: the stdlib's Server
        """The server, not started yet: call its serve_forever() (BaseManager.get_server builds the stdlib's, whatever _Server is)."""
        if self._state.value != 0:  # type: ignore[attr-defined]  # State.INITIAL, neither in typeshed
            raise ProcessError("the manager was started already: it has a server")
        return _ManagedServer(self._registry, self._address, self._authkey, self._serializer)  # type: ignore[attr-defined]


StoreManager.register(wire.TYPEID)


def raise_open_files_limit(wanted: int) -> None:
    """Raise this process's soft limit of open files toward `wanted` (plus room for the rest), as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted + 64
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def serve(address: Address, authkey: bytes, limits: Limits = DEFAULT_LIMITS, journal: Journal = IN_MEMORY) -> int:
    """Run a server until quit, SIGTERM or SIGINT; print the ready line once listening. Returns the exit status."""
    server = StoreServer(address, authkey, limits, journal)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.stop())
    print(f"kvmgr listening on {format_address(cast(Address, server.address))}", flush=True)
    server.serve_until_stopped()
    sys.stdout.flush()
    return 0
