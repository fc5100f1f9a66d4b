"""The workload of the bench row "asyncio, 1,000 concurrent gets from one process", for kvmgr.aio and for redis.asyncio.

Both sides do the same: store `count` distinct keys with distinct values, then, each round, start `count`
tasks that each get one key, gather them, and check every task got its own value. A round's time is from
the first task started to the last answer. `kvmgr bench` imports `aio_concurrent_gets` and
`redis_asyncio_concurrent_gets` and reports the median round of each and their ratio.
"""

from __future__ import annotations

import asyncio
import time

from kvmgr.config import Address

WARMUP_ROUNDS = 3


async def _rounds(get: object, keys: list[str], values: list[str], rounds: int) -> list[float]:
    """Seconds per round of len(keys) concurrent gets (after WARMUP_ROUNDS unmeasured ones); AssertionError on a wrong answer."""
    timings: list[float] = []
    for number in range(WARMUP_ROUNDS + rounds):
        started = time.perf_counter()
        answers = await asyncio.gather(*(get(key) for key in keys))  # type: ignore[operator]
        elapsed = time.perf_counter() - started
        if list(answers) != values:
            raise AssertionError("a concurrent get got an answer that was not its own")
        if number >= WARMUP_ROUNDS:
            timings.append(elapsed)
    return timings


def aio_concurrent_gets(address: str | Address, authkey: bytes | None, count: int = 1000, rounds: int = 20) -> list[float]:
    """kvmgr.aio (manager or redis:// address): seconds per round of `count` concurrent gets from one process."""
    import kvmgr.aio

    keys = [f"aio-bench-{number}" for number in range(count)]
    values = [f"value-{number}" for number in range(count)]

    async def main() -> list[float]:
        async with await kvmgr.aio.connect(address, authkey=authkey) as client:
            await client.store_many(dict(zip(keys, values, strict=True)))
            return await _rounds(client.get, keys, values, rounds)
    return asyncio.run(main())


def redis_asyncio_concurrent_gets(url: str, count: int = 1000, rounds: int = 20) -> list[float]:
    """Plain redis.asyncio: the same workload on one client over a BlockingConnectionPool of MAX_CONNECTIONS connections
    (its default pool refuses 1,000 commands at once: "Too many connections"), the cap kvmgr.aio's Redis client uses too."""
    import redis.asyncio

    from kvmgr.client.aio_redis import MAX_CONNECTIONS

    keys = [f"aio-bench-{number}" for number in range(count)]
    values = [f"value-{number}" for number in range(count)]

    async def main() -> list[float]:
        pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=MAX_CONNECTIONS, decode_responses=True)
        client = redis.asyncio.Redis(connection_pool=pool)
        try:
            await client.mset(dict(zip(keys, values, strict=True)))
            return await _rounds(client.get, keys, values, rounds)
        finally:
            await client.aclose()
    return asyncio.run(main())
