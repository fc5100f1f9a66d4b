"""Connections kept for reuse: each call has one to itself, and none is ever used on both sides of a fork.

A client is shared by threads (and inherited by forked children) the way a Manager proxy is. The
manager protocol has no request ids, so a connection must carry one call at a time: a call leases a
connection, and gives it back only when its reply was read in full. A call that ends any other way
(an interruption, a timeout, a broken connection) discards it, so no later call can read its reply.
After a fork the child never touches a connection it inherited: it opens its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from kvmgr.config import IDLE_CHECK_AFTER, MAX_IDLE_CONNECTIONS

Connection = TypeVar("Connection")

_fork_generation = 0


def _forked() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_forked)


class Lease(Generic[Connection]):
    """One connection, lent to one call at a time."""

    __slots__ = ("connection", "epoch", "generation", "last_used")

    def __init__(self, connection: Connection, epoch: int) -> None:
        self.connection = connection
        self.generation = _fork_generation
        self.epoch = epoch
        self.last_used = time.monotonic()


class ConnectionPool(Generic[Connection]):
    """Idle connections of one client, opened on demand; safe to use from many threads and after fork.

    `opener` makes a new connection (raising what the client raises when it cannot), `closer` closes one
    (it must not shut down the socket: in a forked child that would cut the parent's connection too), and
    `is_stale` says whether an idle connection was closed by the server meanwhile.
    """

    def __init__(
        self, opener: Callable[[], Connection], closer: Callable[[Connection], None], is_stale: Callable[[Connection], bool],
        max_idle: int = MAX_IDLE_CONNECTIONS,
    ) -> None:
        self._open, self._close, self._is_stale = opener, closer, is_stale
        self._idle: list[Lease[Connection]] = []
        self._epoch = 0
        self._max_idle = max_idle

    def acquire(self) -> Lease[Connection]:
        """A connection for one call: an idle one that is still good, else a new one."""
        idle = self._idle
        while idle:
            try:
                lease = idle.pop()
            except IndexError:  # another thread took the last one
                break
            inherited = lease.generation != _fork_generation  # closed here, never used: it is the parent's
            now = time.monotonic()
            if inherited or (now - lease.last_used > IDLE_CHECK_AFTER and self._is_stale(lease.connection)):
                self._close(lease.connection)
                continue
            lease.last_used = now  # idle from about now on, once given back (a call lasts far less than the idle check)
            return lease
        return Lease(self._open(), self._epoch)

    def release(self, lease: Lease[Connection]) -> None:
        """Give back a connection whose call ended with its reply read in full."""
        if lease.generation == _fork_generation and lease.epoch == self._epoch and len(self._idle) < self._max_idle:
            self._idle.append(lease)
        else:
            self.discard(lease)

    def discard(self, lease: Lease[Connection]) -> None:
        """Close a connection whose state is unknown (a call on it did not end with its reply)."""
        self._close(lease.connection)

    def close(self) -> None:
        """Close the idle connections; those lent out now are closed when they come back."""
        self._epoch += 1
        while self._idle:
            try:
                self._close(self._idle.pop().connection)
            except IndexError:
                break
