"""The server: the store, its journals, and the manager server that serves it over a socket.

`StoreManager(address, authkey).get_server().serve_forever()` serves a store as any BaseManager would;
`serve()` is what `kvmgr serve` runs.
"""

from kvmgr.server.manager import StoreManager, StoreServer, serve

__all__ = ["StoreManager", "StoreServer", "serve"]
