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
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from multiprocessing import ProcessError
from multiprocessing.managers import BaseManager
from typing import Any, cast

from kvmgr.config import DEFAULT_LIMITS, LISTEN_BACKLOG, SWEEP_INTERVAL, VERSION, Address, Limits, address_family, format_address
from kvmgr.errors import ConfigError, KvmgrError, ProtocolError, UnknownOperation
from kvmgr.protocol import wire
from kvmgr.server.compat import ManagerCalls
from kvmgr.server.coordination import thread_schedule
from kvmgr.server.deferred import Deferred
from kvmgr.server.journal import IN_MEMORY, Journal
from kvmgr.server.loop import Connection, EventLoop
from kvmgr.server.store import Store

log = logging.getLogger("kvmgr.server.manager")
IDLE_SWEEP_INTERVAL = 1.0  # with no key expiring: the loop wakes this often anyway


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
        self.store = Store(limits, on_quit=self.stop, journal=journal, schedule=self._schedule)
        self.store_ident = f"{id(self.store):x}"
        self._handlers = {**self.store.handlers(session=lambda: self.current), "info": self.info}
        self.stats = CallStats(self._handlers)
        self._calls = self.stats.calls  # counted in dispatch, on every call
        listener = open_listener(address)
        super().__init__(listener, authkey, limits)
        bound = listener.getsockname()
        self.address: Address = bound if isinstance(bound, str) else (bound[0], bound[1])

    def serve_until_stopped(self) -> None:
        """Serve until quit, shutdown, stop() or close(), then stop gracefully."""
        raise_open_files_limit(self.limits.max_connections + self.limits.max_pending_handshakes)
        self.call_later(SWEEP_INTERVAL, self._sweep_expired)
        self.run()

    def _schedule(self, delay: float, callback: Callable[[], object]) -> Callable[[], None]:
        """The Store's timers (leases): the loop's own, or a thread's when asked from another thread (a commit's)."""
        if threading.get_ident() != self._thread_id:
            return thread_schedule(delay, callback)
        timer = self.call_later(delay, callback)
        return partial(self._cancel_timer, timer)

    def _sweep_expired(self) -> None:
        """Reclaim some expired keys and sample the call rate; again soon while keys have an expiry, else at the idle pace."""
        self.store.sweep()
        self.stats.sample()
        self.call_later(SWEEP_INTERVAL if self.store.expiring() else IDLE_SWEEP_INTERVAL, self._sweep_expired)

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
        method = ""
        try:
            ident, method, args, kwargs = wire.load_request(payload)
            function = self._handlers.get(method)
            if function is None or ident != self.store_ident:
                raise self._not_exposed(ident, method)
            self._calls[method] += 1
            result = function(*args, **kwargs) if kwargs else function(*args)
        except Exception as exc:
            self.stats.failed(method)
            return self.error_frame(exc)
        if type(result) is Deferred:
            result.add_done_callback(partial(self.stats.settled, method))
            return result
        return wire.return_frame(result)

    def info(self) -> dict[str, Any]:
        """What the server is doing: its own figures and the store's (the `info` operation)."""
        journal = self.store.journal
        return {
            "uptime_seconds": round(time.monotonic() - self.stats.started, 3), "version": VERSION,
            "protocol_version": wire.PROTOCOL_VERSION, "address": format_address(cast(Address, self.address)),
            "durable": journal is not IN_MEMORY, "fsync": getattr(journal, "fsync", None), "rss_bytes": resident_bytes(),
            "connected_clients": self.open, "max_connections": self.limits.max_connections,
            **self.store.info(), **self.stats.figures(),
        }

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


class CallStats:
    """Counters of the calls a server ran, per operation, since it started, and the rate over the last second or so."""

    def __init__(self, operations: Iterable[str]) -> None:
        self.calls: dict[str, int] = dict.fromkeys(operations, 0)
        self.errors: dict[str, int] = dict.fromkeys(operations, 0)
        self.started = time.monotonic()
        self._sampled_at, self._sampled_calls, self.rate = self.started, 0, 0.0

    def failed(self, method: str) -> None:
        """A call of method ended with an error."""
        if method in self.errors:
            self.errors[method] += 1

    def settled(self, method: str, deferred: Deferred) -> None:
        """A deferred call of method was decided."""
        if deferred.error is not None:
            self.failed(method)

    def sample(self) -> None:
        """Update the rate, at most once a second (the loop's sweep timer calls this)."""
        now = time.monotonic()
        if now - self._sampled_at >= 1.0:
            total = sum(self.calls.values())
            self.rate = (total - self._sampled_calls) / (now - self._sampled_at)
            self._sampled_at, self._sampled_calls = now, total

    def figures(self) -> dict[str, Any]:
        """operations and errors (the non-zero counts, by operation) and ops_per_second."""
        return {
            "operations": {name: count for name, count in self.calls.items() if count},
            "errors": {name: count for name, count in self.errors.items() if count},
            "ops_per_second": round(self.rate, 1),
        }


def resident_bytes() -> int:
    """This process's resident memory, from /proc where there is one, else its peak (getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


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
