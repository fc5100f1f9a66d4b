"""The workload of the bench row "asyncio, 1,000 concurrent gets from one process", for kvmgr.aio and for redis.asyncio.

Both sides do the same: store `count` distinct keys with distinct values, then, each round, start `count`
tasks that each get one key, gather them, and check that every task got its own value. A round's time runs
from the first task started to the last answer. Each function returns the seconds of every measured round
(after `warmup` unmeasured ones) and how many answers were not the task's own value (0 when all were right).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kvmgr.config import Address

WARMUP_ROUNDS = 3


@dataclass(frozen=True, kw_only=True)
class Rounds:
    """What the measured rounds of concurrent gets gave: seconds per round and the answers that were wrong."""

    seconds: list[float]
    wrong_answers: int


def workload(count: int, prefix: str) -> tuple[list[str], list[str]]:
    """The row's keys and the value each one holds, all distinct."""
    return [f"{prefix}-{number}" for number in range(count)], [f"value-{number}" for number in range(count)]


def wrong_answers(answers: list[object], values: list[str]) -> int:
    """How many answers are not the value their task asked for."""
    return sum(1 for answer, value in zip(answers, values, strict=True) if answer != value)


async def measure_rounds(get: Callable[[str], Awaitable[object]], keys: list[str], values: list[str], rounds: int,
                         warmup: int = WARMUP_ROUNDS) -> Rounds:
    """Seconds per round of len(keys) concurrent gets (after `warmup` unmeasured ones), every answer of every round checked."""
    timings: list[float] = []
    wrong = 0
    for number in range(warmup + rounds):
        started = time.perf_counter()
        answers = await asyncio.gather(*(get(key) for key in keys))
        elapsed = time.perf_counter() - started
        wrong += wrong_answers(list(answers), values)
        if number >= warmup:
            timings.append(elapsed)
    return Rounds(seconds=timings, wrong_answers=wrong)


def aio_concurrent_gets(address: str | Address, authkey: bytes | None, count: int = 1000, rounds: int = 20,
                        warmup: int = WARMUP_ROUNDS, prefix: str = "aio-bench") -> Rounds:
    """kvmgr.aio (manager or redis:// address): rounds of `count` concurrent gets from one task-filled process."""
    import kvmgr.aio

    keys, values = workload(count, prefix)

    async def main() -> Rounds:
        async with await kvmgr.aio.connect(address, authkey=authkey) as client:
            await client.store_many(dict(zip(keys, values, strict=True)))
            return await measure_rounds(client.get, keys, values, rounds, warmup)
    return asyncio.run(main())


def redis_asyncio_concurrent_gets(url: str, count: int = 1000, rounds: int = 20, warmup: int = WARMUP_ROUNDS,
                                  prefix: str = "aio-bench") -> Rounds:
    """Plain redis.asyncio: the same workload on one client over a BlockingConnectionPool of MAX_CONNECTIONS connections
    (its default pool refuses 1,000 commands at once: "Too many connections"), the cap kvmgr.aio's Redis client uses too."""
    import redis.asyncio

    from kvmgr.client.aio_redis import MAX_CONNECTIONS

    keys, values = workload(count, prefix)

    async def main() -> Rounds:
        pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=MAX_CONNECTIONS, decode_responses=True)
        client = redis.asyncio.Redis(connection_pool=pool)
        try:
            await client.mset(dict(zip(keys, values, strict=True)))
            return await measure_rounds(client.get, keys, values, rounds, warmup)
        finally:
            await client.aclose()
    return asyncio.run(main())
