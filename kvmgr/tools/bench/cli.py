"""kvmgr bench: kvmgr against its peers on loopback, every system interleaved in one run.

Systems: kvmgr (tcp, unix), the stdlib multiprocessing.Manager().dict() proxy (tcp, unix), Redis through
redis-py (single commands, 100-command pipelines, MGET/MSET; only when a redis-server and redis-py are
installed), the bare multiprocessing.connection round trip, the floor under any BaseManager proxy, and
selectors-floor (tcp, unix), the reference server model: one thread running one selectors loop that, per
request, unpickles (op, key, value), reads or updates a dict and pickles the reply, in the
multiprocessing.connection framing, the connection module's HMAC handshake done blocking at accept.

Every measurement runs in fresh client processes (`python -m kvmgr.tools.bench --worker SPEC`, the authkey in
$KVMGR_AUTHKEY, the server address in $KVMGR_BENCH_ADDRESS), never in threads of this process. Clients
connect, print "ready", and start together when this process writes the start time into a go file.
Each repeat runs every system once per workload, systems taking turns in an order rotated every repeat,
so machine noise hits all of them alike; the table shows the median over repeats.

Units: get/store/mix are operations per second summed over all clients, with latency percentiles over
every client's samples (redis-pipelined counts commands; its latency is one 100-command round trip);
get_many/store_many are keys per second with the latency of one 10,000-key call (the stdlib dict reads
its 10,000-key dict with copy(), writes with update()); memory is the RSS growth of the server process
after storing N keys of 16 bytes with 100-byte values in batches of 10,000 (rate: keys/s of the load,
latency: one batch), against the same dict built in a bare Python process; driver is `python run_driver.py`
end to end (rate: runs/s, latency: its wall time in µs).

Counters (the "incr" rows): every client process increments one shared key, fresh for each measurement, as
fast as it can: kvmgr with client.incr(key) (tcp, unix), Redis with INCR, and the stdlib dict the only safe way
a multiprocessing.Manager user has, `with lock: d[k] = d.get(k, 0) + 1` under one Manager Lock (tcp, unix);
1 and 8 clients (--tiny: 1 and 2). Once the clients have exited, the benchmark reads the counter: a final count
that is not the number of increments the clients made is a FAIL in the row (no ratio is taken from it) and
makes the command exit 1.

Lock hand-off (the "lock" rows): 2 client processes take one lock in turns as fast as they can: kvmgr's
client.lock(name, lease=30) (tcp, unix), redis-py's Lock (r.lock(name, timeout=30, blocking=True), which polls
every 0.1 s while it waits) and a Manager Lock() (tcp, unix). Under the lock each holder reads a record and
stores it back with its count plus 1 (a get and a store). An acquisition whose record names the other process
is a hand-off: the rate is hand-offs/s, the latency runs from the end of the other's turn (just before its store
and release) to acquire() returning; the note gives the share of acquisitions that were hand-offs. A final count
that is not the number of acquisitions is a FAIL, as in the incr rows.

Queue hand-off (the "queue" rows): 2 client processes pass numbered items back and forth, one item in flight:
kvmgr's client.queue(name) put/get (tcp, unix), a Manager Queue (tcp, unix) and Redis RPUSH/BLPOP. The rate is
items/s, the latency runs from just before a put to the return of the get in the other process. An item that
was not received exactly once is a FAIL.

Asyncio (the "aio" rows): one client process starts 1,000 tasks (--tiny: 100) that each get one of 1,000 distinct
keys, gathers them and checks every answer, 20 measured rounds after 3 warm-up rounds (--quick: 5 after 1):
kvmgr.aio on the kvmgr server (tcp, unix) and on the benchmark's redis-server, and redis.asyncio (redis-py, a
BlockingConnectionPool of 64, the cap kvmgr.aio's Redis client uses; its default pool refuses 1,000 commands at
once) on the same redis-server. The rate is gets/s over the rounds, the latency that of one round. An answer that
is not the task's own value is a FAIL, as in the incr rows.

Start time (the "startup" rows): `alice --key=foo` on the kvmgr/tcp server, `kvmgr --help` and `python -c pass`,
20 runs each per repeat (interleaved), launch to exit; the note gives the median against python -c pass and
whether it meets the 3.5x target.

Server CPU µs/op: the server process's CPU time (user + system, all its threads; on Linux its CPU-time
clock, in ns) read before each workload starts and after it ends, divided by the operations (keys for the
batch rows) all clients did in it; connecting and preloading are not counted. Workloads run as phases: a phase
starts in every client only once every client has finished the one before, so the clock is read while no
client works.

Idle connections (the "idle" row): a fresh kvmgr/tcp server, a single client's gets alternately without
and with 1,000 idle authenticated connections held open (holder processes of 250 `kvmgr.connect` clients
that each made one call; --quick too): the rate and latency with them held, the p50 without them, the
server's RSS growth (over its RSS before the first were opened) and the connections it had established.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tabulate import tabulate

from kvmgr.config import AUTHKEY_ENV
from kvmgr.errors import KvmgrError
from kvmgr.tools.arguments import positive_int
from kvmgr.tools.bench.common import PROFILES, SECTIONS, Profile, Sample, WorkerSpec, progress
from kvmgr.tools.bench.launch import load_redis, start_targets
from kvmgr.tools.bench.peers import SERVE_ROLES
from kvmgr.tools.bench.report import compute_ratios, draw_plot, ratios_table, report, results_table
from kvmgr.tools.bench.run import Bench, run_repeats
from kvmgr.tools.bench.stats import medians
from kvmgr.tools.bench.worker import run_holder, run_worker
from kvmgr.tools.processes import ProcessGroup


def run_bench_command(args: argparse.Namespace) -> int:
    """Run the benchmark, print the tables, write --json and --plot; 1 if a measurement failed."""
    if args.checker:
        return run_checker_command(args)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("kvmgr bench: --plot needs matplotlib: pip install 'kvmgr[plot]'", file=sys.stderr)
        return 2
    profile = PROFILES["tiny" if args.tiny else "quick" if args.quick else "full"]
    repeats = args.repeats or (1 if args.tiny or args.quick else 3)
    redis_module, why_not = load_redis()
    if redis_module is None:
        progress(f"skipping redis: {why_not}")
    if profile.name != "full":
        full = PROFILES["full"]
        progress(f"{profile.name} run: {profile.duration:g} s per workload instead of {full.duration:g} s, {repeats} repeat(s), "
                 f"memory with {profile.memory_keys:,} keys instead of {full.memory_keys:,}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kvmgr-bench-") as scratch, ProcessGroup() as group:
        bench = Bench(group, Path(scratch), profile, redis_module, sections=tuple(args.only or SECTIONS))
        bench.targets = start_targets(group, bench.workdir, redis_module)
        samples, failures = run_repeats(bench, repeats)
    results = medians(samples)
    ratios = compute_ratios(results, profile.client_counts)
    print(results_table(results, profile))
    print()
    print(ratios_table(ratios))
    progress(f"{len(results)} results from {repeats} repeat(s) in {time.monotonic() - started:.1f}s")
    write_outputs(args, results, ratios, profile, repeats)
    if failures:
        progress(f"{failures} measurement(s) failed; see the FAILED lines above")
    return 1 if failures else 0


def run_checker_command(args: argparse.Namespace) -> int:
    """--checker: time `kvmgr check` and its peak memory on synthetic histories, each case in a fresh process."""
    from kvmgr.tools.check_bench import CHECKER_CASES, run_checker_benchmark

    shown = "; ".join(f"{c.operations:,} operations over {c.keys} key{'s' * (c.keys > 1)}" for c in CHECKER_CASES)
    progress(f"timing the linearizability checker on synthetic histories of 8 clients: {shown}")
    result = run_checker_benchmark(repeats=args.repeats or 3)
    rows = [[case["operations"], case["clients"], case["keys"], "yes" if case["linearizable"] else "NO",
             round(case["seconds_median"], 3), ", ".join(f"{t:.3f}" for t in case["seconds_all"]),
             case["peak_mb"], case["history_peak_mb"]] for case in result["cases"]]  # type: ignore[attr-defined]
    print(tabulate(rows, headers=["operations", "clients", "keys", "linearizable", "seconds (median)", "seconds (all runs)",
                                  "peak MB", "history alone MB"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if all(case["linearizable"] for case in result["cases"]) else 1  # type: ignore[attr-defined]


def write_outputs(args: argparse.Namespace, results: list[Sample], ratios: dict[str, float], profile: Profile, repeats: int) -> None:
    """Write the --json and --plot files that were asked for."""
    if args.json:
        Path(args.json).write_text(json.dumps(report(results, ratios, profile, repeats), indent=2) + "\n")
        progress(f"wrote {args.json}")
    if args.plot:
        draw_plot(results, Path(args.plot))
        progress(f"wrote {args.plot}")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `kvmgr bench`."""
    parser.add_argument(
        "--quick", action="store_true",
        help="a minute or two: 0.25 s per workload, 200,000 keys for memory, still 1,000 idle connections, one repeat unless --repeats",
    )
    parser.add_argument("--repeats", type=positive_int, help="interleaved repeats; the median is reported (default 3, --quick 1)")
    parser.add_argument(
        "--only", action="append", choices=SECTIONS, metavar="SECTION",
        help=f"measure only these rows (repeat the option for several): {', '.join(SECTIONS)}; default all",
    )
    parser.add_argument("--json", metavar="FILE", help="write the machine, the results and the ratios as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the results (needs matplotlib: pip install 'kvmgr[plot]')")
    parser.add_argument(
        "--checker", action="store_true",
        help="only measure the linearizability checker: time and peak memory on 50,000 operations over 16 keys, "
        "and 50,000 and 200,000 on one key",
    )
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `bench` subcommand."""
    parser = subparsers.add_parser(
        "bench", help="measure kvmgr against its peers on loopback",
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1],
    )
    add_bench_arguments(parser)
    parser.set_defaults(handler=run_bench_command)


def main(argv: Sequence[str] | None = None) -> int:
    """python -m kvmgr.tools.bench: the benchmark itself, or (hidden) one of its client or server processes."""
    parser = argparse.ArgumentParser(prog="python -m kvmgr.tools.bench", description=__doc__.split("\n\n")[0])
    add_bench_arguments(parser)
    parser.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    parser.add_argument("--serve", choices=sorted(SERVE_ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--hold", type=positive_int, metavar="N", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(WorkerSpec(**json.loads(args.worker)))
    if args.hold:
        return run_holder(args.hold)
    if args.serve:
        return SERVE_ROLES[args.serve](args.address, os.environ.get(AUTHKEY_ENV, "").encode())
    try:
        return run_bench_command(args)
    except KvmgrError as exc:
        print(f"kvmgr bench: error: {exc}", file=sys.stderr)
        return 3
