"""One story, told against a Store in this process and against a server: a commit fails while a dependent write
and a reader are in flight.

A first write's commit is held (the test decides when it may go on, and then it fails); meanwhile a cas that
expects the first write's value and a reader are running. In batch mode the store applies writes before their
commit, so the cas matches the uncommitted value and queues behind it: it must fail too. In always and off
modes the commit happens under the store's lock, so the cas waits, then finds the old value. Either way the
store ends at its last committed state, and no read that starts after the failure was reported sees
the failed value.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from kvmgr.errors import KeyNotFound

COMMITTED = "committed"
FIRST = "first-" + "x" * 300_000  # large enough to need new space on a full disk
DEPENDENT = "dependent"
DEADLINE = 10.0


class Call:
    """A call running in a thread of its own: its result or exception, and when it returned."""

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.ended = 0.0
        self.thread = threading.Thread(target=self._run, args=(function, args), daemon=True)
        self.thread.start()

    def _run(self, function: Callable[..., Any], args: tuple) -> None:
        try:
            self.result = function(*args)
        except Exception as exc:
            self.error = exc
        self.ended = time.monotonic()

    def join(self) -> Call:
        """Wait for the call to end (it must, within the deadline)."""
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "the call never returned"
        return self


class Reads:
    """A thread that reads one key again and again, keeping (when the read started, what it saw)."""

    def __init__(self, get: Callable[[str], Any], key: str) -> None:
        self.seen: list[tuple[float, Any]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(get, key), daemon=True)
        self.thread.start()

    def _run(self, get: Callable[[str], Any], key: str) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.seen.append((started, get(key)))
            except KeyNotFound:
                self.seen.append((started, None))

    def stop(self) -> list[tuple[float, Any]]:
        """Stop reading; what was seen."""
        self._stop.set()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "the reader never returned"
        return self.seen


def until(condition: Callable[[], bool], what: str) -> None:
    """Poll condition until it holds (AssertionError naming `what` after the deadline)."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {DEADLINE:g}s"
        time.sleep(0.002)


def fail_a_commit_in_flight(
    fsync: str, store: Any, connect: Callable[[], Any], held: Callable[[], AbstractContextManager],
    blocked: Callable[[list[threading.Thread]], None],
) -> None:
    """The story: `store` already holds key "k" = COMMITTED; `held()` holds the next commit, which fails when it ends.

    `connect()` gives what each concurrent caller uses (a new client, or the same Store); `blocked(threads)`
    returns once those threads wait behind the held commit (in always/off mode, where the store's lock is held).
    """
    with connect() as first_caller, connect() as dependent_caller, connect() as reader:
        with held():
            first = Call(first_caller.store, "k", FIRST)
            if fsync == "batch":
                until(lambda: store.get("k") == FIRST, "the first write being applied before its commit")
            else:
                blocked([first.thread])
            dependent = Call(dependent_caller.cas, "k", FIRST, DEPENDENT)
            reads = Reads(reader.get, "k")
            if fsync == "batch":
                until(lambda: store.get("k") == DEPENDENT, "the cas matching the uncommitted value")
            else:
                blocked([dependent.thread, reads.thread])
        first.join(), dependent.join()
        seen = reads.stop()
    assert _failed(first.error), first.error
    if fsync == "batch":
        assert _failed(dependent.error), f"a write that depended on a failed one: {dependent.error or dependent.result}"
    else:
        assert dependent.error is None and dependent.result is False
    after_failure = [value for started, value in seen if started > first.ended]
    assert set(after_failure) <= {COMMITTED}, "a read after the failure saw a value that was rolled back"
    assert store.get("k") == COMMITTED


def _failed(error: BaseException | None) -> bool:
    """True for the one-line error of a write whose commit failed."""
    text = str(error)
    one_line = text.startswith("durable storage failed: ") and text.endswith(": the write was not made")
    return type(error).__name__ == "KvmgrError" and one_line


class Same:
    """The same object for every caller, as a context manager that leaves it open."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def __call__(self) -> Same:
        return self

    def __enter__(self) -> Any:
        return self.target

    def __exit__(self, *exc_info: object) -> None:
        pass
