"""Store: the shared dict and the lock that serializes every operation on it. No sockets, no processes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping

from kvmgr.config import DEFAULT_LIMITS, RENDEZVOUS_TIMEOUT, Limits
from kvmgr.durable import SQLiteJournal
from kvmgr.errors import InvalidValue, KeyNotFound, KvmgrError
from kvmgr.validation import Value, check_key, check_key_list, check_mapping, check_rendezvous, check_value

QUIT_MESSAGE = "Server Quitting..!"


class Store:
    """A key-value map whose methods each run under one lock, so every operation is atomic."""

    def __init__(
        self, limits: Limits = DEFAULT_LIMITS, on_quit: Callable[[], None] = lambda: None, journal: SQLiteJournal | None = None,
    ) -> None:
        self._journal = journal
        self._closed = False
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
        if self._closed:
            raise KvmgrError("the server is shutting down: the write was not made")
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
        """Refuse further writes, commit what is pending and close durable storage, if any."""
        with self._lock:
            if not self._closed and self._journal is not None:
                self._journal.close()
            self._closed = True

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
