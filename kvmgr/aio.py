"""kvmgr for asyncio: `client = await kvmgr.aio.connect(address)`, then `await client.get(key)` from any number of tasks.

The same operations, errors, timeouts, retry policy and histories as the sync client (kvmgr.connect). On a
kvmgr server the client is native asyncio: the calls of all tasks are pipelined on one connection, each
blocking call (lock acquire, wait, queue get, rendezvous) on one of its own. On 'redis://' it is built on
redis.asyncio (the optional extra kvmgr[redis]).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kvmgr.client.aio_coordination import AsyncLock, AsyncQueue
from kvmgr.client.aio_manager import AsyncClient
from kvmgr.client.aio_operations import AsyncOperations, with_history_async
from kvmgr.client.retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy
from kvmgr.config import DEFAULT_ADDRESS, DEFAULT_TIMEOUT, Address, client_authkey, is_redis_url, parse_address

if TYPE_CHECKING:
    from kvmgr.verify.history import HistoryWriter

__all__ = ["DEFAULT_RETRY", "NO_RETRY", "AsyncClient", "AsyncLock", "AsyncOperations", "AsyncQueue", "RetryPolicy", "connect"]


async def connect(
    address: str | Address = DEFAULT_ADDRESS,
    authkey: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    name: str = "client",
    authkey_file: Path | None = None,
    history: HistoryWriter | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> AsyncOperations:
    """Connect to a kvmgr server at address ('HOST:PORT' or a socket path), or to Redis at 'redis://host:port/db'.

    Given a history, the client comes wrapped in an AsyncRecordingClient that records every call there;
    `retry` says which calls are repeated after a broken connection. Raises ServerUnavailable or
    AuthenticationFailed within `timeout` if it cannot connect. Use it as `async with await connect(...) as client:`
    or close it with `await client.close()`.
    """
    client: AsyncOperations
    if isinstance(address, str) and is_redis_url(address):
        from kvmgr.client.aio_redis import connect_redis_async  # redis-py is an optional extra

        client = await connect_redis_async(address, timeout, name, retry=retry)
    else:
        parsed = parse_address(address) if isinstance(address, str) else address
        key = authkey if authkey is not None else client_authkey(authkey_file)
        manager = AsyncClient(parsed, key, timeout, name, retry=retry)
        await manager._shared_channel()  # connect now, so a wrong address or key fails here
        client = manager
    return with_history_async(client, history)
