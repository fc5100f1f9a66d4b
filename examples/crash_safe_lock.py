"""A lock that survives a crashed holder: a process takes the lock and is killed with -9; the next one gets it.

On kvmgr's server a lock is tied to the connection it was granted on, so when the holder dies (even by
SIGKILL, with no chance to clean up) the kernel closes its socket and the server frees the lock at once,
not when its 30 s lease runs out. Every grant comes with a fencing token, larger than any before: hand it to
whatever the lock protects, and have that refuse a write carrying an older token (a holder that was only
paused, not dead, may wake up still believing it holds the lock).

    python examples/crash_safe_lock.py
"""

from __future__ import annotations

import multiprocessing
import time

from servers import kvmgr_server

import kvmgr
from kvmgr.client import Operations


def hold_forever(address: str, lease: float) -> None:
    """Take the lock, say so (with the token) on the "held" queue, and sit on it until killed."""
    with kvmgr.connect(address) as client:
        token = client.lock("reports", lease=lease).acquire(timeout=10)
        client.queue("held").put(token)
        time.sleep(3600)


def fenced_write(client: Operations, token: int, text: str) -> bool:
    """Write the report unless a newer token already wrote it: the protected resource keeps the highest token."""
    while True:
        current = client.as_mapping().get("report")  # None if absent
        if isinstance(current, dict) and current["token"] > token:
            return False  # a stale holder: refused
        if client.cas("report", current, {"token": token, "text": text}):  # nobody wrote in between
            return True


def main(address: str, lease: float = 30.0) -> None:
    """Crash a holder and measure how long the next process waits for the lock; then show fencing."""
    with kvmgr.connect(address) as client:
        client.delete("report")
        holder = multiprocessing.Process(target=hold_forever, args=(address, lease))
        holder.start()
        try:
            old_token = client.queue("held").get(timeout=10)  # wait until the holder has the lock
            assert isinstance(old_token, int)
            print(f"holder (pid {holder.pid}) has the lock, token {old_token}; locked: {client.lock('reports').locked()}")
        finally:
            killed_at = time.monotonic()
            holder.kill()  # SIGKILL: no finally block runs in the holder, nothing releases the lock
            holder.join()

        with client.lock("reports", lease=lease) as lock:  # waits until the lock is ours
            print(f"holder killed; we got the lock {time.monotonic() - killed_at:.1f} s later (its lease was {lease:g} s)")
            assert lock.token is not None
            print(f"our fencing token {lock.token} > the dead holder's {old_token}")
            print(f"write with our token {lock.token}: {fenced_write(client, lock.token, 'new')}")
            print(f"write with the old token {old_token}: {fenced_write(client, old_token, 'stale')}")


if __name__ == "__main__":
    with kvmgr_server() as address:
        main(address)
