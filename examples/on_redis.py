"""The same programs against Redis: only the address changes, from "HOST:PORT" to a redis:// URL.

This runs the other examples' main() functions on Redis, unchanged. One thing does differ: Redis cannot tell
that a client's connection closed, so a lock whose holder was killed stays taken until its lease ends. The
lock example therefore gets a 2 s lease here, and the next holder waits out about those 2 s.

    python examples/on_redis.py                              # starts a throwaway redis-server (must be installed)
    python examples/on_redis.py redis://127.0.0.1:6379/15    # or uses yours (pip install 'kvmgr[redis]')
"""

from __future__ import annotations

import sys

import cache_expiry
import counter_pool
import crash_safe_lock
import job_queue
import wait_for_config
from servers import redis_server


def main(url: str) -> None:
    """Run every example on the Redis server at url."""
    for example in (counter_pool, cache_expiry, job_queue, wait_for_config):
        print(f"--- {example.__name__} on {url}")
        example.main(url)
    print(f"--- crash_safe_lock on {url}")
    crash_safe_lock.main(url, lease=2.0)


if __name__ == "__main__":
    with redis_server(sys.argv[1] if len(sys.argv) > 1 else None) as url:
        main(url)
