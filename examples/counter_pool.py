"""A counter shared by the workers of a multiprocessing.Pool: `incr` is one atomic step, so no update is lost.

For contrast it runs the same work on a `multiprocessing.Manager().dict()` with `d[key] += 1`, which is a read
and then a write: two workers read the same number, both write number + 1, and one update is gone.

    python examples/counter_pool.py
"""

from __future__ import annotations

import multiprocessing
from collections.abc import MutableMapping

from servers import kvmgr_server

import kvmgr
from kvmgr.client import Operations

WORKERS, TASKS, BUMPS = 4, 8, 500  # 8 tasks of 500 increments each, spread over 4 worker processes

client: Operations  # one client per worker process, opened by the Pool's initializer


def open_client(address: str) -> None:
    """Runs once in each worker as it starts: connect to the server (the authkey comes from $KVMGR_AUTHKEY)."""
    global client
    client = kvmgr.connect(address)


def bump_kvmgr(_task: int) -> None:
    """Add 1 to the shared counter, BUMPS times."""
    for _ in range(BUMPS):
        client.incr("hits")  # read, add and write in one step on the server


def bump_manager_dict(shared: MutableMapping[str, int]) -> None:
    """The same on a Manager dict proxy: each += is a get, then a set."""
    for _ in range(BUMPS):
        shared["hits"] += 1


def main(address: str) -> None:
    """Count TASKS * BUMPS increments both ways and print what each counter ends at."""
    expected = TASKS * BUMPS
    with kvmgr.connect(address) as setup:
        setup.delete("hits")  # start from nothing (an absent key counts as 0 for incr)
        with multiprocessing.Pool(WORKERS, initializer=open_client, initargs=(address,)) as pool:
            pool.map(bump_kvmgr, range(TASKS))
        print(f"kvmgr incr: {setup.get('hits')!r} of {expected}")

    with multiprocessing.Manager() as manager, multiprocessing.Pool(WORKERS) as pool:
        shared = manager.dict(hits=0)
        pool.map(bump_manager_dict, [shared] * TASKS)
        print(f"Manager dict d['hits'] += 1: {shared['hits']} of {expected} (updates lost in the race: {expected - shared['hits']})")


if __name__ == "__main__":
    with kvmgr_server() as address:
        main(address)
