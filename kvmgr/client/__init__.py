"""The client: connect() to a kvmgr server (the manager transport) or to Redis (the redis:// transport)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from kvmgr.client.manager import Client
from kvmgr.client.namespace import with_namespace
from kvmgr.client.operations import Operations, with_history
from kvmgr.client.retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy
from kvmgr.config import DEFAULT_ADDRESS, DEFAULT_TIMEOUT, Address, client_authkey, is_redis_url, parse_address
from kvmgr.errors import ConfigError

if TYPE_CHECKING:
    from kvmgr.verify.history import HistoryWriter

__all__ = ["DEFAULT_RETRY", "NO_RETRY", "Client", "Operations", "RetryPolicy", "connect"]


def connect(
    address: str | Address = DEFAULT_ADDRESS,
    authkey: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    name: str = "client",
    authkey_file: Path | None = None,
    history: HistoryWriter | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    namespace: str | None = None,
) -> Operations:
    """Connect to a kvmgr server at address ('HOST:PORT' or a socket path), or to Redis at 'redis://host:port/db'.

    Given a namespace (or `?namespace=NS` in a Redis URL), the client sees only the keys, locks, queues and
    rendezvous under it (kvmgr.client.namespace). Given a history, the client comes wrapped in a RecordingClient
    that records every call there; `retry` says which calls are repeated after a broken connection. Raises
    ServerUnavailable or AuthenticationFailed within `timeout` if it cannot connect.
    """
    if isinstance(address, str) and is_redis_url(address):
        from kvmgr.client.redis_transport import connect_redis  # redis-py is an optional extra

        address, namespace = split_namespace(address, namespace)
        client: Operations = connect_redis(address, timeout, name, retry=retry)
    else:
        parsed = parse_address(address) if isinstance(address, str) else address
        key = authkey if authkey is not None else client_authkey(authkey_file)
        client = Client(parsed, key, timeout, name, retry=retry)
        client._pool.release(client._pool.acquire())  # connect now, so a wrong address or key fails here
    return with_history(with_namespace(client, namespace), history)


def split_namespace(url: str, namespace: str | None) -> tuple[str, str | None]:
    """A Redis URL without its ?namespace= option, and the namespace (the argument, or the URL's; ConfigError if both differ)."""
    parts = urlsplit(url)
    options = parse_qsl(parts.query, keep_blank_values=True)
    named = [value for option, value in options if option == "namespace"]
    if not named:
        return url, namespace
    if len(named) > 1 or (namespace is not None and namespace != named[0]):
        raise ConfigError(f"two namespaces given: {', '.join(map(repr, [*named, *([namespace] if namespace else [])]))}")
    rest = urlencode([(option, value) for option, value in options if option != "namespace"])
    return urlunsplit(parts._replace(query=rest)), named[0]
