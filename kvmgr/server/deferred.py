"""Deferred: a reply that comes later, settled once from any thread; the server's loop (or a blocked caller) hears of it.

A Store method may return a Deferred instead of its value: a durable write answers when its group commit is
fsynced, a rendezvous when its last party arrives. The loop gives it a timer (`timeout`, failing it with
`timeout_error`) and cancels it when its connection closes; `on_cancel` hooks let whoever deferred the call
take it back (a rendezvous party leaves). A caller in the same process waits for it with `result()`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

Callback = Callable[["Deferred"], object]


class Deferred:
    """The outcome of a call that answers later: a value or an error, decided once."""

    __slots__ = ("_callbacks", "_cancel_hooks", "_lock", "done", "error", "stop_error", "timeout", "timeout_error", "value")

    def __init__(self, timeout: float | None = None, timeout_error: Exception | None = None) -> None:
        self.timeout = timeout  # seconds the call may wait (None: no limit)
        self.timeout_error = timeout_error
        self.stop_error: Exception | None = None  # what the call gets if the server stops first (None: the loop's own)
        self.done = False
        self.value: Any = None
        self.error: Exception | None = None
        self._lock = threading.Lock()
        self._callbacks: list[Callback] = []
        self._cancel_hooks: list[Callable[[], object]] = []

    def resolve(self, value: Any) -> bool:
        """Answer with value; False if the call was already decided."""
        return self._settle(value, None)

    def fail(self, error: Exception) -> bool:
        """Answer with error; False if the call was already decided."""
        return self._settle(None, error)

    def cancel(self, error: Exception) -> bool:
        """Take the call back (its connection closed, or it timed out): run the cancel hooks, then fail it with error."""
        with self._lock:
            if self.done:
                return False
            hooks, self._cancel_hooks = self._cancel_hooks, []
        for hook in hooks:
            hook()
        return self.fail(error)

    def _settle(self, value: Any, error: Exception | None) -> bool:
        with self._lock:
            if self.done:
                return False
            self.value, self.error, self.done = value, error, True
            callbacks, self._callbacks, self._cancel_hooks = self._callbacks, [], []
        for callback in callbacks:
            callback(self)
        return True

    def add_done_callback(self, callback: Callback) -> None:
        """Call callback(self) once decided (at once, in this thread, if it already is)."""
        with self._lock:
            if not self.done:
                self._callbacks.append(callback)
                return
        callback(self)

    def on_cancel(self, hook: Callable[[], object]) -> None:
        """Call hook() if the call is cancelled before it is decided."""
        with self._lock:
            if not self.done:
                self._cancel_hooks.append(hook)

    def then(self, function: Callable[[Any], Any], timeout: float | None = None, timeout_error: Exception | None = None) -> Deferred:
        """A new Deferred of function(value), failing with this one's error."""
        derived = Deferred(timeout, timeout_error)

        def settle(source: Deferred) -> None:
            if source.error is not None:
                derived.fail(source.error)
            else:
                derived.resolve(function(source.value))

        self.add_done_callback(settle)
        return derived

    def result(self) -> Any:
        """Wait for the outcome (at most `timeout`, then fail with timeout_error); return the value or raise the error."""
        if not self.done:
            decided = threading.Event()
            self.add_done_callback(lambda _: decided.set())
            if not decided.wait(self.timeout):
                self.cancel(self.timeout_error or TimeoutError("the call timed out"))
        if self.error is not None:
            raise self.error
        return self.value


def settle(reply: Any) -> Any:
    """A Store call's value: reply itself, or a Deferred's outcome waited for (for callers in the same process)."""
    return reply.result() if type(reply) is Deferred else reply
