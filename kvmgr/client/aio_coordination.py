"""AsyncLock and AsyncQueue: the coordination primitives of kvmgr.client.coordination, for asyncio clients.

An AsyncLock acquires on a session of its own (`client.session()`: a client with its own connections) and
keeps it until release, so on kvmgr's server the lock lives exactly as long as the connection it was granted
on. A task cancelled while acquiring closes that connection: a lock granted meanwhile is freed at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

from kvmgr.errors import KvmgrError, LockLost
from kvmgr.protocol.values import Value

if TYPE_CHECKING:
    from kvmgr.client.aio_operations import AsyncOperations


class AsyncLock:
    """A named lock with a lease: `await acquire(timeout)` -> token, `await release()`, `await extend()`, `async with`.

    One AsyncLock object is held by one owner at a time; it is not re-entrant.
    """

    def __init__(self, client: AsyncOperations, name: str, lease: float) -> None:
        self.client, self.name, self.lease = client, name, lease
        self.token: int | None = None
        self._session: AsyncOperations | None = None

    async def acquire(self, timeout: float | None = None) -> int:
        """Wait until the lock is held; its fencing token. LockTimeout after timeout seconds (None: the server's ceiling)."""
        if self.token is not None or self._session is not None:
            raise KvmgrError(f"lock {self.name!r} is already held by this Lock object (it is not re-entrant)")
        session = self.client.session()
        self._session = session  # claimed now: a second acquire meanwhile is refused
        try:
            self.token = await session.lock_acquire(self.name, self.lease, timeout)
        except BaseException:
            self._session = None
            await session.close()
            raise
        return self.token

    async def release(self) -> None:
        """Free the lock; LockLost if it was lost meanwhile (its lease ended, or its connection closed)."""
        token, session = self.token, self._session
        self.token, self._session = None, None
        if token is None or session is None:
            raise LockLost(f"lock {self.name!r} is not held by this Lock object")
        try:
            await session.lock_release(self.name, token)
        finally:
            await session.close()

    async def extend(self, lease: float | None = None) -> None:
        """Hold the lock for lease seconds (default: the lock's lease) from now; LockLost if it was lost meanwhile."""
        if self.token is None or self._session is None:
            raise LockLost(f"lock {self.name!r} is not held by this Lock object")
        await self._session.lock_extend(self.name, self.token, self.lease if lease is None else lease)

    async def locked(self) -> bool:
        """True if anyone holds the lock."""
        return await self.client.lock_locked(self.name)

    async def __aenter__(self) -> Self:
        """Acquire (waiting up to the server's ceiling)."""
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Release."""
        await self.release()

    def __repr__(self) -> str:
        return f"<AsyncLock {self.name!r} token={self.token}>"


class AsyncQueue:
    """A named FIFO work queue: `await put(value)` -> length, `await get(timeout)` -> value, `await qsize()`."""

    def __init__(self, client: AsyncOperations, name: str) -> None:
        self.client, self.name = client, name

    async def put(self, value: Value) -> int:
        """Append value; the queue's length after the put."""
        return await self.client.queue_put(self.name, value)

    async def get(self, timeout: float | None = None) -> Value:
        """Take the first item, waiting for one up to timeout seconds (None: the server's ceiling); QueueEmpty then."""
        return await self.client.queue_get(self.name, timeout)

    async def qsize(self) -> int:
        """How many items wait."""
        return await self.client.queue_size(self.name)

    def __repr__(self) -> str:
        return f"<AsyncQueue {self.name!r}>"
