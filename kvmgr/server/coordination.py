"""Locks and queues on the server: blocking calls answered by Deferreds, woken in arrival order, never by polling.

A lock is held by one fencing token at a time, for a lease; it is freed when its holder releases it, when the
lease ends, and at once when the holder's connection closes (the `Session` it was granted on lets go of it).
Waiters are granted in arrival order; a waiter whose call is cancelled (its timeout, its connection closing)
leaves the line. Fencing tokens come from the store's revision counter (`Tokens`), so they grow with every
grant and, in durable mode, across restarts.

A queue hands each item to at most one getter: to the longest-waiting getter if there is one, else to the
first get to come. A getter whose call was cancelled is never given an item. Once a getter's reply is written
to its connection the item counts as delivered (a peer that dies before reading it loses that item).

Nothing here blocks: every call returns its answer or a Deferred of it. Timers (leases) come from a `Schedule`:
the server's loop, or threads for a Store used in-process.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from kvmgr.config import BLOCKING_CEILING
from kvmgr.errors import KvmgrError, LockLost, LockTimeout, QueueEmpty
from kvmgr.protocol.values import Value
from kvmgr.server.deferred import Deferred

Cancel = Callable[[], None]
Schedule = Callable[[float, Callable[[], object]], Cancel]
"""schedule(delay, callback) runs callback in delay seconds; the function it returns cancels that."""
Tokens = Callable[[], "tuple[int, Deferred | None]"]
"""The next fencing token, and the commit that makes it durable (None: it already is)."""


class Session(Protocol):
    """The connection a call came on: told what to let go of when it closes."""

    def hold(self, what: object, release: Callable[[], object]) -> None:
        """Call release() when the connection closes, unless dropped first."""

    def drop(self, what: object) -> None:
        """Forget a hold."""


def thread_schedule(delay: float, callback: Callable[[], object]) -> Cancel:
    """A Schedule on threads, for a Store used in-process (the server uses its loop's timers)."""
    timer = threading.Timer(delay, callback)
    timer.daemon = True
    timer.start()
    return timer.cancel


def blocking_wait(timeout: float | None) -> float:
    """How long a blocking call waits: its own timeout, never more than the server's ceiling."""
    return BLOCKING_CEILING if timeout is None else min(timeout, BLOCKING_CEILING)


@dataclass(kw_only=True)
class Holder:
    """Who holds a lock: the token, the lease's timer and the session it was granted on."""

    token: int
    session: Session | None
    cancel_lease: Cancel


@dataclass(kw_only=True)
class Waiter:
    """A caller waiting for a lock, with the lease it asked for."""

    deferred: Deferred
    lease: float
    session: Session | None


@dataclass(kw_only=True)
class LockState:
    """One lock: its holder (None when free) and its waiters in arrival order."""

    holder: Holder | None = None
    waiters: deque[Waiter] = field(default_factory=deque)


class Locks:
    """Every lock of a store, by name."""

    def __init__(self, schedule: Schedule, tokens: Tokens) -> None:
        self._schedule, self._tokens = schedule, tokens
        self._locks: dict[str, LockState] = {}
        self._mutex = threading.RLock()

    def acquire(self, name: str, lease: float, timeout: float | None, session: Session | None) -> int | Deferred:
        """The token at once if the lock is free, else a Deferred of it, in arrival order (LockTimeout after timeout)."""
        with self._mutex:
            state = self._locks.setdefault(name, LockState())
            if state.holder is None and not state.waiters:
                return self._grant(name, state, lease, session)
            wait = blocking_wait(timeout)
            deferred = Deferred(wait, LockTimeout(f"lock {name!r} was not acquired within {wait:g}s"))
            waiter = Waiter(deferred=deferred, lease=lease, session=session)
            state.waiters.append(waiter)
            deferred.on_cancel(partial(self._leave, name, waiter))
            return deferred

    def release(self, name: str, token: int) -> bool:
        """Free the lock held with token and grant it to the next waiter; LockLost if it is not held with token."""
        with self._mutex:
            self._holder(name, token)
            self._free(name)
            return True

    def extend(self, name: str, token: int, lease: float) -> bool:
        """Hold the lock for lease seconds from now; LockLost if it is not held with token."""
        with self._mutex:
            holder = self._holder(name, token)
            holder.cancel_lease()
            holder.cancel_lease = self._schedule(lease, partial(self._lease_ended, name, token))
            return True

    def locked(self, name: str) -> bool:
        """True if someone holds the lock."""
        with self._mutex:
            state = self._locks.get(name)
            return state is not None and state.holder is not None

    def held(self) -> int:
        """How many locks are held."""
        with self._mutex:
            return sum(state.holder is not None for state in self._locks.values())

    def waiting(self) -> int:
        """How many callers wait for a lock."""
        with self._mutex:
            return sum(len(state.waiters) for state in self._locks.values())

    def _holder(self, name: str, token: int) -> Holder:
        state = self._locks.get(name)
        if state is None or state.holder is None or state.holder.token != token:
            raise LockLost(f"lock {name!r} is not held with token {token} (its lease ended or its connection closed): nothing was freed")
        return state.holder

    def _grant(self, name: str, state: LockState, lease: float, session: Session | None) -> int | Deferred:
        """Make the caller the holder (call under the mutex); its token, or a Deferred of it answered once the token is durable.

        Should that commit fail, the caller hears of it and the lock is freed for the next waiter.
        """
        token, commit = self._tokens()
        cancel = self._schedule(lease, partial(self._lease_ended, name, token))
        state.holder = Holder(token=token, session=session, cancel_lease=cancel)
        if session is not None:
            session.hold(("lock", name), partial(self._lease_ended, name, token))
        if commit is None:
            return token
        commit.add_done_callback(lambda outcome: self._lease_ended(name, token) if outcome.error else None)
        return commit.then(lambda _: token)

    def _free(self, name: str) -> None:
        """Free the lock and grant it to the first waiter still waiting (call under the mutex)."""
        state = self._locks[name]
        holder, state.holder = state.holder, None
        if holder is not None:
            holder.cancel_lease()
            if holder.session is not None:
                holder.session.drop(("lock", name))
        while state.waiters:
            waiter = state.waiters.popleft()
            if waiter.deferred.done:
                continue
            try:
                granted = self._grant(name, state, waiter.lease, waiter.session)
            except KvmgrError as exc:  # no token to be had (the server is stopping): this waiter hears why
                waiter.deferred.fail(exc)
                continue
            _forward(granted, waiter.deferred)
            return
        del self._locks[name]

    def _lease_ended(self, name: str, token: int) -> None:
        with self._mutex:
            state = self._locks.get(name)
            if state is not None and state.holder is not None and state.holder.token == token:
                self._free(name)

    def _leave(self, name: str, waiter: Waiter) -> None:
        """A cancelled waiter leaves the line."""
        with self._mutex:
            state = self._locks.get(name)
            if state is not None and waiter in state.waiters:
                state.waiters.remove(waiter)
                if state.holder is None and not state.waiters:
                    del self._locks[name]


def _forward(answer: Any, deferred: Deferred) -> None:
    """Settle deferred with answer: a value, or another Deferred's outcome once it is decided."""
    if not isinstance(answer, Deferred):
        deferred.resolve(answer)
        return
    answer.add_done_callback(lambda source: deferred.fail(source.error) if source.error else deferred.resolve(source.value))


class Queues:
    """Every work queue of a store, by name: items in FIFO order and getters waiting in arrival order."""

    def __init__(self) -> None:
        self._items: dict[str, deque[Value]] = {}
        self._getters: dict[str, deque[Deferred]] = {}
        self._mutex = threading.Lock()

    def put(self, name: str, value: Value) -> int:
        """Append value, or hand it to the longest-waiting getter; the queue's length counting it."""
        with self._mutex:
            items = self._items.setdefault(name, deque())
            length = len(items) + 1
            getters = self._getters.get(name)
            while getters:
                getter = getters.popleft()
                if getter.resolve(value):
                    if not getters:
                        del self._getters[name]
                    if not items:
                        del self._items[name]
                    return length
            items.append(value)
            return length

    def get(self, name: str, timeout: float | None) -> Value | Deferred:
        """The first item at once, else a Deferred of the next one put (QueueEmpty after timeout)."""
        with self._mutex:
            items = self._items.get(name)
            if items:
                value = items.popleft()
                if not items:
                    del self._items[name]
                return value
            wait = blocking_wait(timeout)
            getter = Deferred(wait, QueueEmpty(f"queue {name!r} had no item within {wait:g}s"))
            self._getters.setdefault(name, deque()).append(getter)
            getter.on_cancel(partial(self._leave, name, getter))
            return getter

    def size(self, name: str) -> int:
        """How many items wait in the queue."""
        with self._mutex:
            return len(self._items.get(name, ()))

    def lengths(self) -> dict[str, int]:
        """Every non-empty queue's length."""
        with self._mutex:
            return {name: len(items) for name, items in self._items.items()}

    def _leave(self, name: str, getter: Deferred) -> None:
        with self._mutex:
            getters = self._getters.get(name)
            if getters is not None and getter in getters:
                getters.remove(getter)
                if not getters:
                    del self._getters[name]
