"""Store: the shared dict and the lock that serializes every operation on it. No sockets, no processes.

Every argument goes through kvmgr.protocol.validation first (and is used in the plain form it returns). Every change
goes through `_write`, which hands it to the store's journal (kvmgr.server.journal: in memory by default, SQLite in
durable mode) and applies it to the dict. A deferred journal (batch mode) commits a write after it is applied;
should the commit fail, the journal calls `_roll_back`, which undoes it.

Calls that answer later (a write waiting for its group commit, a rendezvous waiting for its parties) have two
faces: `start_<operation>` returns the answer or a kvmgr.server.deferred.Deferred of it, and never blocks (the
server's loop calls these, see `handlers`); the operation itself (`store`, `rendezvous`, ...) waits for the answer,
for callers in this process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, TypeVar

from kvmgr.config import COMMIT_TIMEOUT, DEFAULT_LIMITS, RENDEZVOUS_TIMEOUT, Limits
from kvmgr.errors import InvalidValue, KeyNotFound, KvmgrError, OutcomeUnknown
from kvmgr.protocol.operations import NAMES
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
from kvmgr.server.deferred import Deferred, settle
from kvmgr.server.journal import IN_MEMORY, Changes, Commit, Journal

QUIT_MESSAGE = "Server Quitting..!"
T = TypeVar("T")


class Round:
    """The parties waiting in one rendezvous, in order of arrival."""

    __slots__ = ("arrivals", "parties")

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrivals: list[Deferred] = []


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
        self._rounds: dict[str, Round] = {}  # open rendezvous by name; a round goes once complete or empty
        self._rounds_lock = threading.Lock()

    def handlers(self) -> dict[str, Callable[..., Any]]:
        """What the server calls for each operation: it returns the answer, or a Deferred of it, and never blocks."""
        return {name: getattr(self, f"start_{name}", None) or getattr(self, name) for name in NAMES}

    def store(self, key: str, value: Value) -> str:
        """Set key to value; return "saved" if the key was new, "updated" if it overwrote a value."""
        answer: str = settle(self.start_store(key, value))
        return answer

    def start_store(self, key: str, value: Value) -> str | Deferred:
        """store, answered once durable."""
        key, value = check_key(key, self._limits), check_value(value, self._limits)
        with self._lock:
            existed = key in self._data
            commit = self._write({key: value})
        return _once_committed(commit, "updated" if existed else "saved")

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
        answer: bool = settle(self.start_delete(key))
        return answer

    def start_delete(self, key: str) -> bool | Deferred:
        """delete, answered once durable."""
        key = check_key(key, self._limits)
        with self._lock:
            if key not in self._data:
                return False
            commit = self._write({key: None})
        return _once_committed(commit, True)

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
        answer: bool = settle(self.start_cas(key, expected, value))
        return answer

    def start_cas(self, key: str, expected: Value | None, value: Value) -> bool | Deferred:
        """cas, answered once durable."""
        key, value = check_key(key, self._limits), check_value(value, self._limits)
        expected = check_expected(expected, self._limits)
        with self._lock:
            if self._data.get(key) != expected:
                return False
            commit = self._write({key: value})
        return _once_committed(commit, True)

    def get_many(self, keys: Iterable[str]) -> dict[str, Value]:
        """The values of those keys that are present, in one atomic step."""
        keys = check_key_list(keys, self._limits)
        with self._lock:
            data = self._data
            return {key: data[key] for key in keys if key in data}

    def store_many(self, mapping: Mapping[str, Value]) -> dict[str, str]:
        """Store every pair in one atomic step; return key -> "saved"/"updated"."""
        answer: dict[str, str] = settle(self.start_store_many(mapping))
        return answer

    def start_store_many(self, mapping: Mapping[str, Value]) -> dict[str, str] | Deferred:
        """store_many, answered once durable."""
        mapping = check_mapping(mapping, self._limits)
        if not mapping:
            return {}  # nothing to write, nothing to wait for
        with self._lock:
            data = self._data
            outcome = {key: "updated" if key in data else "saved" for key in mapping}
            commit = self._write(mapping)
        return _once_committed(commit, outcome)

    def _write(self, changes: Changes) -> Commit:
        """The one path every change takes (call under the lock): journal it, then apply it. None deletes.

        Returns the journal's commit: None once the change is durable (at once in memory mode), else a Deferred
        resolved when it is, failed with KvmgrError if its commit failed.
        """
        if self._closed:
            raise KvmgrError("the server is shutting down: the write was not made")
        data = self._data
        commit = self._journal.append(changes, data)
        for key, value in changes.items():
            if value is None:
                del data[key]
            else:
                data[key] = value
        return commit

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
        answer: int = settle(self.start_rendezvous(name, parties, timeout))
        return answer

    def start_rendezvous(self, name: str, parties: int, timeout: float | None = None) -> int | Deferred:
        """rendezvous: the last party's index at once, or a Deferred of this party's index (arrival order).

        A party whose call is cancelled (timed out, or its connection closed) leaves: a later arrival does not count it.
        """
        name, parties, given = check_rendezvous(name, parties, timeout)
        wait = RENDEZVOUS_TIMEOUT if given is None else min(given, RENDEZVOUS_TIMEOUT)
        arrival = Deferred(wait, KvmgrError(f"rendezvous {name!r}: not all {parties} parties arrived within {wait:g}s"))
        with self._rounds_lock:
            waiting = self._rounds.get(name)
            if waiting is None:
                waiting = self._rounds[name] = Round(parties)
            elif waiting.parties != parties:
                raise InvalidValue(f"rendezvous {name!r} was opened for {waiting.parties} parties, not {parties}")
            if len(waiting.arrivals) + 1 < parties:
                waiting.arrivals.append(arrival)
                arrival.on_cancel(partial(self._leave, name, waiting, arrival))
                return arrival
            del self._rounds[name]
            released, waiting.arrivals = waiting.arrivals, []
        for index, party in enumerate(released):
            party.resolve(index)
        return parties - 1

    def _leave(self, name: str, waiting: Round, arrival: Deferred) -> None:
        """A cancelled party leaves its round; the round goes when nobody is left in it."""
        with self._rounds_lock:
            if arrival in waiting.arrivals:
                waiting.arrivals.remove(arrival)
            if not waiting.arrivals and self._rounds.get(name) is waiting:
                del self._rounds[name]

    def open_rounds(self) -> int:
        """How many rendezvous have parties waiting."""
        with self._rounds_lock:
            return len(self._rounds)


def _once_committed(commit: Commit, answer: T) -> T | Deferred:
    """answer itself once the write is durable; else a Deferred of it, resolved when its commit is."""
    if commit is None:
        return answer
    answered = commit.then(lambda _: answer, COMMIT_TIMEOUT, OutcomeUnknown(
        f"durable storage did not commit within {COMMIT_TIMEOUT:g}s: the write may or may not be made"))
    answered.stop_error = OutcomeUnknown("the server stopped before the write's commit was confirmed: it may or may not be made")
    return answered
