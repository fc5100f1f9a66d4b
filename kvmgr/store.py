"""Store: the shared dict and the lock that serializes every operation on it. No sockets, no processes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping

from kvmgr.config import DEFAULT_LIMITS, Limits
from kvmgr.durable import SQLiteJournal
from kvmgr.errors import InvalidKey, InvalidValue, KeyNotFound, KvmgrError

Value = str | bytes
QUIT_MESSAGE = "Server Quitting..!"
RENDEZVOUS_TIMEOUT = 30.0


class Store:
    """A key-value map whose methods each run under one lock, so every operation is atomic."""

    def __init__(
        self, limits: Limits = DEFAULT_LIMITS, on_quit: Callable[[], None] = lambda: None, journal: SQLiteJournal | None = None,
    ) -> None:
        self._journal = journal
        self._data: dict[str, Value] = journal.load() if journal is not None else {}
        self._lock = threading.Lock()
        self._limits = limits
        self._on_quit = on_quit
        self._barriers: dict[str, threading.Barrier] = {}
        self._barriers_lock = threading.Lock()

    def store(self, key: str, value: Value) -> str:
        """Set key to value; return "saved" if the key was new, "updated" if it overwrote a value."""
        check_key(key, self._limits)
        check_value(value, self._limits)
        with self._lock:
            existed = key in self._data
            ticket = self._write({key: value})
        self._wait(ticket)
        return "updated" if existed else "saved"

    def get(self, key: str) -> Value:
        """Return the value of key; raise KeyNotFound if it is absent."""
        check_key(key, self._limits)
        with self._lock:
            try:
                return self._data[key]
            except KeyError:
                raise KeyNotFound(key) from None

    def delete(self, key: str) -> bool:
        """Remove key; return True if it existed."""
        check_key(key, self._limits)
        with self._lock:
            if key not in self._data:
                return False
            ticket = self._write({key: None})
        self._wait(ticket)
        return True

    def exists(self, key: str) -> bool:
        """True if key is in the store."""
        check_key(key, self._limits)
        with self._lock:
            return key in self._data

    def keys(self) -> list[str]:
        """Every key, sorted."""
        with self._lock:
            return sorted(self._data)

    def size(self) -> int:
        """How many keys the store holds."""
        with self._lock:
            return len(self._data)

    def cas(self, key: str, expected: Value | None, value: Value) -> bool:
        """Set key to value only if it currently holds expected (None: only if absent); True if it swapped."""
        check_key(key, self._limits)
        if expected is not None:
            check_value(expected, self._limits)
        check_value(value, self._limits)
        with self._lock:
            if self._data.get(key) != expected:
                return False
            ticket = self._write({key: value})
        self._wait(ticket)
        return True

    def get_many(self, keys: Iterable[str]) -> dict[str, Value]:
        """The values of those keys that are present, in one atomic step."""
        keys = check_key_list(keys, self._limits)
        with self._lock:
            data = self._data
            return {key: data[key] for key in keys if key in data}

    def store_many(self, mapping: Mapping[str, Value]) -> dict[str, str]:
        """Store every pair in one atomic step; return key -> "saved"/"updated"."""
        check_mapping(mapping, self._limits)
        with self._lock:
            data = self._data
            outcome = {key: "updated" if key in data else "saved" for key in mapping}
            ticket = self._write(mapping)
        self._wait(ticket)
        return outcome

    def _write(self, changes: Mapping[str, Value | None]) -> int:
        """The one path every change takes (call under the lock): journal it, then apply it. None deletes."""
        ticket = self._journal.append(changes) if self._journal is not None else 0
        data = self._data
        for key, value in changes.items():
            if value is None:
                del data[key]
            else:
                data[key] = value
        return ticket

    def _wait(self, ticket: int) -> None:
        """Return once a change is durable (at once in memory mode)."""
        if ticket:
            self._journal.wait(ticket)

    def close(self) -> None:
        """Commit what is pending and close durable storage, if any."""
        with self._lock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None

    def quit(self) -> str:
        """Ask the server to shut down gracefully; return the confirmation message."""
        self._on_quit()
        return QUIT_MESSAGE

    def rendezvous(self, name: str, parties: int, timeout: float = RENDEZVOUS_TIMEOUT) -> int:
        """Wait until `parties` callers have arrived under `name`, then release them all at once.

        Used by the driver to fire concurrent steps at the same moment; it never holds the data lock.
        """
        check_rendezvous(name, parties)
        barrier = self._barrier(name, parties)
        try:
            return barrier.wait(timeout=min(float(timeout), RENDEZVOUS_TIMEOUT))
        except threading.BrokenBarrierError:
            raise KvmgrError(f"rendezvous {name!r}: not all {parties} parties arrived within {timeout}s") from None

    def _barrier(self, name: str, parties: int) -> threading.Barrier:
        with self._barriers_lock:
            barrier = self._barriers.get(name)
            if barrier is None or barrier.broken:
                barrier = self._barriers[name] = threading.Barrier(parties)
            if barrier.parties != parties:
                raise InvalidValue(f"rendezvous {name!r} was opened for {barrier.parties} parties, not {parties}")
            return barrier


def check_key(key: object, limits: Limits = DEFAULT_LIMITS) -> None:
    """InvalidKey unless key is a non-empty str within the size limit."""
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"key must be a non-empty str, not {_describe(key)}")
    limit = limits.max_key_bytes
    if len(key) * 4 > limit and len(key.encode("utf-8", "surrogatepass")) > limit:  # UTF-8 takes 1 to 4 bytes a character
        raise InvalidKey(f"key is longer than {limit} bytes")


def check_value(value: object, limits: Limits = DEFAULT_LIMITS) -> None:
    """InvalidValue unless value is str or bytes within the size limit."""
    limit = limits.max_value_bytes
    if isinstance(value, str):
        size = len(value) if len(value) * 4 <= limit else len(value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, bytes):
        size = len(value)
    else:
        raise InvalidValue(f"value must be str or bytes, not {_describe(value)}")
    if size > limit:
        raise InvalidValue(f"value is larger than {limit} bytes")


def check_key_list(keys: object, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """The keys as a list; InvalidKey unless it is a list of valid keys."""
    if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
        raise InvalidKey(f"get_many takes a list of keys, not {_describe(keys)}")
    keys = list(keys)
    for key in keys:
        check_key(key, limits)
    return keys


def check_mapping(mapping: object, limits: Limits = DEFAULT_LIMITS) -> None:
    """InvalidKey/InvalidValue unless store_many got a dict of valid keys and values."""
    if not isinstance(mapping, Mapping):
        raise InvalidValue(f"store_many takes a dict of key -> value, not {type(mapping).__name__}")
    for key, value in mapping.items():
        check_key(key, limits)
        check_value(value, limits)


def check_rendezvous(name: object, parties: object) -> None:
    """InvalidValue unless name is a str and parties an int >= 1."""
    if not isinstance(name, str) or not isinstance(parties, int) or parties < 1:
        raise InvalidValue("rendezvous takes a name (str) and a number of parties (int >= 1)")


def _describe(thing: object) -> str:
    if isinstance(thing, str):
        return "an empty str"
    return type(thing).__name__
