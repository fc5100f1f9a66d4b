"""kvmgr: a key-value store shared by Python processes through a multiprocessing.managers server."""

from kvmgr.client import Client, connect
from kvmgr.config import VERSION
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
    "OutcomeUnknown",
    "ProtocolError",
    "ScenarioError",
    "ServerUnavailable",
    "UnknownOperation",
    "__version__",
    "connect",
]
