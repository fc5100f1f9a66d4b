"""Every exception kvmgr raises, under one base class: KvmgrError."""

from __future__ import annotations


class KvmgrError(Exception):
    """Base class of every kvmgr error."""


class KeyNotFound(KvmgrError, KeyError):
    """The key is not in the store."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"Invalid Key:{self.key}"


class InvalidKey(KvmgrError, TypeError):
    """A key is not a non-empty str, or is longer than the server allows."""


class InvalidValue(KvmgrError, TypeError):
    """A value is not str or bytes, or is larger than the server allows."""


class WrongType(KvmgrError, TypeError):
    """An operation met a value of the wrong type at the key (incr on a str, say); nothing changed."""


class LockTimeout(KvmgrError, TimeoutError):
    """A lock was not acquired within the timeout."""


class LockLost(KvmgrError):
    """The lock is not held with this token any more (its lease ended, or its connection closed): nothing was freed."""


class WaitTimeout(KvmgrError, TimeoutError):
    """wait(): the key did not change within the timeout."""


class QueueEmpty(KvmgrError, TimeoutError):
    """A queue get found no item within the timeout."""


class UnknownOperation(KvmgrError, AttributeError):
    """A call named an operation the store does not have."""


class ServerUnavailable(KvmgrError, ConnectionError):
    """The server could not be reached, or did not answer within the timeout."""


class AuthenticationFailed(KvmgrError, ConnectionError):
    """The server rejected our authkey (or we rejected the server's)."""


class OutcomeUnknown(ServerUnavailable):
    """The connection broke after a request was sent: it may or may not have taken effect."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class ConfigError(KvmgrError, ValueError):
    """A bad address, authkey source or option."""


class ScenarioError(KvmgrError, ValueError):
    """A scenario file is malformed: names the file, the step and the problem."""


class HistoryError(KvmgrError, ValueError):
    """A history file is malformed: names the line and the problem."""


class ProtocolError(KvmgrError):
    """A peer sent bytes that are not a kvmgr request or reply (or pickled something other than plain data)."""


ERROR_CLASSES: dict[str, type[KvmgrError]] = {
    name: cls for name, cls in list(globals().items()) if isinstance(cls, type) and issubclass(cls, KvmgrError)
}
"""Every kvmgr error by name (scenario files name them; replies may carry them)."""

EXIT_OK, EXIT_NEGATIVE, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
EXIT_UNKNOWN = EXIT_UNAVAILABLE  # kvmgr check: no verdict within its time limit
"""Exit statuses of every command: success, a negative answer (key not found, a FAIL, not linearizable),
bad usage or input, and a server that could not be reached, used or started."""


def exit_status(error: Exception) -> int:
    """The exit status a command ends with when `error` stops it."""
    if isinstance(error, ConfigError | ScenarioError | HistoryError | InvalidKey | InvalidValue | WrongType):
        return EXIT_USAGE
    return EXIT_UNAVAILABLE
