"""kvmgr bench: kvmgr against its peers on loopback, every system interleaved in one run.

The command's full description (systems, process model, units) is the docstring of kvmgr.tools.bench.cli, which
`kvmgr bench --help` shows. Imports go one way: cli uses run, launch, stats, report, worker and peers; run uses
launch, stats and adapters (to read the incr and lock rows' final counts); worker uses adapters, which use peers and aio;
report and stats use nothing but common.

- common:   protocol constants, profiles, Target, WorkerSpec, Sample, BenchError, progress lines;
- peers:    the stdlib SyncManager (dicts, the incr row's Lock, named Locks and Queues), connection-floor and selectors-floor servers run
            by `python -m kvmgr.tools.bench --serve ROLE`;
- aio:      the asyncio rows' workload: rounds of concurrent gets through kvmgr.aio or redis.asyncio, every answer checked;
- adapters: the client-side adapters, one per kind of system, and the ADAPTERS table;
- worker:   the client process run by `python -m kvmgr.tools.bench --worker SPEC` (phases started by go files,
            lock and queue hand-offs, asyncio rounds, memory load), and
            the holder of idle connections (`--hold N`);
- launch:   starting servers, client and holder processes through a ProcessGroup and collecting their output;
- stats:    combining clients' phases into Samples, percentiles, units, medians over repeats;
- run:      the measurements (Bench: phases with the server's CPU per operation, incr and lock with their final counts
            checked, queue with every item checked, aio with every answer checked, startup, memory, idle connections,
            driver) and the interleaved repeats;
- report:   ratios, tables, the --json document and the --plot chart;
- cli:      the arguments, `kvmgr bench`, `kvmgr bench --checker` and `python -m kvmgr.tools.bench`.
"""

from kvmgr.tools.bench.cli import add_parser, main, run_bench_command
from kvmgr.tools.bench.common import BULK_WORKLOADS, POINT_WORKLOADS, PROFILES, BenchError, Profile, Sample, Target, WorkerSpec
from kvmgr.tools.bench.report import compute_ratios
from kvmgr.tools.bench.stats import medians, percentile

__all__ = [
    "BULK_WORKLOADS",
    "POINT_WORKLOADS",
    "PROFILES",
    "BenchError",
    "Profile",
    "Sample",
    "Target",
    "WorkerSpec",
    "add_parser",
    "compute_ratios",
    "main",
    "medians",
    "percentile",
    "run_bench_command",
]
