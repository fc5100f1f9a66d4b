"""Lock and Queue: the coordination primitives, as objects over any client (kvmgr's server or Redis).

A Lock acquires on a session of its own (`client.session()`: a client with its own connections), so on kvmgr's
server the lock lives exactly as long as the connection it was granted on: a holder that dies (even by SIGKILL)
frees it at once. The Lock keeps its session for the next acquire (`close()` lets it go), so taking turns costs
no new connection; a call on it that fails closes it, and the next acquire opens another.

Every grant returns a fencing token, larger than any token given before for that lock: pass it to whatever the
lock protects, and have that refuse older tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

from kvmgr.errors import KvmgrError, LockLost
from kvmgr.protocol.values import Value

if TYPE_CHECKING:
    from kvmgr.client.operations import Operations


class Lock:
    """A named lock with a lease: acquire(timeout) -> token, release(), extend(lease), locked(), and a with-block.

    One Lock object is held by one owner at a time; it is not re-entrant (acquiring it twice is an error).
    """

    def __init__(self, client: Operations, name: str, lease: float) -> None:
        self.client, self.name, self.lease = client, name, lease
        self.token: int | None = None
        self._session: Operations | None = None

    def acquire(self, timeout: float | None = None) -> int:
        """Block until the lock is held; its fencing token. LockTimeout after timeout seconds (None: the server's ceiling)."""
        if self.token is not None:
            raise KvmgrError(f"lock {self.name!r} is already held by this Lock object (it is not re-entrant)")
        if self._session is None:
            self._session = self.client.session()
        try:
            self.token = self._session.lock_acquire(self.name, self.lease, timeout)
        except BaseException:
            self.close()  # an acquire that ended any other way may have been granted on that connection: closing frees it
            raise
        return self.token

    def release(self) -> None:
        """Free the lock; LockLost if it was lost meanwhile (its lease ended, or its connection closed): nothing is freed then."""
        token, session = self._take()
        try:
            session.lock_release(self.name, token)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Let go of the session (a lock still held is freed on kvmgr's server, as its connection closes)."""
        session, self._session, self.token = self._session, None, None
        if session is not None:
            session.close()

    def extend(self, lease: float | None = None) -> None:
        """Hold the lock for lease seconds (default: the lock's lease) from now; LockLost if it was lost meanwhile."""
        if self.token is None or self._session is None:
            raise LockLost(f"lock {self.name!r} is not held by this Lock object")
        self._session.lock_extend(self.name, self.token, self.lease if lease is None else lease)

    def locked(self) -> bool:
        """True if anyone holds the lock."""
        return self.client.lock_locked(self.name)

    def _take(self) -> tuple[int, Operations]:
        token, session = self.token, self._session
        self.token = None
        if token is None or session is None:
            raise LockLost(f"lock {self.name!r} is not held by this Lock object")
        return token, session

    def __enter__(self) -> Self:
        """Acquire (waiting up to the server's ceiling)."""
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Release."""
        self.release()

    def __repr__(self) -> str:
        return f"<Lock {self.name!r} token={self.token}>"


class Queue:
    """A named FIFO work queue: put(value) -> length, get(timeout) -> value, qsize(). Each item goes to one getter."""

    def __init__(self, client: Operations, name: str) -> None:
        self.client, self.name = client, name

    def put(self, value: Value) -> int:
        """Append value; the queue's length after the put."""
        return self.client.queue_put(self.name, value)

    def get(self, timeout: float | None = None) -> Value:
        """Take the first item, waiting for one up to timeout seconds (None: the server's ceiling); QueueEmpty then."""
        return self.client.queue_get(self.name, timeout)

    def qsize(self) -> int:
        """How many items wait."""
        return self.client.queue_size(self.name)

    def __repr__(self) -> str:
        return f"<Queue {self.name!r}>"
