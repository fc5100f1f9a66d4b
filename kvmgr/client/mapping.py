"""StoreMapping: a client seen as a collections.abc.MutableMapping, so code written for Manager().dict() runs unchanged."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from kvmgr.errors import KeyNotFound
from kvmgr.protocol.values import Value

if TYPE_CHECKING:
    from kvmgr.client.operations import Operations

_MISSING: Any = object()


class StoreMapping(MutableMapping[str, Value]):
    """The store as a dict: every method is one call (or one atomic call) on the client, nothing is cached.

    Iteration walks a snapshot of the keys (a page at a time), so keys added or removed meanwhile may or may
    not be seen, as with any live store. `update` is one atomic store_many; `setdefault` is built on `add` and
    `pop` on the store's atomic `pop`, so neither is a read followed by a write.
    """

    def __init__(self, client: Operations) -> None:
        self.client = client

    def __getitem__(self, key: str) -> Value:
        return self.client.get(key)

    def __setitem__(self, key: str, value: Value) -> None:
        self.client.store(key, value)

    def __delitem__(self, key: str) -> None:
        if not self.client.delete(key):
            raise KeyNotFound(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(key) and self.client.exists(key)

    def __iter__(self) -> Iterator[str]:
        return self.client.iter_keys()

    def __len__(self) -> int:
        return self.client.size()

    def get(self, key: str, default: Any = None) -> Any:
        """The value of key, or default when it is absent (one call)."""
        try:
            return self.client.get(key)
        except KeyNotFound:
            return default

    def update(self, other: Any = (), /, **pairs: Value) -> None:
        """Store every pair in one atomic store_many."""
        self.client.store_many(dict(other, **pairs))

    def setdefault(self, key: str, default: Value | None = None) -> Value:
        """The value of key; if absent, store default first (atomically: `add`, then read what is there)."""
        if default is None:
            raise TypeError("setdefault needs a default value: None is not a value kvmgr stores")
        while True:
            if self.client.add(key, default):
                return default
            try:
                return self.client.get(key)
            except KeyNotFound:
                continue  # removed between the add and the get: try again

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        """Remove key and return its value in one atomic step; default (or KeyNotFound) if absent."""
        if default is _MISSING:
            return self.client.pop(key)
        return self.client.pop(key, default)

    def __repr__(self) -> str:
        return f"<StoreMapping of {self.client.name!r}>"
