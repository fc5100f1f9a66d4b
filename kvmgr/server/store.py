"""Store: the shared dict and the lock that serializes every operation on it. No sockets, no processes.

Every argument goes through kvmgr.protocol.validation first (and is used in the plain form it returns). Every change
goes through `_write`, which hands it to the store's journal (kvmgr.server.journal: in memory by default, SQLite in
durable mode) and applies it to the dict. A deferred journal (batch mode) commits a write after it is applied;
should the commit fail, the journal calls `_roll_back`, which undoes it.

Calls that answer later (a write waiting for its group commit, a rendezvous waiting for its parties) have two
faces: `start_<operation>` returns the answer or a kvmgr.server.deferred.Deferred of it, and never blocks (the
server's loop calls these, see `handlers`); the operation itself (`store`, `rendezvous`, ...) waits for the answer,
for callers in this process (`waits_for_answer` makes one face from the other).

Expiry. A key given a ttl has a deadline on the wall clock (time.time(), as Redis keeps it, so that durable mode
can honour it after a restart). An expired key is gone at once for every operation: each operation on a key
first drops it if its deadline has passed (`_drop_if_expired`), and `size`/`keys` first reclaim every key due.
The rest is reclaimed by `sweep`, which the server's loop runs every SWEEP_INTERVAL and which does at most
SWEEP_BUDGET keys each time, so a million keys expiring together never stall other clients. Reclaiming an
expired key is not journaled: the journal forgets expired rows when it loads.
"""

from __future__ import annotations

import functools
import heapq
import inspect
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, ParamSpec, TypeVar

from kvmgr.config import COMMIT_TIMEOUT, DEFAULT_LIMITS, MAX_TOMBSTONES, RENDEZVOUS_TIMEOUT, SWEEP_BUDGET, Limits
from kvmgr.errors import InvalidValue, KeyNotFound, KvmgrError, OutcomeUnknown, ServerUnavailable, WaitTimeout, WrongType
from kvmgr.protocol.operations import NAMES
from kvmgr.protocol.validation import (
    check_counter,
    check_delta,
    check_expected,
    check_key,
    check_key_list,
    check_keys_page,
    check_lease,
    check_mapping,
    check_name,
    check_rendezvous,
    check_ttl,
    check_value,
    check_wait,
    page_of_keys,
    ttl_milliseconds,
)
from kvmgr.protocol.values import Number, Value, encoded_size, is_number, same_value
from kvmgr.server.coordination import Locks, Queues, Schedule, Session, blocking_wait, thread_schedule
from kvmgr.server.deferred import Deferred, settle
from kvmgr.server.journal import IN_MEMORY, Change, Changes, Commit, Entry, Journal

QUIT_MESSAGE = "Server Quitting..!"
T = TypeVar("T")
P = ParamSpec("P")


def waits_for_answer(start: Callable[P, Any]) -> Callable[P, Any]:
    """The operation for callers in this process, made from its start_ face: it waits for a Deferred answer."""

    @functools.wraps(start)
    def operation(*args: P.args, **kwargs: P.kwargs) -> Any:
        return settle(start(*args, **kwargs))

    operation.__name__ = start.__name__.removeprefix("start_")
    return operation


def _with_session(handler: Callable[..., Any], session: Callable[[], Session | None], *args: Any) -> Any:
    """Call a handler that needs to know which connection its call came on."""
    return handler(*args, session=session())


def deadline_after(ttl: float | None) -> float | None:
    """The wall-clock deadline of a ttl, in whole milliseconds (as Redis keeps it); None for None."""
    return None if ttl is None else time.time() + ttl_milliseconds(ttl) / 1000


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
        schedule: Schedule = thread_schedule,
    ) -> None:
        self.journal = self._journal = journal
        self._closed = False
        loaded, self._revision = journal.load()
        self._data: dict[str, Value] = {key: value for key, (value, _, _) in loaded.items()}
        self._expiry: dict[str, float] = {key: expires for key, (_, expires, _) in loaded.items() if expires is not None}
        self._deadlines: list[tuple[float, str]] = [(expires, key) for key, expires in self._expiry.items()]  # a heap
        heapq.heapify(self._deadlines)
        self._versions: dict[str, int] = {key: version for key, (_, _, version) in loaded.items()}  # deleted keys too
        self._version_floor = self._revision  # the version of an absent key the store no longer remembers
        self._watchers: dict[str, list[Deferred]] = {}
        self._schedule = schedule
        self.locks = Locks(schedule, self._next_token)
        self.queues = Queues()
        self._lock = threading.Lock()
        journal.on_failure(self._roll_back)
        self._limits = limits
        self._on_quit = on_quit
        self._rounds: dict[str, Round] = {}  # open rendezvous by name; a round goes once complete or empty
        self._rounds_lock = threading.Lock()

    def handlers(self, session: Callable[[], Session | None] = lambda: None) -> dict[str, Callable[..., Any]]:
        """What the server calls for each operation: it returns the answer, or a Deferred of it, and never blocks.

        An operation that takes a session (a lock's) is given `session()`: the connection its call came on.
        """
        handlers = {name: getattr(self, f"start_{name}", None) or getattr(self, name) for name in NAMES}
        for name, handler in handlers.items():
            if "session" in inspect.signature(handler).parameters:
                handlers[name] = partial(_with_session, handler, session)
        return handlers

    def start_store(self, key: str, value: Value, ttl: float | None = None) -> str | Deferred:
        """Set key (expiring after ttl seconds, if given); "saved" if the key was new, "updated" if it overwrote a value."""
        key, value = check_key(key, self._limits), check_value(value, self._limits)
        deadline = None if ttl is None else deadline_after(check_ttl(ttl))
        with self._lock:
            if self._expiry:
                self._drop_if_expired(key)
            answer = "updated" if key in self._data else "saved"
            commit = self._write({key: (value, deadline)})
        return answer if commit is None else _once_committed(commit, answer)

    def get(self, key: str) -> Value:
        """Return the value of key; raise KeyNotFound if it is absent."""
        key = check_key(key, self._limits)
        with self._lock:
            if self._expiry:
                self._drop_if_expired(key)
            try:
                return self._data[key]
            except KeyError:
                raise KeyNotFound(key) from None

    def start_delete(self, key: str) -> bool | Deferred:
        """Remove key; True if it existed."""
        key = check_key(key, self._limits)
        with self._lock:
            if not self._present(key):
                return False
            commit = self._write({key: None})
        return _once_committed(commit, True)

    def exists(self, key: str) -> bool:
        """True if key is in the store."""
        key = check_key(key, self._limits)
        with self._lock:
            return self._present(key)

    def keys(self, prefix: str | None = None, limit: int | None = None, after: str | None = None) -> list[str]:
        """The keys in sorted order: those starting with prefix and after `after`, at most `limit` of them."""
        prefix, limit, after = check_keys_page(prefix, limit, after)
        with self._lock:
            self._reclaim_due(len(self._deadlines))
            keys = list(self._data)
        return page_of_keys(keys, prefix, limit, after)

    def size(self) -> int:
        """How many keys the store holds."""
        with self._lock:
            self._reclaim_due(len(self._deadlines))
            return len(self._data)

    def start_cas(self, key: str, expected: Value | None, value: Value) -> bool | Deferred:
        """Set key to value only if it currently holds expected (None: only if absent); True if it swapped.

        Values compare strictly (kvmgr.protocol.values.same_value): 1, 1.0 and True are different values.
        """
        key, value = check_key(key, self._limits), check_value(value, self._limits)
        expected = check_expected(expected, self._limits)
        with self._lock:
            current = self._data.get(key) if self._present(key) else None
            if not ((current is None and expected is None) or same_value(current, expected)):
                return False
            commit = self._write({key: (value, None)})
        return _once_committed(commit, True)

    def get_many(self, keys: Iterable[str]) -> dict[str, Value]:
        """The values of those keys that are present, in one atomic step."""
        keys = check_key_list(keys, self._limits)
        with self._lock:
            if self._expiry:
                for key in keys:
                    self._drop_if_expired(key)
            data = self._data
            return {key: data[key] for key in keys if key in data}

    def start_store_many(self, mapping: Mapping[str, Value]) -> dict[str, str] | Deferred:
        """Store every pair in one atomic step; return key -> "saved"/"updated"."""
        mapping = check_mapping(mapping, self._limits)
        if not mapping:
            return {}  # nothing to write, nothing to wait for
        with self._lock:
            outcome = {key: "updated" if self._present(key) else "saved" for key in mapping}
            commit = self._write({key: (value, None) for key, value in mapping.items()})
        return _once_committed(commit, outcome)

    def start_incr(self, key: str, by: Number = 1) -> Number | Deferred:
        """Add by to the number at key (absent: 0) in one step, keeping its expiry; the new number.

        WrongType if key holds anything but an int or float (a bool is not a number); InvalidValue if the
        result is not finite or larger than the value limit. Either way nothing changes.
        """
        key, by = check_key(key, self._limits), check_delta(by)
        with self._lock:
            current = self._data.get(key, 0) if self._present(key) else 0
            if not is_number(current):
                raise WrongType(f"key {key!r} holds a {type(current).__name__}, not a number: incr/decr need an int or a float")
            new = current + by  # type: ignore[operator]
            self._check_number(new)
            commit = self._write({key: (new, self._expiry.get(key))})
        return _once_committed(commit, new)

    def start_decr(self, key: str, by: Number = 1) -> Number | Deferred:
        """Subtract by from the number at key (absent: 0) in one step; the new number (errors as incr)."""
        return self.start_incr(key, -check_delta(by))

    def start_add(self, key: str, value: Value, ttl: float | None = None) -> bool | Deferred:
        """Store value only if key is absent (expiring after ttl seconds, if given); True if it stored."""
        key, value, ttl = check_key(key, self._limits), check_value(value, self._limits), check_ttl(ttl)
        with self._lock:
            if self._present(key):
                return False
            commit = self._write({key: (value, deadline_after(ttl))})
        return _once_committed(commit, True)

    def start_pop(self, key: str) -> Value | Deferred:
        """Remove key and return its value in one step; KeyNotFound if it is absent."""
        key = check_key(key, self._limits)
        with self._lock:
            if not self._present(key):
                raise KeyNotFound(key)
            value = self._data[key]
            commit = self._write({key: None})
        return _once_committed(commit, value)

    def start_expire(self, key: str, ttl: float) -> bool | Deferred:
        """Make key expire ttl seconds from now; False if it is absent."""
        key, seconds = check_key(key, self._limits), check_ttl(ttl)
        if seconds is None:
            raise InvalidValue("expire: ttl must be a number of seconds above 0, not None")
        with self._lock:
            if not self._present(key):
                return False
            commit = self._write({key: (self._data[key], deadline_after(seconds))})
        return _once_committed(commit, True)

    def ttl(self, key: str) -> float | None:
        """Seconds until key expires, None if it never does; KeyNotFound if it is absent."""
        key = check_key(key, self._limits)
        with self._lock:
            if not self._present(key):
                raise KeyNotFound(key)
            deadline = self._expiry.get(key)
        return None if deadline is None else max(0.0, round(deadline - time.time(), 3))

    def start_persist(self, key: str) -> bool | Deferred:
        """Remove key's expiry; True if it had one."""
        key = check_key(key, self._limits)
        with self._lock:
            if not self._present(key) or key not in self._expiry:
                return False
            commit = self._write({key: (self._data[key], None)})
        return _once_committed(commit, True)

    store = waits_for_answer(start_store)
    delete = waits_for_answer(start_delete)
    cas = waits_for_answer(start_cas)
    store_many = waits_for_answer(start_store_many)
    incr = waits_for_answer(start_incr)
    decr = waits_for_answer(start_decr)
    add = waits_for_answer(start_add)
    pop = waits_for_answer(start_pop)
    expire = waits_for_answer(start_expire)
    persist = waits_for_answer(start_persist)

    def _check_number(self, number: Number) -> None:
        """InvalidValue unless an incr's result is a finite float or an int within the value limit."""
        if type(number) is float and not math.isfinite(number):
            raise InvalidValue(f"incr/decr: the result {number!r} is not a finite number; nothing changed")
        if type(number) is int and number.bit_length() > 64:
            try:
                size = encoded_size(number)
            except ValueError as exc:
                raise InvalidValue(f"incr/decr: the result cannot be stored: {exc}") from None
            if size > self._limits.max_value_bytes:
                raise InvalidValue(f"incr/decr: the result is larger than {self._limits.max_value_bytes} bytes")

    def get_versioned(self, key: str) -> tuple[Value | None, int]:
        """(the value of key or None if absent, its version): the revision of its last change, 0 if never written."""
        key = check_key(key, self._limits)
        with self._lock:
            self._present(key)
            return self._data.get(key), self._version(key)

    def start_wait(self, key: str, after: int, timeout: float | None = None) -> tuple[Value | None, int] | Deferred:
        """(value or None, version) as soon as key's version is above `after` (a store, delete, expiry, incr, ...);
        WaitTimeout if it does not change within timeout (None: the server's ceiling)."""
        key, after, wait = check_key(key, self._limits), check_counter(after, "after (a version)"), check_wait(timeout)
        with self._lock:
            self._present(key)
            version = self._version(key)
            if version > after:
                return self._data.get(key), version
            seconds = blocking_wait(wait)
            watcher = Deferred(seconds, WaitTimeout(f"key {key!r} did not change within {seconds:g}s (still version {version})"))
            self._watchers.setdefault(key, []).append(watcher)
            watcher.on_cancel(partial(self._unwatch, key, watcher))
            deadline = self._expiry.get(key)
        if deadline is not None:  # an expiry is a change: look again when it is due
            self._schedule(max(0.0, deadline - time.time()) + 0.001, partial(self._expire_now, key))
        return watcher

    def start_lock_acquire(
        self, name: str, lease: float, timeout: float | None = None, *, session: Session | None = None,
    ) -> int | Deferred:
        """Block until the lock is held for lease seconds; its fencing token. LockTimeout after timeout (None: the ceiling)."""
        name, lease, wait = check_name(name, "a lock name"), check_lease(lease), check_wait(timeout)
        return self.locks.acquire(name, lease, wait, session)

    def lock_release(self, name: str, token: int, *, session: Session | None = None) -> bool:
        """Free the lock held with token; LockLost (and nothing freed) if it is not held with it."""
        return self.locks.release(check_name(name, "a lock name"), check_counter(token, "a fencing token"))

    def lock_extend(self, name: str, token: int, lease: float, *, session: Session | None = None) -> bool:
        """Hold the lock for lease seconds from now; LockLost if it is not held with token."""
        return self.locks.extend(check_name(name, "a lock name"), check_counter(token, "a fencing token"), check_lease(lease))

    def lock_locked(self, name: str) -> bool:
        """True if someone holds the lock."""
        return self.locks.locked(check_name(name, "a lock name"))

    def queue_put(self, name: str, value: Value) -> int:
        """Append value to the queue (or hand it to the longest-waiting getter); the queue's length counting it."""
        return self.queues.put(check_name(name, "a queue name"), check_value(value, self._limits))

    def start_queue_get(self, name: str, timeout: float | None = None) -> Value | Deferred:
        """The queue's first item; a getter waits for one in arrival order (QueueEmpty after timeout, None: the ceiling)."""
        return self.queues.get(check_name(name, "a queue name"), check_wait(timeout))

    def queue_size(self, name: str) -> int:
        """How many items wait in the queue."""
        return self.queues.size(check_name(name, "a queue name"))

    wait = waits_for_answer(start_wait)
    lock_acquire = waits_for_answer(start_lock_acquire)
    queue_get = waits_for_answer(start_queue_get)

    def _present(self, key: str) -> bool:
        """True if key is in the store and has not expired (call under the lock)."""
        if self._expiry:
            self._drop_if_expired(key)
        return key in self._data

    def _drop_if_expired(self, key: str) -> None:
        """Forget key if its deadline has passed (call under the lock)."""
        deadline = self._expiry.get(key)
        if deadline is not None and deadline <= time.time():
            self._forget_expired(key)

    def _forget_expired(self, key: str) -> None:
        """Delete an expired key: a change like any other (a new version, watchers woken, journaled without waiting)."""
        if self._closed:
            del self._data[key], self._expiry[key]
            return
        self._write({key: None})  # its commit is not waited for: a key that expired is gone whatever the journal says

    def _expire_now(self, key: str) -> None:
        """Drop key if it has expired (a timer set by a wait on a key with an expiry)."""
        with self._lock:
            self._drop_if_expired(key)

    def sweep(self, budget: int = SWEEP_BUDGET) -> int:
        """Reclaim at most `budget` expired keys; how many were reclaimed (the server's loop calls this)."""
        if not self._deadlines:
            return 0
        with self._lock:
            return self._reclaim_due(budget)

    def _reclaim_due(self, budget: int) -> int:
        """Forget up to `budget` keys whose deadline has passed (call under the lock); how many."""
        deadlines, expiry, now, reclaimed = self._deadlines, self._expiry, time.time(), 0
        while deadlines and deadlines[0][0] <= now and budget > 0:
            deadline, key = heapq.heappop(deadlines)
            budget -= 1
            if expiry.get(key) == deadline:  # else the key's expiry changed since: a stale heap entry
                self._forget_expired(key)
                reclaimed += 1
        if len(deadlines) > 2 * len(expiry) + 1024:  # mostly stale entries (expiries changed or removed): rebuild
            deadlines[:] = [(expires, key) for key, expires in expiry.items()]
            heapq.heapify(deadlines)
        return reclaimed

    def expiring(self) -> int:
        """How many keys have an expiry (some may have expired and not yet been reclaimed)."""
        return len(self._expiry)

    def _version(self, key: str) -> int:
        """key's version: the revision of its last change (call under the lock)."""
        return self._versions.get(key, self._version_floor)

    def _unwatch(self, key: str, watcher: Deferred) -> None:
        """A cancelled wait stops watching its key."""
        with self._lock:
            watchers = self._watchers.get(key)
            if watchers is not None and watcher in watchers:
                watchers.remove(watcher)
                if not watchers:
                    del self._watchers[key]

    def _next_token(self) -> tuple[int, Commit]:
        """A fencing token: the store's next revision, journaled like a write that changes no key."""
        with self._lock:
            if self._closed:
                raise ServerUnavailable("the server is shutting down: the lock was not granted")
            return self._revision + 1, self._write({})

    def _entry(self, key: str) -> Entry | None:
        """key's value, deadline and version, None if absent (the journal's view of the store before a write)."""
        value = self._data.get(key)
        return None if value is None else (value, self._expiry.get(key), self._versions.get(key, self._version_floor))

    def _write(self, changes: Changes) -> Commit:
        """The one path every change takes (call under the lock): journal it, then apply it, as the next revision.

        Each change is (value, deadline) or None (delete). Returns the journal's commit: None once the change is
        durable (at once in memory mode), else a Deferred resolved when it is, failed with KvmgrError if its commit failed.
        """
        if self._closed:
            raise KvmgrError("the server is shutting down: the write was not made")
        revision = self._revision + 1
        commit = self._journal.append(changes, self._entry, revision)
        self._revision = revision
        self._apply(changes)
        return commit

    def _apply(self, changes: Changes) -> None:
        """Make each change as of the current revision (None: remove the key, remembering its version), and wake
        whoever waits on the key."""
        data, expiry, versions, revision = self._data, self._expiry, self._versions, self._revision
        deleted = False
        for key, change in changes.items():
            versions[key] = revision
            if change is None:
                data.pop(key, None)
                expiry.pop(key, None)
                deleted = True
            else:
                data[key], deadline = change
                if deadline is not None:
                    expiry[key] = deadline
                    heapq.heappush(self._deadlines, (deadline, key))
                elif expiry:
                    expiry.pop(key, None)
            if self._watchers:
                self._wake(key)
        if deleted and len(versions) > len(data) + MAX_TOMBSTONES:  # only a delete leaves a version without a key
            self._forget_tombstones()

    def _wake(self, key: str) -> None:
        """Answer every wait on key with its value and version now."""
        watchers = self._watchers.pop(key, None)
        if watchers:
            answer = (self._data.get(key), self._version(key))
            for watcher in watchers:
                watcher.resolve(answer)

    def _forget_tombstones(self) -> None:
        """Forget deleted keys' versions: an absent key now reports the current revision (never less than it had)."""
        self._versions = {key: version for key, version in self._versions.items() if key in self._data}
        self._version_floor = self._revision

    def _roll_back(self, failure: BaseException) -> None:
        """After a failed group commit, undo every write not committed, newest first (the journal's committer calls this).

        The restored state is a change of its own: every key it touches gets a new version, and its waiters wake.
        """
        with self._lock:
            undo = self._journal.fail_uncommitted(failure)
            self._revision += 1
            restored: dict[str, Change] = {key: None if previous is None else previous[:2] for key, previous in reversed(undo)}
            self._apply(restored)  # a key written several times ends at its oldest record: the last committed state

    def close(self) -> None:
        """Refuse further writes, commit what is pending and close the journal."""
        with self._lock:
            first = not self._closed
            self._closed = True
        if first:
            self._journal.close()  # not under the lock: a commit failing now rolls back under it

    def info(self) -> dict[str, Any]:
        """The store's figures: keys, expiring keys, revision, pending commits, locks held and waiting, queue lengths."""
        with self._lock:
            self._reclaim_due(len(self._deadlines))
            keys, expiring, revision = len(self._data), len(self._expiry), self._revision
        return {
            "keys": keys, "expiring_keys": expiring, "revision": revision, "pending_commits": self._journal.pending(),
            "locks_held": self.locks.held(), "lock_waiters": self.locks.waiting(), "queues": self.queues.lengths(),
        }

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
    if commit is None:  # the usual case (in memory): hot paths test it before calling
        return answer
    answered = commit.then(lambda _: answer, COMMIT_TIMEOUT, OutcomeUnknown(
        f"durable storage did not commit within {COMMIT_TIMEOUT:g}s: the write may or may not be made"))
    answered.stop_error = OutcomeUnknown("the server stopped before the write's commit was confirmed: it may or may not be made")
    return answered
