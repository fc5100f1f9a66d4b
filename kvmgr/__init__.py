"""kvmgr: a key-value store shared by Python processes through a multiprocessing.managers server.

`kvmgr.connect` and `kvmgr.Client` load the client when first used, so that `import kvmgr` (and every command
that does not talk to a server, `kvmgr --help` among them) starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmgr.config import VERSION
from kvmgr.errors import (
    AuthenticationFailed,
    ConfigError,
    HistoryError,
    InvalidKey,
    InvalidValue,
    KeyNotFound,
    KvmgrError,
    LockLost,
    LockTimeout,
    OutcomeUnknown,
    ProtocolError,
    QueueEmpty,
    ScenarioError,
    ServerUnavailable,
    UnknownOperation,
    WaitTimeout,
    WrongType,
)

if TYPE_CHECKING:
    from kvmgr.client import Client, connect

__version__ = VERSION

__all__ = [
    "AuthenticationFailed",
    "Client",
    "ConfigError",
    "HistoryError",
    "InvalidKey",
    "InvalidValue",
    "KeyNotFound",
    "KvmgrError",
    "LockLost",
    "LockTimeout",
    "OutcomeUnknown",
    "ProtocolError",
    "QueueEmpty",
    "ScenarioError",
    "ServerUnavailable",
    "UnknownOperation",
    "WaitTimeout",
    "WrongType",
    "__version__",
    "connect",
]

_LAZY = {"Client", "connect"}


def __getattr__(name: str) -> Any:
    """kvmgr.connect and kvmgr.Client, imported on first use."""
    if name in _LAZY:
        from kvmgr import client

        return getattr(client, name)
    raise AttributeError(f"module 'kvmgr' has no attribute {name!r}")
