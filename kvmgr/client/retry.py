"""RetryPolicy: which calls a client repeats after a broken connection, derived from the operation table."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kvmgr.config import RETRY_ATTEMPTS
from kvmgr.errors import AuthenticationFailed, OutcomeUnknown, ServerUnavailable
from kvmgr.protocol.operations import OPERATIONS, OpSpec

Attempt = Callable[[str, tuple, "float | None"], Any]
"""One attempt of a call: (method, normalized args, timeout) -> its result; what a transport's `_call` is."""


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Repeat a call whose connection broke mid-call (not one that timed out), if its operation is safe to repeat.

    `attempts` counts the first one: 2 repeats a call once, 1 never repeats anything.
    """

    safe_to_repeat: frozenset[str]
    attempts: int = RETRY_ATTEMPTS

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"attempts must be a whole number >= 1, not {self.attempts!r}")

    @classmethod
    def from_table(cls, operations: Iterable[OpSpec] = OPERATIONS, attempts: int = RETRY_ATTEMPTS) -> RetryPolicy:
        """The policy the operation table declares: repeat the operations marked safe_to_repeat."""
        return cls(safe_to_repeat=frozenset(spec.name for spec in operations if spec.safe_to_repeat), attempts=attempts)

    def may_repeat(self, method: str, error: BaseException, attempts_made: int) -> bool:
        """True if a call whose attempt number `attempts_made` raised `error` may be made once more."""
        return (
            attempts_made < self.attempts and method in self.safe_to_repeat
            and isinstance(error, OutcomeUnknown) and not error.timed_out
        )

    def run(self, attempt: Attempt, method: str, args: tuple, timeout: float | None) -> Any:
        """The result of the first attempt that succeeds; the error of the last one when the policy allows no more."""
        try:
            return attempt(method, args, timeout)
        except OutcomeUnknown as exc:
            return self.repeat(attempt, method, args, timeout, exc)

    def repeat(self, attempt: Attempt, method: str, args: tuple, timeout: float | None, error: OutcomeUnknown) -> Any:
        """After a first attempt that raised `error`: the result of the first repeat that succeeds, else the last error.

        A repeat that could not be sent (the server unreachable) leaves the outcome unknown: the OutcomeUnknown
        stands, never a "not made" ServerUnavailable, since an earlier attempt may have taken effect.
        """
        made = 1
        while self.may_repeat(method, error, made):
            made += 1
            try:
                return attempt(method, args, timeout)
            except OutcomeUnknown as exc:
                error = exc
            except (ServerUnavailable, AuthenticationFailed) as exc:  # the repeat was not even sent: still unknown
                raise error from exc
        raise error


DEFAULT_RETRY = RetryPolicy.from_table()
"""Every client's policy unless it is given another: safe operations are repeated once."""

NO_RETRY = RetryPolicy(safe_to_repeat=frozenset(), attempts=1)
"""A policy that never repeats a call: every broken connection reaches the caller as OutcomeUnknown."""
