"""The client: connect() to a kvmgr server (the manager transport) or to Redis (the redis:// transport)."""

from pathlib import Path

from kvmgr.client.manager import Client
from kvmgr.client.operations import Operations
from kvmgr.config import DEFAULT_ADDRESS, DEFAULT_TIMEOUT, Address, client_authkey, is_redis_url, parse_address
from kvmgr.verify.history import HistoryWriter

__all__ = ["Client", "Operations", "connect"]


def connect(
    address: str | Address = DEFAULT_ADDRESS,
    authkey: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    name: str = "client",
    authkey_file: Path | None = None,
    history: HistoryWriter | None = None,
) -> Operations:
    """Connect to a kvmgr server at address ('HOST:PORT' or a socket path), or to Redis at 'redis://host:port/db'.

    Raises ServerUnavailable or AuthenticationFailed within `timeout` if it cannot.
    """
    if isinstance(address, str) and is_redis_url(address):
        from kvmgr.client.redis_transport import connect_redis  # redis-py is an optional extra

        return connect_redis(address, timeout, name=name, history=history)
    parsed = parse_address(address) if isinstance(address, str) else address
    key = authkey if authkey is not None else client_authkey(authkey_file)
    client = Client(parsed, key, timeout, name, history)
    client._pool.release(client._pool.acquire())  # connect now, so a wrong address or key fails here
    return client
