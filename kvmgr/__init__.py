"""kvmgr: a key-value store shared by Python processes through a multiprocessing.managers server."""

from kvmgr.client import Client, connect
from kvmgr.errors import (
    AuthenticationFailed,
    ConfigError,
    HistoryError,
    InvalidKey,
    InvalidValue,
    KeyNotFound,
    KvmgrError,
    OutcomeUnknown,
    ProtocolError,
    ScenarioError,
    ServerUnavailable,
    UnknownOperation,
)

__version__ = "0.1.0"

__all__ = [
    "AuthenticationFailed",
    "Client",
    "ConfigError",
    "HistoryError",
    "InvalidKey",
    "InvalidValue",
    "KeyNotFound",
    "KvmgrError",
    "OutcomeUnknown",
    "ProtocolError",
    "ScenarioError",
    "ServerUnavailable",
    "UnknownOperation",
    "__version__",
    "connect",
]
