"""AsyncOperations: the abstract asyncio client every async transport implements, with typed coroutine methods.

The async twin of kvmgr.client.operations.Operations: the same methods with the same parameters, the same
argument checks (normalize_call, before anything is sent), the same errors and the same retry policy. A
transport implements `_call(method, args, timeout)`, one attempt of one checked call, and `close()`.
Recording a history is a wrapper (AsyncRecordingClient) around any async client, as for the sync one.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from kvmgr.client.operations import NO_DEFAULT, AnswerObserver, Call, attempt_status, raise_first_error
from kvmgr.client.retry import DEFAULT_RETRY, RetryPolicy
from kvmgr.config import BLOCKING_CEILING, DEFAULT_LEASE
from kvmgr.errors import AuthenticationFailed, InvalidValue, KeyNotFound, KvmgrError, OutcomeUnknown, ServerUnavailable
from kvmgr.protocol.operations import BY_NAME
from kvmgr.protocol.validation import normalize_call
from kvmgr.protocol.values import Number, Value

if TYPE_CHECKING:
    from kvmgr.client.aio_coordination import AsyncLock, AsyncQueue
    from kvmgr.client.aio_recording import AsyncRecordingClient
    from kvmgr.verify.history import HistoryWriter

AsyncAttempt = Callable[[str, tuple, "float | None"], Awaitable[Any]]
"""One attempt of a call: (method, normalized args, timeout) -> awaitable result; what a transport's `_call` is."""
AsyncTransport = TypeVar("AsyncTransport", bound="AsyncOperations")


def runs_alone(method: str) -> bool:
    """True if the call may wait for other clients (lock acquire, wait, queue get, rendezvous): it gets a connection of its own."""
    return BY_NAME[method].blocks


class AsyncOperations(ABC):
    """The key-value API as coroutines. A transport implements `_call(method, args, timeout)` and `close()`.

    Every method validates its call (InvalidKey, InvalidValue, TypeError, UnknownOperation) before anything
    is sent, and raises the store's errors (KeyNotFound, ...), ServerUnavailable or OutcomeUnknown. Any
    number of tasks may call one client at once.
    """

    name: str = "client"
    timeout: float = 5.0
    retry: RetryPolicy = DEFAULT_RETRY

    async def store(self, key: str, value: Value, ttl: float | None = None) -> str:
        """Set key (expiring after ttl seconds, if given); "saved" if it was new, "updated" if it overwrote a value."""
        if ttl is None:
            return cast("str", await self.call("store", key, value))
        return cast("str", await self.call("store", key, value, ttl))

    async def get(self, key: str) -> Value:
        """The value of key; raises KeyNotFound if absent."""
        return cast("Value", await self.call("get", key))

    async def delete(self, key: str) -> bool:
        """Remove key; True if it existed."""
        return cast("bool", await self.call("delete", key))

    async def exists(self, key: str) -> bool:
        """True if key is present."""
        return cast("bool", await self.call("exists", key))

    async def keys(self, prefix: str | None = None, limit: int | None = None, after: str | None = None) -> list[str]:
        """The keys in sorted order: those starting with prefix, after the key `after`, at most `limit` of them."""
        return cast("list[str]", await self.call("keys", prefix, limit, after))

    async def iter_keys(self, prefix: str | None = None, page: int = 10_000) -> AsyncIterator[str]:
        """Every key (starting with prefix), sorted, fetched `page` keys per call (use with `async for`)."""
        after = None
        while True:
            keys = await self.keys(prefix, page, after)
            for key in keys:
                yield key
            if len(keys) < page:
                return
            after = keys[-1]

    async def size(self) -> int:
        """How many keys the store holds."""
        return cast("int", await self.call("size"))

    async def cas(self, key: str, expected: Value | None, value: Value) -> bool:
        """Set key to value only if it holds expected (None: only if absent); True if it swapped."""
        return cast("bool", await self.call("cas", key, expected, value))

    async def get_many(self, keys: Iterable[str]) -> dict[str, Value]:
        """The values of the keys that are present, read in one atomic step."""
        return cast("dict[str, Value]", await self.call("get_many", keys))

    async def store_many(self, mapping: Mapping[str, Value]) -> dict[str, str]:
        """Store every pair in one atomic step; key -> "saved"/"updated"."""
        return cast("dict[str, str]", await self.call("store_many", mapping))

    async def incr(self, key: str, by: Number = 1) -> Number:
        """Add by to the number at key (absent: 0) in one atomic step; the new number; WrongType if it is not a number."""
        return cast("Number", await self.call("incr", key, by))

    async def decr(self, key: str, by: Number = 1) -> Number:
        """Subtract by from the number at key (absent: 0) in one atomic step; the new number (WrongType as incr)."""
        return cast("Number", await self.call("decr", key, by))

    async def add(self, key: str, value: Value, ttl: float | None = None) -> bool:
        """Store value only if key is absent (expiring after ttl seconds, if given); True if it stored."""
        if ttl is None:
            return cast("bool", await self.call("add", key, value))
        return cast("bool", await self.call("add", key, value, ttl))

    async def pop(self, key: str, default: Any = NO_DEFAULT) -> Any:
        """Remove key and return its value in one atomic step; if absent, default, or KeyNotFound when none is given."""
        try:
            return await self.call("pop", key)
        except KeyNotFound:
            if default is NO_DEFAULT:
                raise
            return default

    async def expire(self, key: str, ttl: float) -> bool:
        """Make key expire ttl seconds from now; False if it is absent."""
        return cast("bool", await self.call("expire", key, ttl))

    async def ttl(self, key: str) -> float | None:
        """Seconds until key expires, None if it never does; KeyNotFound if it is absent."""
        return cast("float | None", await self.call("ttl", key))

    async def persist(self, key: str) -> bool:
        """Remove key's expiry; True if it had one (False if it had none or is absent)."""
        return cast("bool", await self.call("persist", key))

    async def get_versioned(self, key: str) -> tuple[Value | None, int]:
        """(value, or None if absent; version): the store revision of the key's last change (0: never written)."""
        value, version = await self.call("get_versioned", key)
        return value, version

    async def wait(self, key: str, after: int, timeout: float | None = None) -> tuple[Value | None, int]:
        """Wait until key's version is above `after`, then (value or None, version); WaitTimeout after timeout seconds.

        Runs on a connection of its own: other calls never wait behind it.
        """
        value, version = await self._blocking("wait", (key, after), timeout)
        return value, version

    async def lock_acquire(self, name: str, lease: float, timeout: float | None = None) -> int:
        """The low-level acquire (use lock()): wait until held for lease seconds; the fencing token. LockTimeout."""
        return cast("int", await self._blocking("lock_acquire", (name, lease), timeout))

    async def lock_release(self, name: str, token: int) -> bool:
        """The low-level release (use lock()): free the lock held with token; LockLost if it is not."""
        return cast("bool", await self.call("lock_release", name, token))

    async def lock_extend(self, name: str, token: int, lease: float) -> bool:
        """The low-level extend (use lock()): hold for lease seconds from now; LockLost if not held with token."""
        return cast("bool", await self.call("lock_extend", name, token, lease))

    async def lock_locked(self, name: str) -> bool:
        """True if someone holds the lock."""
        return cast("bool", await self.call("lock_locked", name))

    async def queue_put(self, name: str, value: Value) -> int:
        """Append value to the queue; its length after the put (use queue())."""
        return cast("int", await self.call("queue_put", name, value))

    async def queue_get(self, name: str, timeout: float | None = None) -> Value:
        """Wait until the queue has an item and take the first; QueueEmpty after timeout (use queue())."""
        return cast("Value", await self._blocking("queue_get", (name,), timeout))

    async def queue_size(self, name: str) -> int:
        """How many items wait in the queue."""
        return cast("int", await self.call("queue_size", name))

    def lock(self, name: str, lease: float = DEFAULT_LEASE) -> AsyncLock:
        """A lock with a lease and fencing tokens: `await acquire()`, `await release()`, an `async with` block."""
        from kvmgr.client.aio_coordination import AsyncLock

        return AsyncLock(self, name, lease)

    def queue(self, name: str) -> AsyncQueue:
        """A FIFO work queue: `await put()`, `await get(timeout)`, `await qsize()`."""
        from kvmgr.client.aio_coordination import AsyncQueue

        return AsyncQueue(self, name)

    def session(self) -> AsyncOperations:
        """A client of the same store with connections of its own (a held lock keeps one for itself)."""
        raise NotImplementedError(f"{type(self).__name__} cannot open a session")

    async def _blocking(self, method: str, args: tuple, timeout: float | None) -> Any:
        """A call that may wait up to `timeout` (None: the server's ceiling): its deadline is that plus the client's timeout."""
        wait = BLOCKING_CEILING if timeout is None else timeout
        return await self.call(method, *args, *(() if timeout is None else (timeout,)), timeout=wait + self.timeout)

    async def quit(self) -> str:
        """Ask the server to shut down gracefully; returns its confirmation."""
        return cast("str", await self.call("quit"))

    async def info(self) -> dict[str, Any]:
        """What the server is doing: uptime_seconds, keys, connected_clients, operations per kind, ... (README: kvmgr info)."""
        return cast("dict[str, Any]", await self.call("info"))

    async def rendezvous(self, name: str, parties: int, timeout: float | None = None) -> int:
        """Wait until `parties` clients have called rendezvous(name), then return together."""
        wait = self.timeout if timeout is None else timeout
        return cast("int", await self.call("rendezvous", name, parties, wait, timeout=wait + self.timeout))

    async def pipeline(self, calls: Iterable[tuple], raise_on_error: bool = True) -> list[Any]:
        """Run many calls, each a tuple (method, *args), all at once, and return their results in order.

        Every call is checked before any is sent. With raise_on_error=False a call's error is returned in its
        place instead of raised; ServerUnavailable (the connection is gone) is always raised.
        """
        checked: list[Call | Exception] = []
        for method, *args in calls:
            try:
                checked.append((method, normalize_call(method, tuple(args))))
            except (KvmgrError, TypeError) as exc:
                checked.append(exc)
        if raise_on_error:
            raise_first_error(checked)
        answers = iter(await self._run_pipeline([call for call in checked if not isinstance(call, Exception)]))
        results = [call if isinstance(call, Exception) else next(answers) for call in checked]
        return raise_first_error(results) if raise_on_error else results

    async def _run_pipeline(self, calls: list[Call], attempt: AsyncAttempt | None = None) -> list[Any]:
        """Each checked call's result or error, in order: here one by one, each through the retry policy.

        `attempt` (default: `_call`) makes one attempt; a recording client passes one that records it.
        """
        results: list[Any] = []
        for method, args in calls:
            try:
                results.append(await self._repeating(attempt or self._call, method, args, None))
            except ServerUnavailable:
                raise  # the connection is gone: no later call can succeed either
            except KvmgrError as exc:
                results.append(exc)
        return results

    async def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """Run one operation; the retry policy says whether an attempt whose connection broke is repeated."""
        args = normalize_call(method, args)
        if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
            raise InvalidValue(f"{method}: timeout must be a number of seconds above 0, not {timeout!r}")
        return await self._repeating(self._call, method, args, timeout)

    async def _repeating(self, attempt: AsyncAttempt, method: str, args: tuple, timeout: float | None) -> Any:
        """The first attempt, then repeats as the retry policy allows (the async form of RetryPolicy.run)."""
        try:
            return await attempt(method, args, timeout)
        except OutcomeUnknown as exc:
            error, made = exc, 1
        while self.retry.may_repeat(method, error, made):
            made += 1
            try:
                return await attempt(method, args, timeout)
            except OutcomeUnknown as exc:
                error = exc
            except (ServerUnavailable, AuthenticationFailed) as exc:  # the repeat was not even sent: still unknown
                raise error from exc
        raise error

    @abstractmethod
    async def _call(self, method: str, args: tuple, timeout: float | None) -> Any:
        """One attempt of one checked call (its own timeout, or None for the client's); its result or its error."""

    @abstractmethod
    async def close(self) -> None:
        """Release the connections (the next call reconnects); calls in flight fail with OutcomeUnknown."""

    async def aclose(self) -> None:
        """Close the client (the name redis.asyncio and contextlib.aclosing use)."""
        await self.close()

    async def __aenter__(self) -> Self:
        """This client, closed when the async with-block ends."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the client."""
        await self.close()


async def observe_async(attempt: AsyncAttempt, on_answer: AnswerObserver, method: str, args: tuple, timeout: float | None) -> Any:
    """Make one attempt and tell on_answer how it ended, exactly once, whatever ends it (cancellation included)."""
    start = time.monotonic_ns()
    status: str | None = "info"
    result: Any = None
    try:
        result = await attempt(method, args, timeout)
        status = "ok"
    except BaseException as exc:
        status = attempt_status(exc)
        raise
    finally:
        if status is not None:
            known = status != "info"
            on_answer(method, args, status, result if known else None, start, time.monotonic_ns() if known else None)
    return result


def with_history_async(
    client: AsyncTransport, history: HistoryWriter | None, name: str | None = None,
) -> AsyncTransport | AsyncRecordingClient[AsyncTransport]:
    """The client itself, or, given a history, the client wrapped so that it records every attempt there."""
    if history is None:
        return client
    from kvmgr.client.aio_recording import AsyncRecordingClient

    return AsyncRecordingClient(client, history, name)
