"""Store: the shared dict and the lock that serializes every operation on it. No sockets, no processes.

Every argument goes through kvmgr.protocol.validation first (and is used in the plain form it returns). Every change
goes through `_write`, which hands it to the store's journal (kvmgr.server.journal: in memory by default, SQLite in
durable mode) and applies it to the dict. A deferred journal (batch mode) commits a write after it is applied;
should the commit fail, the journal calls `_roll_back`, which undoes it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping

from kvmgr.config import DEFAULT_LIMITS, RENDEZVOUS_TIMEOUT, Limits
from kvmgr.errors import InvalidValue, KeyNotFound, KvmgrError
from kvmgr.protocol.validation import (
    Value,
    check_expected,
    check_key,
    check_key_list,
    check_keys_page,
    check_mapping,
    check_rendezvous,
    check_value,
    page_of_keys,
)
from kvmgr.server.journal import IN_MEMORY, Changes, Journal, Wait

QUIT_MESSAGE = "Server Quitting..!"


class Store:
    """A key-value map whose methods each run under one lock, so every operation is atomic."""

    def __init__(
        self, limits: Limits = DEFAULT_LIMITS, on_quit: Callable[[], None] = lambda: None, journal: Journal = IN_MEMORY,
    ) -> None:
        self._journal = journal
        self._closed = False
        self._data: dict[str, Value] = journal.load()
        self._lock = threading.Lock()
        journal.on_failure(self._roll_back)
        self._limits = limits
        self._on_quit = on_quit
        self._barriers: dict[str, threading.Barrier] = {}
        self._barriers_lock = threading.Lock()

    def store(self, key: str, value: Value) -> str:
        """Set key to value; return "saved" if the key was new, "updated" if it overwrote a value."""
        key, value = check_key(key, self._limits), check_value(value, self._limits)
        with self._lock:
            existed = key in self._data
            wait = self._write({key: value})
        wait()
        return "updated" if existed else "saved"

    def get(self, key: str) -> Value:
        """Return the value of key; raise KeyNotFound if it is absent."""
        key = check_key(key, self._limits)
        with self._lock:
            try:
                return self._data[key]
            except KeyError:
                raise KeyNotFound(key) from None

    def delete(self, key: str) -> bool:
        """Remove key; return True if it existed."""
        key = check_key(key, self._limits)
        with self._lock:
            if key not in self._data:
                return False
            wait = self._write({key: None})
        wait()
        return True

    def exists(self, key: str) -> bool:
        """True if key is in the store."""
        key = check_key(key, self._limits)
        with self._lock:
            return key in self._data

    def keys(self, prefix: str | None = None, limit: int | None = None, after: str | None = None) -> list[str]:
        """The keys in sorted order: those starting with prefix and after `after`, at most `limit` of them."""
        prefix, limit, after = check_keys_page(prefix, limit, after)
        with self._lock:
            keys = list(self._data)
        return page_of_keys(keys, prefix, limit, after)

    def size(self) -> int:
        """How many keys the store holds."""
        with self._lock:
            return len(self._data)

    def cas(self, key: str, expected: Value | None, value: Value) -> bool:
        """Set key to value only if it currently holds expected (None: only if absent); True if it swapped."""
        key, value = check_key(key, self._limits), check_value(value, self._limits)
        expected = check_expected(expected, self._limits)
        with self._lock:
            if self._data.get(key) != expected:
                return False
            wait = self._write({key: value})
        wait()
        return True

    def get_many(self, keys: Iterable[str]) -> dict[str, Value]:
        """The values of those keys that are present, in one atomic step."""
        keys = check_key_list(keys, self._limits)
        with self._lock:
            data = self._data
            return {key: data[key] for key in keys if key in data}

    def store_many(self, mapping: Mapping[str, Value]) -> dict[str, str]:
        """Store every pair in one atomic step; return key -> "saved"/"updated"."""
        mapping = check_mapping(mapping, self._limits)
        if not mapping:
            return {}  # nothing to write, nothing to wait for
        with self._lock:
            data = self._data
            outcome = {key: "updated" if key in data else "saved" for key in mapping}
            wait = self._write(mapping)
        wait()
        return outcome

    def _write(self, changes: Changes) -> Wait:
        """The one path every change takes (call under the lock): journal it, then apply it. None deletes.

        Returns the journal's wait: call it outside the lock; it returns once the change is durable
        (at once in memory mode) and raises KvmgrError if its commit failed.
        """
        if self._closed:
            raise KvmgrError("the server is shutting down: the write was not made")
        data = self._data
        wait = self._journal.append(changes, data)
        for key, value in changes.items():
            if value is None:
                del data[key]
            else:
                data[key] = value
        return wait

    def _roll_back(self, failure: BaseException) -> None:
        """After a failed group commit, undo every write not committed, newest first (the journal's committer calls this)."""
        with self._lock:
            data = self._data
            for key, previous in reversed(self._journal.fail_uncommitted(failure)):
                if previous is None:
                    data.pop(key, None)
                else:
                    data[key] = previous

    def close(self) -> None:
        """Refuse further writes, commit what is pending and close the journal."""
        with self._lock:
            first = not self._closed
            self._closed = True
        if first:
            self._journal.close()  # not under the lock: a commit failing now rolls back under it

    def quit(self) -> str:
        """Ask the server to shut down gracefully; return the confirmation message."""
        self._on_quit()
        return QUIT_MESSAGE

    def rendezvous(self, name: str, parties: int, timeout: float | None = None) -> int:
        """Wait until `parties` callers have arrived under `name`, then release them all at once.

        Used by the driver to fire concurrent steps at the same moment; it never holds the data lock.
        It waits at most `timeout` seconds (None: RENDEZVOUS_TIMEOUT), and never longer than that.
        """
        name, parties, given = check_rendezvous(name, parties, timeout)
        wait = RENDEZVOUS_TIMEOUT if given is None else min(given, RENDEZVOUS_TIMEOUT)
        barrier = self._barrier(name, parties)
        try:
            return barrier.wait(timeout=wait)
        except threading.BrokenBarrierError:
            raise KvmgrError(f"rendezvous {name!r}: not all {parties} parties arrived within {wait:g}s") from None

    def _barrier(self, name: str, parties: int) -> threading.Barrier:
        with self._barriers_lock:
            barrier = self._barriers.get(name)
            if barrier is None or barrier.broken:
                barrier = self._barriers[name] = threading.Barrier(parties)
            if barrier.parties != parties:
                raise InvalidValue(f"rendezvous {name!r} was opened for {barrier.parties} parties, not {parties}")
            return barrier
