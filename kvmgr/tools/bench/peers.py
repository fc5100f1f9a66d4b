"""Peer servers run by `python -m kvmgr.tools.bench --serve ROLE --address ADDRESS`: a stdlib SyncManager serving the
benchmark's dicts, and the bare multiprocessing.connection echo server (the connection floor)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from multiprocessing import AuthenticationError, connection
from multiprocessing.managers import DictProxy, SyncManager
from typing import cast

from kvmgr.config import Address, format_address, parse_address

DICT_NAMES = ("point_dict", "bulk_dict")


def stdlib_manager_class(shared: Mapping[str, dict] | None) -> type[SyncManager]:
    """A SyncManager with the benchmark's dicts registered (served from `shared` on the server side)."""

    class BenchManager(SyncManager):
        """SyncManager plus the benchmark's shared dicts."""

    for name in DICT_NAMES:
        source = None if shared is None else (lambda hosted=shared[name]: hosted)
        BenchManager.register(name, callable=source, proxytype=DictProxy)
    return BenchManager


def serve_stdlib(address: str, authkey: bytes) -> int:
    """Serve the benchmark dicts from a stdlib SyncManager server until terminated."""
    manager = stdlib_manager_class({name: {} for name in DICT_NAMES})(address=parse_address(address), authkey=authkey)
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


SERVE_ROLES = {"stdlib": serve_stdlib, "floor": serve_floor}
