"""Addresses, authkey sources, limits and defaults: every setting kvmgr reads, in one place."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from kvmgr.errors import ConfigError

VERSION = "0.1.0"  # kvmgr's version (kvmgr.__version__; `kvmgr info` reports it)
DEFAULT_ADDRESS = "127.0.0.1:50000"
DEFAULT_TIMEOUT = 5.0
IDLE_CHECK_AFTER = 0.05  # seconds idle after which a client first checks that the server has not closed the connection
AUTHKEY_ENV = "KVMGR_AUTHKEY"
HANDSHAKE_TIMEOUT = 5.0
RENDEZVOUS_TIMEOUT = 30.0  # the longest a rendezvous waits for its parties
MAX_PENDING_HANDSHAKES = 1024
MAX_CONNECTIONS = 1024  # authenticated connections a server serves at once (--max-connections)
WRITE_BUFFER_BYTES = 64 * 1024 * 1024  # the least a server buffers per connection of replies its peer has not read yet
STALLED_READER_TIMEOUT = 10.0  # seconds a peer whose write buffer is full may take no reply before it is disconnected
MIN_TIMEOUT = 0.001  # the shortest timeout option (a millisecond)
MAX_TIMEOUT = 86400.0  # the longest any timeout option may be (a day): socket timeouts and timers overflow far beyond
MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 16 * 1024 * 1024
MAX_REQUEST_BYTES = 64 * 1024 * 1024  # the least --max-request-bytes defaults to
REQUEST_OVERHEAD_BYTES = 64 * 1024  # room in a request for the pickle's framing around its key and values

# The server, the journal, the clients and the wire:
DRAIN_TIMEOUT = 1.0  # seconds a stopping server lets calls in flight finish
ACCEPT_PAUSE = 0.05  # seconds the server stops accepting after accept() failed (out of file descriptors)
MAX_READ = 16 << 20  # the most one read of the server asks for while a large request comes in
LISTEN_BACKLOG = 512  # connections the kernel queues before the server accepts them
COMMIT_TIMEOUT = 30.0  # seconds a writer waits for its commit before it is told durable storage failed
DEFAULT_LEASE = 30.0  # seconds a lock is held unless released, extended, or its connection closes first
BLOCKING_CEILING = 300.0  # the longest a lock acquire, wait or queue get waits on the server (a timeout of None means this)
MAX_TOMBSTONES = 100_000  # deleted keys whose version the store remembers; beyond, absent keys report a floor (README)
SWEEP_INTERVAL = 0.1  # seconds between two sweeps of expired keys on the server's loop
SWEEP_BUDGET = 2000  # the most expired keys one sweep reclaims, so that no sweep holds up other clients for long
PIPELINE_WINDOW = 128  # requests in flight at most on one connection
RETRY_ATTEMPTS = 2  # attempts a call safe to repeat gets in all, after broken connections (the first included)
PIPELINE_BYTES = 64 * 1024  # ... and bytes of requests in flight at most (one larger request goes alone)
SEND_PIECE = 256 * 1024  # a larger request is written in pieces of this size, each bounded by the time left
MAX_IDLE_CONNECTIONS = 8  # connections a client keeps open for reuse; more threads at once open more, then close them
READ_SIZE = 16 * 1024  # small enough for malloc to serve from its pools
SCAN_PAGE = 1000  # keys a Redis SCAN is asked for per round trip

Address = tuple[str, int] | str
"""A parsed address: (host, port) for TCP, or a filesystem path for a Unix socket."""


@dataclass(frozen=True)
class Limits:
    """What the server tolerates: key, value and request sizes (bytes, UTF-8 for str), unauthenticated peers, connections.

    max_request_bytes, the largest request (one call, pickled) the server reads, defaults to what the
    value limit needs: a cas carries two values and a key. write_buffer_bytes, the replies a connection may have
    waiting before the server stops reading its requests, defaults to at least the largest request (a reply of
    any size still goes out whole).
    """

    max_key_bytes: int = MAX_KEY_BYTES
    max_value_bytes: int = MAX_VALUE_BYTES
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    max_pending_handshakes: int = MAX_PENDING_HANDSHAKES
    max_request_bytes: int = 0  # 0: derived from the other limits
    max_connections: int = MAX_CONNECTIONS
    write_buffer_bytes: int = 0  # 0: derived from max_request_bytes
    stalled_reader_timeout: float = STALLED_READER_TIMEOUT

    def __post_init__(self) -> None:
        needed = 2 * self.max_value_bytes + self.max_key_bytes + REQUEST_OVERHEAD_BYTES
        if self.max_request_bytes == 0:
            object.__setattr__(self, "max_request_bytes", max(MAX_REQUEST_BYTES, needed))
        elif self.max_request_bytes < needed:
            raise ConfigError(
                f"--max-request-bytes {self.max_request_bytes} is too small for --max-value-bytes {self.max_value_bytes}: "
                f"a cas carries two values and a key, so it needs at least {needed}"
            )
        if self.write_buffer_bytes == 0:
            object.__setattr__(self, "write_buffer_bytes", max(WRITE_BUFFER_BYTES, self.max_request_bytes))


DEFAULT_LIMITS = Limits()


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
        import ipaddress  # only the server checks where it listens

        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_authkey_path() -> Path:
    """Where a generated authkey is kept and where clients look when none is configured."""
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "kvmgr" / "authkey"


def read_authkey_file(path: Path) -> bytes:
    """Read an authkey file (surrounding whitespace is ignored); any bytes make a key."""
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read authkey file {path}: {exc.strerror}") from None
    if not key:
        raise ConfigError(f"authkey file {path} is empty")
    return key


def configured_authkey(authkey_file: Path | None) -> bytes | None:
    """The key set explicitly by --authkey-file or $KVMGR_AUTHKEY, or None (warns if the file is open to others)."""
    if authkey_file is not None:
        if _open_to_others(authkey_file):
            print(f"kvmgr: warning: {_exposure(authkey_file)}: run chmod 600 {authkey_file}", file=sys.stderr, flush=True)
        return read_authkey_file(authkey_file)
    from_env = os.environ.get(AUTHKEY_ENV)
    if from_env:
        return from_env.encode()
    return None


def _open_to_others(path: Path) -> bool:
    """True if path is a regular file that its group or other users may read or write."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False  # reading it says what is wrong
    return stat.S_ISREG(mode) and bool(mode & 0o077)


def _exposure(path: Path) -> str:
    """The first half of the line that says a key file is open to others."""
    return f"authkey file {path} is open to other users (mode {stat.S_IMODE(path.stat().st_mode):04o})"


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
    """The default key file's key, written first (random) if there is none; never replaces a file that is there.

    A key file that other users may read or write is refused with ConfigError saying how to fix it.
    """
    path = default_authkey_path()
    if not path.exists():
        _create_authkey_file(path)
    if _open_to_others(path):
        raise ConfigError(
            f"{_exposure(path)}, so it is not used (and not replaced, a running server may use it): "
            f"run chmod 600 {path}, or remove it to have a new key generated"
        )
    return read_authkey_file(path), path


def _create_authkey_file(path: Path) -> None:
    """Write a random key to path (mode 0600) unless a file appeared there meanwhile: the first writer wins."""
    import secrets
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".authkey-")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(secrets.token_hex(32).encode() + b"\n")
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)  # atomic, and fails rather than replace a key another server wrote
        finally:
            os.unlink(temporary)
    except OSError as exc:
        raise ConfigError(f"cannot write a generated authkey to {path}: {exc.strerror} (set ${AUTHKEY_ENV} instead)") from None


REDIS_SCHEMES = ("redis://", "rediss://", "redis+sentinel://", "redis+cluster://")


def is_redis_url(address: object) -> bool:
    """True for redis://, rediss://, redis+sentinel:// and redis+cluster:// URLs: targets served by the Redis client."""
    return isinstance(address, str) and address.startswith(REDIS_SCHEMES)


def fresh_authkey() -> str:
    """A random authkey for a server that a kvmgr command starts itself (passed through the environment)."""
    import secrets  # only where a key is made: a client that reads one need not load it

    return secrets.token_hex(32)
