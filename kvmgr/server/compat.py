"""The few multiprocessing.managers server calls kvmgr answers, so that a stdlib BaseManager client works.

A BaseManager client opens a connection per manager call and sends one request on it: `dummy` (connect),
`create` (get_store: the store's ident and exposed methods), `incref` and `decref` (its proxies), `shutdown`;
a proxy then sends `accept_connection` and its calls, ("#RETURN", x) or ("#ERROR", exc) each, on a connection
of its own. kvmgr's own client sends `open_store` instead: one round trip that opens the store on the connection.
There is one Store and it is never disposed of, so incref and decref only check the ident.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvmgr.config import Limits
from kvmgr.errors import ProtocolError
from kvmgr.protocol import wire

SERVING_CALLS = frozenset({"accept_connection", wire.OPEN_STORE})  # the connection goes on to serve the store's calls
ONE_SHOT_CALLS = frozenset({"dummy", "create", "incref", "decref", "shutdown"})  # answered, then the connection closes


class ManagerCalls:
    """The manager calls, each answering the first request of a connection (a mixin of the server)."""

    store_ident: str
    limits: Limits
    stop: Callable[[], None]  # shuts the server down (the event loop's)

    def manager_call(self, funcname: str, args: tuple, kwargs: dict) -> Any:
        """The result of the manager call funcname; ProtocolError for one kvmgr does not answer."""
        if funcname not in SERVING_CALLS and funcname not in ONE_SHOT_CALLS:
            raise ProtocolError(f"unknown server function {funcname!r}")
        return getattr(self, f"call_{funcname}")(*args, **kwargs)

    def call_dummy(self) -> None:
        """BaseManager.connect(): nothing to do."""

    def call_create(self, typeid: str, /, *args: Any, **kwargs: Any) -> tuple[str, tuple[str, ...]]:
        """get_store(): the store's ident and its exposed methods (there is one store: it is never created anew)."""
        if typeid != wire.TYPEID:
            raise ProtocolError(f"unknown type {typeid!r}: this server serves {wire.TYPEID!r} only")
        return self.store_ident, wire.EXPOSED

    def call_incref(self, ident: str) -> None:
        """A proxy of the store was made."""
        self._check_ident(ident)

    def call_decref(self, ident: str) -> None:
        """A proxy of the store went: the store stays all the same."""
        self._check_ident(ident)

    def call_shutdown(self) -> None:
        """The stdlib manager's shutdown: acknowledged, then the server stops like on quit."""
        self.stop()

    def call_accept_connection(self, name: str) -> None:
        """A proxy's connection: serve its calls from now on."""

    def call_open_store(self, version: int = 0) -> object:
        """The store's ident (from protocol version 1 on, with the limits a client must know); serve calls from now on."""
        if version >= 1:
            return {"ident": self.store_ident, "protocol": wire.PROTOCOL_VERSION, "max_request_bytes": self.limits.max_request_bytes}
        return self.store_ident

    def _check_ident(self, ident: str) -> None:
        if ident != self.store_ident:
            raise ProtocolError(f"no object {ident!r} on this server")
