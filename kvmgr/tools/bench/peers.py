"""Peer servers run by `python -m kvmgr.tools.bench --serve ROLE --address ADDRESS`: a stdlib SyncManager serving the
benchmark's dicts, the bare multiprocessing.connection echo server (the connection floor), and the reference
server model: one thread, one selectors loop, a dict (the selectors floor)."""

from __future__ import annotations

import os
import pickle
import queue
import selectors
import socket
import threading
from collections.abc import Mapping
from multiprocessing import AuthenticationError, connection
from multiprocessing.managers import AcquirerProxy, AutoProxy, DictProxy, SyncManager  # type: ignore[attr-defined]  # not in typeshed
from typing import Any, cast

from kvmgr.config import HANDSHAKE_TIMEOUT, READ_SIZE, Address, address_family, format_address, parse_address
from kvmgr.errors import ProtocolError
from kvmgr.protocol.wire import bound_blocking_calls, frame, message_bounds

DICT_NAMES = ("point_dict", "bulk_dict")
LOCK_NAME = "counter_lock"  # the one Lock every client of the incr row takes around its get+set
NAMED_LOCK = "named_lock"  # named_lock(name): the lock row's Lock of that name, created on first use
NAMED_QUEUE = "named_queue"  # named_queue(name): the queue row's Queue of that name, created on first use
MAX_MESSAGE = 1 << 30


def stdlib_manager_class(shared: Mapping[str, Any] | None) -> type[SyncManager]:
    """A SyncManager with the benchmark's dicts and counter lock registered (served from `shared` on the server side)."""

    class BenchManager(SyncManager):
        """SyncManager plus the benchmark's shared dicts, the lock of its incr row and the named locks and queues."""

    for name, proxytype in [*((name, DictProxy) for name in DICT_NAMES), (LOCK_NAME, AcquirerProxy)]:
        source = None if shared is None else (lambda hosted=shared[name]: hosted)
        BenchManager.register(name, callable=source, proxytype=proxytype)
    for name, proxytype, make in ((NAMED_LOCK, AcquirerProxy, threading.Lock), (NAMED_QUEUE, AutoProxy, queue.Queue)):
        named = None if shared is None else (lambda key, hosted=shared[name], make=make: hosted.setdefault(key, make()))
        BenchManager.register(name, callable=named, proxytype=proxytype)
    return BenchManager


def serve_stdlib(address: str, authkey: bytes) -> int:
    """Serve the benchmark dicts, counter lock and named locks and queues from a stdlib SyncManager server until terminated."""
    shared: dict[str, Any] = {**{name: {} for name in (*DICT_NAMES, NAMED_LOCK, NAMED_QUEUE)}, LOCK_NAME: threading.Lock()}
    manager = stdlib_manager_class(shared)(address=parse_address(address), authkey=authkey)
    server = manager.get_server()
    print(f"ready {format_address(cast(Address, server.address))}", flush=True)
    server.serve_forever()
    return 0


def serve_floor(address: str, authkey: bytes) -> int:
    """Echo every object received on every connection until terminated."""
    listener = connection.Listener(parse_address(address), authkey=authkey)
    print(f"ready {format_address(listener.address)}", flush=True)
    while True:
        try:
            conn = listener.accept()
        except (OSError, EOFError, AuthenticationError):
            continue
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


def echo(conn: connection.Connection) -> None:
    """Send back whatever arrives until the peer leaves."""
    with conn:
        while True:
            try:
                conn.send(conn.recv())
            except (EOFError, OSError):
                return


def serve_selectors_floor(address: str, authkey: bytes) -> int:
    """The reference peer: one thread, one selectors loop; each request is a pickled (op, key, value) applied to a dict."""
    listener = listen(parse_address(address))
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    data: dict[str, Any] = {}
    print(f"ready {format_address(listener.getsockname())}", flush=True)
    while True:
        for key, _ in selector.select():
            if key.fileobj is listener:
                accept_authenticated(listener, authkey, selector)
            else:
                answer_requests(cast(socket.socket, key.fileobj), key.data, data, selector)


def listen(address: Address) -> socket.socket:
    """A listening socket on address (TCP or a Unix socket path)."""
    listener = socket.socket(address_family(address), socket.SOCK_STREAM)
    if listener.family != socket.AF_UNIX:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(address)
    listener.listen(socket.SOMAXCONN)
    return listener


def accept_authenticated(listener: socket.socket, authkey: bytes, selector: selectors.BaseSelector) -> None:
    """Accept one connection, run the multiprocessing.connection handshake on it (blocking, bounded), then watch it."""
    try:
        sock, _ = listener.accept()
    except OSError:
        return
    bound_blocking_calls(sock, HANDSHAKE_TIMEOUT)  # also bounds every later write: a client that stops reading is dropped
    handshake = connection.Connection(os.dup(sock.fileno()))  # the stdlib's challenge functions want a Connection
    try:
        connection.deliver_challenge(handshake, authkey)
        connection.answer_challenge(handshake, authkey)
    except (OSError, EOFError, AuthenticationError):
        sock.close()
        return
    finally:
        handshake.close()
    selector.register(sock, selectors.EVENT_READ, bytearray())


def answer_requests(sock: socket.socket, buffer: bytearray, data: dict[str, Any], selector: selectors.BaseSelector) -> None:
    """Read what a readable connection has, answer every whole request in it with one write; close it on EOF or error."""
    try:
        chunk = sock.recv(READ_SIZE)
        buffer += chunk
        replies = []
        while (bounds := message_bounds(buffer, MAX_MESSAGE)) is not None and len(buffer) >= bounds[1]:
            op, key, value = pickle.loads(buffer[bounds[0]:bounds[1]])
            del buffer[:bounds[1]]
            replies.append(frame(pickle.dumps(apply(data, op, key, value), pickle.HIGHEST_PROTOCOL)))
        if replies:
            sock.sendall(b"".join(replies))
    except (OSError, EOFError, ValueError, pickle.UnpicklingError, ProtocolError):  # the peer left or sent garbage
        chunk = b""
    if not chunk:
        selector.unregister(sock)
        sock.close()


def apply(data: dict[str, Any], op: str, key: Any, value: Any) -> Any:
    """get returns the key's value (None if absent), store sets it, load adds a whole mapping (passed as key)."""
    if op == "get":
        return data.get(key)
    if op == "store":
        data[key] = value
        return True
    data.update(key)
    return len(data)


SERVE_ROLES = {"stdlib": serve_stdlib, "floor": serve_floor, "selectors-floor": serve_selectors_floor}
