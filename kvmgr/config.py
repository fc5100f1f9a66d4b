"""Addresses, authkey sources, limits and defaults: every setting kvmgr reads, in one place."""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from kvmgr.errors import ConfigError

DEFAULT_ADDRESS = "127.0.0.1:50000"
DEFAULT_TIMEOUT = 5.0
IDLE_CHECK_AFTER = 0.05  # seconds idle after which a client first checks that the server has not closed the connection
AUTHKEY_ENV = "KVMGR_AUTHKEY"
HANDSHAKE_TIMEOUT = 5.0
RENDEZVOUS_TIMEOUT = 30.0  # the longest a rendezvous waits for its parties
MAX_PENDING_HANDSHAKES = 1024
MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 16 * 1024 * 1024

Address = tuple[str, int] | str
"""A parsed address: (host, port) for TCP, or a filesystem path for a Unix socket."""


@dataclass(frozen=True)
class Limits:
    """What the server tolerates: key and value sizes (bytes, UTF-8 for str) and unauthenticated peers."""

    max_key_bytes: int = MAX_KEY_BYTES
    max_value_bytes: int = MAX_VALUE_BYTES
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    max_pending_handshakes: int = MAX_PENDING_HANDSHAKES


DEFAULT_LIMITS = Limits()


def positive_int(text: str) -> int:
    """An argparse type: a whole number above 0."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def parse_address(text: str) -> Address:
    """Parse 'HOST:PORT', '[V6]:PORT' or a filesystem path (anything with a '/')."""
    if "/" in text:
        return text
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"bad address {text!r}: expected HOST:PORT or a socket path containing '/'")
    return host.strip("[]"), int(port_text)


def format_address(address: Address) -> str:
    """Write an address the way parse_address reads it."""
    if isinstance(address, str):
        return address
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address_family(address: Address) -> socket.AddressFamily:
    """The socket family an address needs."""
    if isinstance(address, str):
        return socket.AF_UNIX
    return socket.AF_INET6 if ":" in address[0] else socket.AF_INET


def is_loopback(address: Address) -> bool:
    """True for Unix sockets and loopback hosts: only this machine can reach them."""
    if isinstance(address, str):
        return True
    host = address[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_authkey_path() -> Path:
    """Where a generated authkey is kept and where clients look when none is configured."""
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "kvmgr" / "authkey"


def read_authkey_file(path: Path) -> bytes:
    """Read an authkey file (surrounding whitespace is ignored)."""
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read authkey file {path}: {exc.strerror}") from None
    if not key:
        raise ConfigError(f"authkey file {path} is empty")
    return key


def configured_authkey(authkey_file: Path | None) -> bytes | None:
    """The key set explicitly by --authkey-file or $KVMGR_AUTHKEY, or None."""
    if authkey_file is not None:
        return read_authkey_file(authkey_file)
    from_env = os.environ.get(AUTHKEY_ENV)
    if from_env:
        return from_env.encode()
    return None


def client_authkey(authkey_file: Path | None = None) -> bytes:
    """The key a client uses: --authkey-file, then $KVMGR_AUTHKEY, then the default file."""
    key = configured_authkey(authkey_file)
    if key is not None:
        return key
    path = default_authkey_path()
    if not path.exists():
        raise ConfigError(f"no authkey: set ${AUTHKEY_ENV}, pass --authkey-file, or start a server to create {path}")
    return read_authkey_file(path)


def generated_authkey() -> tuple[bytes, Path]:
    """Reuse the default key file if it is private to this user, else write a new random key there."""
    path = default_authkey_path()
    if path.exists() and (path.stat().st_mode & 0o077) == 0:
        return read_authkey_file(path), path
    key = secrets.token_hex(32).encode()
    temporary = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(key + b"\n")
        os.replace(temporary, path)
    except OSError as exc:
        raise ConfigError(f"cannot write a generated authkey to {path}: {exc.strerror} (set ${AUTHKEY_ENV} instead)") from None
    return key, path


def is_redis_url(address: object) -> bool:
    """True for redis:// and rediss:// URLs: targets served by the Redis client, not a kvmgr server."""
    return isinstance(address, str) and address.startswith(("redis://", "rediss://"))


def fresh_authkey() -> str:
    """A random authkey for a server that a kvmgr command starts itself (passed through the environment)."""
    return secrets.token_hex(32)
