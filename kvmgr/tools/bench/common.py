"""What every part of kvmgr bench shares: the protocol constants, the run profiles, targets, worker specs and samples."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from kvmgr.errors import KvmgrError
from kvmgr.tools.processes import child_environment

ADDRESS_ENV = "KVMGR_BENCH_ADDRESS"
POINT_WORKLOADS = ("get", "store", "mix")
BULK_WORKLOADS = ("get_many", "store_many")
INCR_WORKLOAD = "incr"  # every client increments one shared counter; the final count must equal the increments made
INCR_KINDS = ("kvmgr", "stdlib", "redis")  # the adapters that can increment: kvmgr incr, locked get+set, Redis INCR
LOCK_WORKLOAD = "lock"  # processes take turns on one lock; each holder counts with get+store under it
QUEUE_WORKLOAD = "queue"  # one item at a time, put in one process and got in another, passed back and forth
STARTUP_WORKLOAD = "startup"  # the wall time of one short command, from launch to exit
AIO_WORKLOAD = "aio"  # rounds of concurrent gets from one process through an asyncio client, every answer checked
HANDOFF_CLIENTS = 2  # the processes that hand a lock or queue items to each other
COORDINATION_KINDS = ("kvmgr", "stdlib", "redis")  # the adapters with a lock and a queue
SECTIONS = ("point", "bulk", "incr", "lock", "queue", "aio", "startup", "memory", "idle", "driver")  # the groups of rows `--only` can pick
GO_DELAY = 0.02  # from writing a phase's go file to the start time written in it
READY_TIMEOUT = 30.0
HOLDER_CONNECTIONS = 250  # idle connections one holder process opens at most


class BenchError(KvmgrError):
    """A benchmark process failed, timed out or printed something unexpected."""


@dataclass(frozen=True)
class Profile:
    """How long and how big a run is."""

    name: str
    duration: float
    client_counts: tuple[int, ...]
    bulk_keys: int
    memory_keys: int
    keyspace: int = 1_000
    idle_connections: int = 1_000  # idle authenticated connections held in the idle-connections row
    idle_rounds: int = 2  # idle-free and held single-client measurements, alternated, per repeat
    startup_runs: int = 20  # runs of each command per repeat in the startup rows (their median is the repeat's figure)
    aio_gets: int = 1_000  # the aio rows: concurrent gets per round
    aio_rounds: int = 20  # the aio rows: measured rounds per repeat
    aio_warmup: int = 3  # the aio rows: unmeasured rounds before them


PROFILES = {
    "full": Profile("full", 2.0, (1, 8), 10_000, 1_000_000),
    "quick": Profile("quick", 0.25, (1, 8), 10_000, 200_000, aio_rounds=5, aio_warmup=1),
    "tiny": Profile("tiny", 0.05, (1, 2), 1_000, 20_000, idle_connections=50, idle_rounds=1, startup_runs=3, aio_gets=100,
                    aio_rounds=2, aio_warmup=1),
}


@dataclass(frozen=True)
class Target:
    """One system on one transport that client processes can talk to."""

    system: str
    transport: str
    kind: str
    address: str
    authkey: str = ""
    server_pid: int | None = None  # the server process whose CPU time is measured (None: no server process)

    def environment(self) -> dict[str, str]:
        """The environment a client process of this target needs (authkey and address, never argv)."""
        return child_environment(self.authkey or None, {ADDRESS_ENV: self.address})


@dataclass
class WorkerSpec:
    """What one client process does; passed to it as JSON on its command line."""

    kind: str
    workloads: list[str]
    duration: float
    go_file: str
    keyspace: int
    bulk_keys: int
    memory_keys: int
    seed: int = 0
    preload: bool = False
    output: str = ""  # the file the worker writes its results to (a pipe could fill and stall it mid-run)
    counter_key: str = ""  # the key the incr workload increments, the lock or queue name, the aio keys' prefix (one per measurement)
    aio_gets: int = 0  # the aio workload: concurrent gets per round
    aio_rounds: int = 0  # the aio workload: measured rounds
    aio_warmup: int = 0  # the aio workload: unmeasured rounds before them

    def go_file_of(self, phase: int) -> Path:
        """The file whose appearance starts phase `phase` (the workload of that index) in every client."""
        return Path(f"{self.go_file}.{phase}")


@dataclass
class Sample:
    """One measurement of one system on one workload (or the median of several)."""

    system: str
    transport: str
    workload: str
    clients: int
    ops_per_s: float
    p50_us: float
    p99_us: float
    unit: str = "ops/s"
    rss_growth_bytes: int | None = None
    server_cpu_us: float | None = None  # the server process's CPU time (user + system, all threads) per operation or key
    idle_connections: int | None = None  # the idle row: authenticated connections the server held during it
    idle_free_p50_us: float | None = None  # the idle row: the same single-client p50 without them
    lost_updates: int | None = None  # incr and lock rows: increments made minus the final count (0 when exact; not 0 is a FAIL)
    handoff_share: float | None = None  # the lock row: the share of acquisitions that took the lock from another process
    misdelivered: int | None = None  # the queue row: items not received exactly once (missing, duplicated or unknown; not 0 is a FAIL)
    baseline_us: float | None = None  # the startup rows: the median wall time of `python -c pass` in the same repeat
    wrong_answers: int | None = None  # the aio rows: answers that were not the task's own value (not 0 is a FAIL)

    @property
    def key(self) -> tuple[str, str, str, int]:
        """What identifies the measurement across repeats."""
        return self.system, self.transport, self.workload, self.clients


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"bench: {message}", file=sys.stderr, flush=True)
