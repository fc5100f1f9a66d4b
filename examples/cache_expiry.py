"""A cache with expiry shared by worker processes: compute once, reuse everywhere, recompute when it expires.

Every worker looks a result up first; on a miss it computes it and stores it with a ttl, after which the store
drops it by itself. `add` stores only if the key is absent, so when two workers miss at once the first
result stays and neither overwrites the other.

    python examples/cache_expiry.py
"""

from __future__ import annotations

import time
from multiprocessing.pool import Pool

from servers import kvmgr_server

import kvmgr
from kvmgr.client import Operations

TTL = 2.0  # seconds a cached result lives
NUMBERS = range(20, 28)

client: Operations  # one client per worker process


def open_client(address: str) -> None:
    """Runs once in each worker: connect (the authkey comes from $KVMGR_AUTHKEY)."""
    global client
    client = kvmgr.connect(address)


def slow_square(n: int) -> int:
    """The expensive computation the cache saves."""
    time.sleep(0.05)
    return n * n


def cached_square(n: int) -> int:
    """n squared, from the cache when it is there; computed (and cached for TTL seconds) when it is not."""
    key = f"square:{n}"
    try:
        value = client.get(key)  # a hit: the int that was stored, still an int
        assert isinstance(value, int)
        return value
    except kvmgr.KeyNotFound:  # never computed, or expired
        value = slow_square(n)
        client.add(key, value, ttl=TTL)  # False if another worker cached it meanwhile: fine, it is the same answer
        client.incr("cache:computed")  # count the misses, to show what the cache saved
        return value


def run_round(pool: Pool, setup: Operations, label: str) -> None:
    """Ask the workers for every square once and say how many had to be computed."""
    setup.delete("cache:computed")
    results = pool.map(cached_square, NUMBERS)
    computed = setup.pop("cache:computed", 0)
    print(f"{label}: {len(results)} squares, {computed} computed, {len(results) - computed} from the cache")


def main(address: str) -> None:
    """Three rounds of lookups: a cold cache, a warm one, and one after every entry expired."""
    with kvmgr.connect(address) as setup, Pool(4, initializer=open_client, initargs=(address,)) as pool:
        for n in NUMBERS:
            setup.delete(f"square:{n}")  # start cold (matters only on a server that outlives this program)
        run_round(pool, setup, "round 1, cold cache")
        run_round(pool, setup, "round 2, warm cache")
        left = setup.ttl(f"square:{NUMBERS[0]}")  # seconds this entry has left (None would mean it never expires)
        print(f"square:{NUMBERS[0]} has {left:.1f} s left to live")
        time.sleep(TTL + 0.1)  # let every entry expire
        print(f"after {TTL + 0.1:.1f} s, square:{NUMBERS[0]} is cached: {setup.exists(f'square:{NUMBERS[0]}')}")
        run_round(pool, setup, "round 3, expired")


if __name__ == "__main__":
    with kvmgr_server() as address:
        main(address)
