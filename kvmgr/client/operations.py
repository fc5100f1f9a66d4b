"""Operations: the abstract client every transport implements, with typed methods, pipelines and retries.

A transport (the manager connection, Redis) implements `_call(method, args, timeout)`, one attempt of one
call, and `close()`; everything a caller sees (the method set, how a pipeline's calls are checked and
answered, which calls are repeated) is defined once, here. Recording a history is not done here: it is
a wrapper around any client (kvmgr/client/recording.py); a client without one runs no recording code.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from kvmgr.client.retry import DEFAULT_RETRY, Attempt, RetryPolicy
from kvmgr.config import BLOCKING_CEILING, DEFAULT_LEASE
from kvmgr.errors import InvalidKey, InvalidValue, KeyNotFound, KvmgrError, OutcomeUnknown, ServerUnavailable
from kvmgr.protocol.validation import normalize_call
from kvmgr.protocol.values import Number, Value

if TYPE_CHECKING:
    from kvmgr.client.coordination import Lock, Queue
    from kvmgr.client.mapping import StoreMapping
    from kvmgr.client.recording import RecordingClient
    from kvmgr.verify.history import HistoryWriter

AnswerObserver = Callable[[str, tuple, str, Any, int, "int | None"], None]
"""Told of every attempt's outcome: (method, args, status, result, start, end), status "ok", "fail" or "info"
(outcome unknown: result and end None), times from time.monotonic_ns(). How a RecordingClient sees pipelines."""

Call = tuple[str, tuple]  # (method, normalized args)
NO_DEFAULT: Any = object()  # pop without a default: KeyNotFound when the key is absent
Transport = TypeVar("Transport", bound="Operations")


class Operations(ABC):
    """The key-value API. A transport implements `_call(method, args, timeout)` and `close()`.

    Every public method validates its call (InvalidKey, InvalidValue, TypeError, UnknownOperation) before
    anything is sent, and raises the store's errors (KeyNotFound, ...), ServerUnavailable or OutcomeUnknown.
    """

    name: str = "client"
    timeout: float = 5.0
    retry: RetryPolicy = DEFAULT_RETRY

    def store(self, key: str, value: Value, ttl: float | None = None) -> str:
        """Set key (expiring after ttl seconds, if given); "saved" if it was new, "updated" if it overwrote a value."""
        if ttl is None:
            return cast("str", self.call("store", key, value))
        return cast("str", self.call("store", key, value, ttl))

    def get(self, key: str) -> Value:
        """The value of key; raises KeyNotFound if absent."""
        return cast("Value", self.call("get", key))

    def delete(self, key: str) -> bool:
        """Remove key; True if it existed."""
        return cast("bool", self.call("delete", key))

    def exists(self, key: str) -> bool:
        """True if key is present."""
        return cast("bool", self.call("exists", key))

    def keys(self, prefix: str | None = None, limit: int | None = None, after: str | None = None) -> list[str]:
        """The keys in sorted order: those starting with prefix, after the key `after`, at most `limit` of them.

        keys() answers whatever the size limits allow; for a store too large for one reply, page through
        it with limit and after, or use iter_keys().
        """
        return cast("list[str]", self.call("keys", prefix, limit, after))

    def iter_keys(self, prefix: str | None = None, page: int = 10_000) -> Iterator[str]:
        """Every key (starting with prefix), sorted, fetched `page` keys per call."""
        after = None
        while True:
            keys = self.keys(prefix, page, after)
            yield from keys
            if len(keys) < page:
                return
            after = keys[-1]

    def size(self) -> int:
        """How many keys the store holds."""
        return cast("int", self.call("size"))

    def cas(self, key: str, expected: Value | None, value: Value) -> bool:
        """Set key to value only if it holds expected (None: only if absent); True if it swapped."""
        return cast("bool", self.call("cas", key, expected, value))

    def get_many(self, keys: Iterable[str]) -> dict[str, Value]:
        """The values of the keys that are present, read in one atomic step."""
        return cast("dict[str, Value]", self.call("get_many", keys))

    def store_many(self, mapping: Mapping[str, Value]) -> dict[str, str]:
        """Store every pair in one atomic step; key -> "saved"/"updated"."""
        return cast("dict[str, str]", self.call("store_many", mapping))

    def incr(self, key: str, by: Number = 1) -> Number:
        """Add by to the number at key (an absent key counts as 0) in one atomic step; the new number.

        Raises WrongType (nothing changes) if key holds anything but an int or float (a bool is not a number).
        """
        return cast("Number", self.call("incr", key, by))

    def decr(self, key: str, by: Number = 1) -> Number:
        """Subtract by from the number at key (absent: 0) in one atomic step; the new number (WrongType as incr)."""
        return cast("Number", self.call("decr", key, by))

    def add(self, key: str, value: Value, ttl: float | None = None) -> bool:
        """Store value only if key is absent (expiring after ttl seconds, if given); True if it stored."""
        if ttl is None:
            return cast("bool", self.call("add", key, value))
        return cast("bool", self.call("add", key, value, ttl))

    def pop(self, key: str, default: Any = NO_DEFAULT) -> Any:
        """Remove key and return its value in one atomic step; if absent, default, or KeyNotFound when none is given."""
        try:
            return self.call("pop", key)
        except KeyNotFound:
            if default is NO_DEFAULT:
                raise
            return default

    def expire(self, key: str, ttl: float) -> bool:
        """Make key expire ttl seconds from now; False if it is absent."""
        return cast("bool", self.call("expire", key, ttl))

    def ttl(self, key: str) -> float | None:
        """Seconds until key expires, None if it never does; KeyNotFound if it is absent."""
        return cast("float | None", self.call("ttl", key))

    def persist(self, key: str) -> bool:
        """Remove key's expiry; True if it had one (False if it had none or is absent)."""
        return cast("bool", self.call("persist", key))

    def as_mapping(self) -> StoreMapping:
        """This store as a collections.abc.MutableMapping, for code written for Manager().dict()."""
        from kvmgr.client.mapping import StoreMapping

        return StoreMapping(self)

    def get_versioned(self, key: str) -> tuple[Value | None, int]:
        """(value, or None if absent; version): the version is the store revision of the key's last change (0: never written)."""
        value, version = self.call("get_versioned", key)
        return value, version

    def wait(self, key: str, after: int, timeout: float | None = None) -> tuple[Value | None, int]:
        """Block until key's version is above `after`, then (value or None, version); WaitTimeout after timeout seconds.

        None waits up to the server's ceiling. Runs on a connection of its own: other calls never wait behind it.
        """
        value, version = self._blocking("wait", (key, after), timeout)
        return value, version

    def lock_acquire(self, name: str, lease: float, timeout: float | None = None) -> int:
        """The low-level acquire (use lock()): block until held for lease seconds; the fencing token. LockTimeout."""
        return cast("int", self._blocking("lock_acquire", (name, lease), timeout))

    def lock_release(self, name: str, token: int) -> bool:
        """The low-level release (use lock()): free the lock held with token; LockLost if it is not."""
        return cast("bool", self.call("lock_release", name, token))

    def lock_extend(self, name: str, token: int, lease: float) -> bool:
        """The low-level extend (use lock()): hold for lease seconds from now; LockLost if not held with token."""
        return cast("bool", self.call("lock_extend", name, token, lease))

    def lock_locked(self, name: str) -> bool:
        """True if someone holds the lock."""
        return cast("bool", self.call("lock_locked", name))

    def queue_put(self, name: str, value: Value) -> int:
        """Append value to the queue; its length after the put (use queue())."""
        return cast("int", self.call("queue_put", name, value))

    def queue_get(self, name: str, timeout: float | None = None) -> Value:
        """Block until the queue has an item and take the first; QueueEmpty after timeout (use queue())."""
        return cast("Value", self._blocking("queue_get", (name,), timeout))

    def queue_size(self, name: str) -> int:
        """How many items wait in the queue."""
        return cast("int", self.call("queue_size", name))

    def lock(self, name: str, lease: float = DEFAULT_LEASE) -> Lock:
        """A lock with a lease and fencing tokens (kvmgr.client.coordination.Lock): acquire(), release(), a with-block."""
        from kvmgr.client.coordination import Lock

        return Lock(self, name, lease)

    def queue(self, name: str) -> Queue:
        """A FIFO work queue (kvmgr.client.coordination.Queue): put(), get(timeout), qsize()."""
        from kvmgr.client.coordination import Queue

        return Queue(self, name)

    def session(self) -> Operations:
        """A client of the same store with connections of its own (a held lock keeps one for itself)."""
        raise NotImplementedError(f"{type(self).__name__} cannot open a session")

    def _blocking(self, method: str, args: tuple, timeout: float | None) -> Any:
        """A call that may wait up to `timeout` (None: the server's ceiling): its read deadline is that plus the client's timeout."""
        wait = BLOCKING_CEILING if timeout is None else timeout
        return self.call(method, *args, *(() if timeout is None else (timeout,)), timeout=wait + self.timeout)

    def info(self) -> dict[str, Any]:
        """What the server is doing: uptime_seconds, keys, connected_clients, operations per kind, ... (README: kvmgr info)."""
        return cast("dict[str, Any]", self.call("info"))

    def quit(self) -> str:
        """Ask the server to shut down gracefully; returns its confirmation."""
        return cast("str", self.call("quit"))

    def rendezvous(self, name: str, parties: int, timeout: float | None = None) -> int:
        """Block until `parties` clients have called rendezvous(name), then return together."""
        wait = self.timeout if timeout is None else timeout
        return cast("int", self.call("rendezvous", name, parties, wait, timeout=wait + self.timeout))

    def pipeline(self, calls: Iterable[tuple], raise_on_error: bool = True) -> list[Any]:
        """Run many calls, each a tuple (method, *args), and return their results in order.

        Every call is checked before any is sent. Transports that can keep several requests in flight do
        (the manager's); others run them one by one. With raise_on_error=False a call's error is returned
        in its place instead of raised; ServerUnavailable (the connection is gone) is always raised.
        """
        return run_pipeline(calls, raise_on_error, self._run_pipeline)

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """Run one operation; the retry policy says whether an attempt whose connection broke is repeated."""
        args = normalize_call(method, args)
        if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
            raise InvalidValue(f"{method}: timeout must be a number of seconds above 0, not {timeout!r}")
        try:  # retry.run(self._call, ...), its first attempt written out: this is every call's path
            return self._call(method, args, timeout)
        except OutcomeUnknown as exc:
            return self.retry.repeat(self._call, method, args, timeout, exc)

    @abstractmethod
    def _call(self, method: str, args: tuple, timeout: float | None) -> Any:
        """One attempt of one checked call (its own timeout, or None for the client's); its result or its error."""

    def _run_pipeline(self, calls: list[Call], on_answer: AnswerObserver | None = None) -> list[Any]:
        """Each checked call's result or error, in order: here one by one, each through the retry policy.

        on_answer, when given, is told of every attempt (a transport that pipelines tells it of every answer).
        """
        attempt: Attempt = self._call if on_answer is None else partial(observe, self._call, on_answer)
        results: list[Any] = []
        for method, args in calls:
            try:
                results.append(self.retry.run(attempt, method, args, None))
            except ServerUnavailable:
                raise  # the connection is gone: no later call can succeed either
            except KvmgrError as exc:  # the call's own error, in its place
                results.append(exc)
        return results

    @abstractmethod
    def close(self) -> None:
        """Release the connections (the next call reconnects)."""

    def __enter__(self) -> Self:
        """This client, closed when the with-block ends."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the client."""
        self.close()


def run_pipeline(calls: Iterable[tuple], raise_on_error: bool, run: Callable[[list[Call]], list[Any]]) -> list[Any]:
    """Check every call, `run` those that pass, and merge: the results in order, refused calls' errors in place."""
    checked: list[Call | Exception] = []
    for method, *args in calls:
        try:
            checked.append((method, normalize_call(method, tuple(args))))
        except (KvmgrError, TypeError) as exc:  # refused before sending: in its place, or raised below
            checked.append(exc)
    if raise_on_error:
        raise_first_error(checked)
    answers = iter(run([call for call in checked if not isinstance(call, Exception)]))
    results = [call if isinstance(call, Exception) else next(answers) for call in checked]
    return raise_first_error(results) if raise_on_error else results


def raise_first_error(results: list[Any]) -> list[Any]:
    """The results, unless one of them is an exception: then raise the first."""
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def attempt_status(error: BaseException) -> str | None:
    """How an attempt that raised `error` ended: "ok", "fail", "info" (outcome unknown), or None (not an operation).

    KeyNotFound is a get that completed; InvalidKey/InvalidValue were refused before the store was touched;
    OutcomeUnknown, or anything not kvmgr's (KeyboardInterrupt from a signal handler mid-call), may or may not
    have taken effect; any other KvmgrError (ServerUnavailable: nothing was sent, or the server refused) did not.
    """
    if isinstance(error, KeyNotFound):
        return "ok"
    if isinstance(error, InvalidKey | InvalidValue):
        return None
    if isinstance(error, OutcomeUnknown) or not isinstance(error, KvmgrError):
        return "info"
    return "fail"


def observe(attempt: Attempt, on_answer: AnswerObserver, method: str, args: tuple, timeout: float | None) -> Any:
    """Make one attempt and tell on_answer how it ended, exactly once, whatever ends it."""
    start = time.monotonic_ns()
    status: str | None = "info"  # until the attempt is known to have ended otherwise
    result: Any = None
    try:
        result = attempt(method, args, timeout)
        status = "ok"
    except BaseException as exc:
        status = attempt_status(exc)
        raise
    finally:  # even an exception raised by a signal handler meanwhile: the attempt is told of once
        if status is not None:
            known = status != "info"
            on_answer(method, args, status, result if known else None, start, time.monotonic_ns() if known else None)
    return result


def with_history(client: Transport, history: HistoryWriter | None, name: str | None = None) -> Transport | RecordingClient[Transport]:
    """The client itself, or, given a history, the client wrapped so that it records every attempt there."""
    if history is None:
        return client
    from kvmgr.client.recording import RecordingClient  # loaded only by clients that record

    return RecordingClient(client, history, name)
