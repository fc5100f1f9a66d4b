"""A job queue with producers and consumers in separate processes: every job is processed exactly once.

Producers put jobs on a kvmgr queue; consumers take them with `get(timeout=...)`, which waits on the server
(no polling) until a job comes. Each job goes to exactly one consumer. When the producers are done, one
"stop" item per consumer tells the consumers to finish.

    python examples/job_queue.py
"""

from __future__ import annotations

import multiprocessing
from collections import Counter

from servers import kvmgr_server

import kvmgr

PRODUCERS, CONSUMERS, JOBS_EACH = 2, 3, 100
STOP = "stop"


def produce(address: str, producer: int) -> int:
    """Put JOBS_EACH jobs on the queue; how many it put."""
    with kvmgr.connect(address) as client:
        jobs = client.queue("jobs")
        for number in range(JOBS_EACH):
            jobs.put({"id": f"p{producer}-{number}", "n": number})  # any plain data: here a dict
    return JOBS_EACH


def consume(address: str) -> list[object]:
    """Take jobs until a STOP item comes; the ids of the jobs this consumer processed."""
    done: list[object] = []
    with kvmgr.connect(address) as client:
        jobs = client.queue("jobs")
        while (job := jobs.get(timeout=30)) != STOP:  # QueueEmpty (a TimeoutError) if nothing comes for 30 s
            assert isinstance(job, dict)
            done.append(job["id"])  # ...the real work would go here
    return done


def main(address: str) -> None:
    """Run the producers and consumers at once, then check that every job was processed once."""
    with kvmgr.connect(address) as client, multiprocessing.Pool(PRODUCERS + CONSUMERS) as pool:
        consumers = [pool.apply_async(consume, (address,)) for _ in range(CONSUMERS)]
        producers = [pool.apply_async(produce, (address, p)) for p in range(PRODUCERS)]
        produced = sum(p.get(timeout=60) for p in producers)
        for _ in range(CONSUMERS):
            client.queue("jobs").put(STOP)  # after every job: the queue is first in, first out
        processed = [c.get(timeout=60) for c in consumers]

    for number, ids in enumerate(processed):
        print(f"consumer {number} processed {len(ids)} jobs")
    counts = Counter(job for ids in processed for job in ids)
    twice = [job for job, seen in counts.items() if seen > 1]
    print(f"{produced} jobs produced, {len(counts)} processed, {len(twice)} processed twice")
    if len(counts) != produced or twice:
        raise SystemExit("some job was lost or processed twice")


if __name__ == "__main__":
    with kvmgr_server() as address:
        main(address)
