"""Operations: the client API every transport shares, with retries of safe calls and history recording.

A transport (the manager connection, Redis) implements only `_call_once`; everything a caller sees
(the method set, which calls are retried, what goes into a history) is defined once, here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Self, cast

from kvmgr.errors import InvalidKey, InvalidValue, KeyNotFound, KvmgrError, OutcomeUnknown, ServerUnavailable
from kvmgr.protocol.operations import RECORDED, SAFE_TO_REPEAT
from kvmgr.protocol.validation import Value, normalize_call
from kvmgr.verify.history import HistoryWriter, Operation, encode_value


class Operations:
    """The key-value API. Subclasses provide `_call_once(method, args, timeout)` and `close()`."""

    name: str = "client"
    timeout: float = 5.0
    history: HistoryWriter | None = None

    def store(self, key: str, value: Value) -> str:
        """Set key; "saved" if it was new, "updated" if it overwrote a value."""
        return cast("str", self.call("store", key, value))

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

    def quit(self) -> str:
        """Ask the server to shut down gracefully; returns its confirmation."""
        return cast("str", self.call("quit"))

    def rendezvous(self, name: str, parties: int, timeout: float | None = None) -> int:
        """Block until `parties` clients have called rendezvous(name), then return together."""
        wait = self.timeout if timeout is None else timeout
        return cast("int", self.call("rendezvous", name, parties, wait, timeout=wait + self.timeout))

    def pipeline(self, calls: Iterable[tuple], raise_on_error: bool = True) -> list[Any]:
        """Run many calls, each a tuple (method, *args), and return their results in order.

        Transports that can keep several requests in flight override this; here they run one by one.
        With raise_on_error=False a call's error is returned in its place instead of raised.
        """
        results: list[Any] = []
        for method, *args in calls:
            try:
                results.append(self.call(method, *args))
            except ServerUnavailable:
                raise  # the connection is gone: no later call can succeed either
            except (KvmgrError, TypeError) as exc:  # the call's own error, in its place
                results.append(exc)
        return raise_first_error(results) if raise_on_error else results

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """Run one operation; a safe one whose connection broke mid-call is repeated once on a new connection."""
        args = normalize_call(method, args)
        if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
            raise InvalidValue(f"{method}: timeout must be a number of seconds above 0, not {timeout!r}")
        attempt = self._call_once if self.history is None else self._recorded_attempt
        try:
            return attempt(method, args, timeout)
        except OutcomeUnknown as exc:
            if method not in SAFE_TO_REPEAT or exc.timed_out:
                raise
        return attempt(method, args, timeout)

    def _recorded_attempt(self, method: str, args: tuple, timeout: float | None) -> Any:
        """One attempt of a call, written to the history whatever its outcome.

        A call that ends without its reply (a broken connection, a timeout, or an exception such as
        KeyboardInterrupt raised while it waited) is recorded as info: it may or may not have taken effect.
        """
        start = time.monotonic_ns()
        status: str | None = "info"  # until the call is known to have ended otherwise
        result: Any = None
        try:
            result = self._call_once(method, args, timeout)
            status = "ok"
        except KeyNotFound:
            status = "ok"
            raise
        except (InvalidKey, InvalidValue):
            status = None  # refused before the store was touched, and not a well-formed operation to record
            raise
        except OutcomeUnknown:
            raise
        except KvmgrError:  # nothing was sent (ServerUnavailable), or the server refused the call
            status = "fail"
            raise
        finally:  # whatever ends the call, even an exception raised by a signal handler meanwhile, it is recorded once
            if status is not None:
                known = status != "info"
                self._record(method, args, status, result if known else None, start, time.monotonic_ns() if known else None)
        return result

    def _call_once(self, method: str, args: tuple, timeout: float | None) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Release the connection."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _record(self, method: str, args: tuple, status: str, result: Any, start: int, end: int | None) -> None:
        if self.history is None or method not in RECORDED:
            return
        for operation in history_operations(self.name, method, args, status, result, start, end):
            self.history.record(operation)


def raise_first_error(results: list[Any]) -> list[Any]:
    """The results, unless one of them is an exception: then raise the first."""
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def history_operations(client: str, method: str, args: tuple, status: str, result: Any, start: int, end: int | None) -> list[Operation]:
    """The history entries for one call; a batch becomes one entry per key, sharing start and end."""
    known = status == "ok"

    def entry(op: str, key: str, value: Any = None, expected: Any = None, outcome: Any = None) -> Operation:
        return Operation(client, op, key, encode_value(value), encode_value(expected), outcome if known else None, status, start, end)

    if method == "get_many":
        return [entry("get", key, outcome=encode_value((result or {}).get(key))) for key in args[0]]
    if method == "store_many":
        return [entry("store", key, value, outcome=(result or {}).get(key)) for key, value in args[0].items()]
    if method == "cas":
        return [entry("cas", args[0], args[2], args[1], result)]
    if method == "store":
        return [entry("store", args[0], args[1], outcome=result)]
    if method == "get":
        return [entry("get", args[0], outcome=encode_value(result))]
    return [entry("delete", args[0], outcome=result)]
