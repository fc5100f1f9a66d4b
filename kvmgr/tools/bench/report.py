"""What a run reports: kvmgr ÷ peer ratios, the text tables, the --json document and the --plot chart."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from tabulate import tabulate

from kvmgr.tools.bench.common import (
    AIO_WORKLOAD,
    BULK_WORKLOADS,
    HANDOFF_CLIENTS,
    INCR_WORKLOAD,
    LOCK_WORKLOAD,
    POINT_WORKLOADS,
    QUEUE_WORKLOAD,
    STARTUP_WORKLOAD,
    Profile,
    Sample,
)

INCR_HOW = {  # what each system's incr row does per increment
    "kvmgr": "client.incr(k)",
    "multiprocessing-dict": "with lock: d[k] = d.get(k, 0) + 1",
    "redis": "INCR",
}
LOCK_HOW = {  # which lock each system's lock row hands off
    "kvmgr": "client.lock(name, lease=30)",
    "multiprocessing-dict": "Manager Lock()",
    "redis": "redis-py Lock (polls every 0.1 s)",
}
QUEUE_HOW = {  # how each system's queue row puts and gets
    "kvmgr": "client.queue(name).put/get",
    "multiprocessing-dict": "Manager Queue put/get",
    "redis": "RPUSH/BLPOP",
}
AIO_HOW = {  # which client and server each aio row uses
    "kvmgr.aio": "kvmgr.aio on a kvmgr server, one pipelined connection",
    "kvmgr.aio-redis": "kvmgr.aio on redis://, a pool of 64 connections",
    "redis.asyncio": "redis.asyncio (redis-py), a BlockingConnectionPool of 64",
}
STARTUP_TARGET = 3.5  # issue 14: alice (and kvmgr --help) start in at most 3.5x the time of python -c pass


def compute_ratios(results: Sequence[Sample], client_counts: Sequence[int]) -> dict[str, float]:
    """kvmgr ÷ each peer on comparable workloads (throughput: >1 means kvmgr is faster; memory, CPU: >1 means more)."""
    found = {sample.key: sample for sample in results}
    ratios: dict[str, float] = {}

    def add(name: str, mine: tuple, theirs: tuple, attribute: str = "ops_per_s") -> None:
        if mine not in found or theirs not in found or failed(found[mine]) or failed(found[theirs]):
            return  # a row that lost updates or misdelivered an item is a failure, not a figure to compare
        if getattr(found[theirs], attribute) and getattr(found[mine], attribute) is not None:
            ratios[name] = round(getattr(found[mine], attribute) / getattr(found[theirs], attribute), 3)

    most = max(client_counts)
    for transport in ("tcp", "unix"):
        for clients in client_counts:
            for system in ("selectors-floor", "multiprocessing-dict"):
                add(f"kvmgr/{transport} server CPU/op x{clients} vs {system}/{transport}",
                    ("kvmgr", transport, "mix", clients), (system, transport, "mix", clients), "server_cpu_us")
        peers = [("multiprocessing-dict", transport), ("connection-floor", transport), ("selectors-floor", transport)]
        peers += [("redis", "tcp"), ("redis-pipelined", "tcp")] if transport == "tcp" else []
        for workload in POINT_WORKLOADS:
            for clients in client_counts:
                mine = ("kvmgr", transport, workload, clients)
                for system, theirs in peers:
                    add(f"kvmgr/{transport} {workload} x{clients} vs {system}/{theirs}", mine, (system, theirs, workload, clients))
            add(f"kvmgr-pipelined/{transport} {workload} vs kvmgr/{transport} sequential",
                ("kvmgr-pipelined", transport, workload, 1), ("kvmgr", transport, workload, 1))
            if most > 1:
                add(f"kvmgr/{transport} {workload} x{most} vs x1", ("kvmgr", transport, workload, most), ("kvmgr", transport, workload, 1))
        for workload, redis_name in (("get_many", "MGET"), ("store_many", "MSET")):
            mine = ("kvmgr", transport, workload, 1)
            add(f"kvmgr/{transport} {workload} vs multiprocessing-dict/{transport}", mine, ("multiprocessing-dict", transport, workload, 1))
            if transport == "tcp":
                add(f"kvmgr/tcp {workload} vs redis/tcp {redis_name}", mine, ("redis", "tcp", workload, 1))
        for clients in client_counts:
            mine = ("kvmgr", transport, INCR_WORKLOAD, clients)
            add(f"kvmgr/{transport} incr x{clients} vs multiprocessing-dict/{transport} get+set under a Manager Lock", mine,
                ("multiprocessing-dict", transport, INCR_WORKLOAD, clients))
            if transport == "tcp":
                add(f"kvmgr/tcp incr x{clients} vs redis/tcp INCR", mine, ("redis", "tcp", INCR_WORKLOAD, clients))
        if most > 1:
            add(f"kvmgr/{transport} incr x{most} vs x1", ("kvmgr", transport, INCR_WORKLOAD, most), ("kvmgr", transport, INCR_WORKLOAD, 1))
    add_handoff_ratios(add)
    for system, transport in (("kvmgr.aio", "tcp"), ("kvmgr.aio", "unix"), ("kvmgr.aio-redis", "tcp")):
        add(f"{system}/{transport} asyncio concurrent gets vs redis.asyncio/tcp", (system, transport, AIO_WORKLOAD, 1),
            ("redis.asyncio", "tcp", AIO_WORKLOAD, 1))
    for command in ("alice --key=foo", "kvmgr --help"):
        add(f"{command} start time vs python -c pass", (command, "tcp" if command.startswith("alice") else "none", STARTUP_WORKLOAD, 1),
            ("python -c pass", "none", STARTUP_WORKLOAD, 1), "p50_us")
    memory = ("kvmgr", "unix", "memory", 1)
    for name, peer in (("python-dict", ("python-dict", "in-process", "memory", 1)),
                       ("multiprocessing-dict", ("multiprocessing-dict", "unix", "memory", 1)), ("redis", ("redis", "tcp", "memory", 1))):
        add(f"kvmgr memory vs {name}", memory, peer, "rss_growth_bytes")
    idle = found.get(("kvmgr", "tcp", "idle", 1))
    if idle is not None and idle.idle_free_p50_us and idle.rss_growth_bytes is not None:
        ratios["kvmgr/tcp get p50 with idle connections vs without"] = round(idle.p50_us / idle.idle_free_p50_us, 3)
        ratios["kvmgr/tcp idle connections RSS growth MiB"] = round(idle.rss_growth_bytes / 2**20, 1)
    driver = found.get(("kvmgr", "tcp", "driver", 1))
    if driver is not None:
        ratios["driver p50 seconds"] = round(driver.p50_us / 1e6, 3)
    return ratios


def add_handoff_ratios(add: Callable[..., None]) -> None:
    """The lock and queue hand-off ratios: kvmgr ÷ each peer in hand-offs/s, and in p50 latency (>1: kvmgr's is longer)."""
    for workload, how in ((LOCK_WORKLOAD, LOCK_HOW), (QUEUE_WORKLOAD, QUEUE_HOW)):
        for transport in ("tcp", "unix"):
            mine = ("kvmgr", transport, workload, HANDOFF_CLIENTS)
            for system, theirs in [("multiprocessing-dict", transport), *([("redis", "tcp")] if transport == "tcp" else [])]:
                name = f"kvmgr/{transport} {workload} hand-off vs {system}/{theirs} {how[system]}"
                add(name, mine, (system, theirs, workload, HANDOFF_CLIENTS))
                add(f"{name}, p50 latency", mine, (system, theirs, workload, HANDOFF_CLIENTS), "p50_us")


def failed(sample: Sample) -> bool:
    """Whether a row's own check failed (a count that is off, an item not received exactly once, a wrong answer)."""
    return bool(sample.lost_updates or sample.misdelivered or sample.wrong_answers)


def results_table(results: Sequence[Sample], profile: Profile) -> str:
    """The results as a text table."""
    rows = []
    for s in results:
        rate, p50, p99 = f"{s.ops_per_s:,.0f}", f"{s.p50_us:,.1f}", f"{s.p99_us:,.1f}"
        cpu = "" if s.server_cpu_us is None else f"{s.server_cpu_us:,.1f}"
        rows.append([s.system, s.transport, s.workload, s.clients, rate, s.unit, p50, p99, cpu, result_note(s, profile)])
    headers = ["system", "transport", "workload", "clients", "rate", "unit", "p50 µs", "p99 µs", "server CPU µs/op", "note"]
    alignment = ("left", "left", "left", "right", "right", "left", "right", "right", "right")
    return tabulate(rows, headers=headers, colalign=alignment, disable_numparse=True)


def result_note(sample: Sample, profile: Profile) -> str:
    """How an incr row counts and whether its count was exact, the memory figures of a memory result, the idle
    connections' cost, the seconds per run of the driver, what a lock, queue or startup row did, else nothing."""
    if sample.workload in (LOCK_WORKLOAD, QUEUE_WORKLOAD, STARTUP_WORKLOAD):
        return coordination_note(sample)
    if sample.workload == AIO_WORKLOAD:
        return aio_note(sample, profile)
    if sample.lost_updates is not None:
        return f"{INCR_HOW.get(sample.system, 'incr')}; {incr_verdict(sample.lost_updates)}"
    if sample.idle_connections is not None and sample.idle_free_p50_us:
        growth = (sample.rss_growth_bytes or 0) / 2**20
        return (f"{sample.idle_connections:,} idle connections held: RSS +{growth:,.1f} MiB; "
                f"p50 {sample.idle_free_p50_us:,.1f} µs without them (x{sample.p50_us / sample.idle_free_p50_us:.2f})")
    if sample.rss_growth_bytes is not None:
        growth = sample.rss_growth_bytes
        return f"RSS +{growth / 2**20:,.1f} MiB for {profile.memory_keys:,} keys ({growth / profile.memory_keys:,.0f} B/key)"
    if sample.workload == "driver":
        return f"{sample.p50_us / 1e6:.2f} s per run"
    return ""


def coordination_note(sample: Sample) -> str:
    """A lock row: its lock, the share of acquisitions that were hand-offs and its count; a queue row: whether every item
    arrived once; a startup row: its time against python -c pass and the target."""
    if sample.workload == LOCK_WORKLOAD:
        share = f"hand-offs {sample.handoff_share:.0%} of acquisitions" if sample.handoff_share is not None else ""
        lost = sample.lost_updates or 0
        verdict = incr_verdict(lost).replace("increments", "increments under the lock").replace("final count", "count under the lock")
        return f"{LOCK_HOW.get(sample.system, 'lock')}; {share}; {verdict}"
    if sample.workload == QUEUE_WORKLOAD:
        wrong = sample.misdelivered or 0
        verdict = f"FAIL: {wrong:,} item(s) not received exactly once" if wrong else "every item received once"
        return f"{QUEUE_HOW.get(sample.system, 'queue')}; {verdict}"
    if not sample.baseline_us or sample.system == "python -c pass":
        return "the baseline"
    ratio = sample.p50_us / sample.baseline_us
    return f"x{ratio:.2f} python -c pass (target <= {STARTUP_TARGET:g}x: {'met' if ratio <= STARTUP_TARGET else 'not met'})"


def aio_note(sample: Sample, profile: Profile) -> str:
    """An aio row: its client and server, what its latency is, and whether every answer was the task's own."""
    wrong = sample.wrong_answers or 0
    verdict = f"FAIL: {wrong:,} answer(s) not the task's own" if wrong else "every answer right"
    return f"{AIO_HOW.get(sample.system, sample.system)}; latency: a round of {profile.aio_gets:,} gets; {verdict}"


def incr_verdict(lost_updates: int) -> str:
    """Whether a counter ended at the number of increments made."""
    if lost_updates > 0:
        return f"FAIL: {lost_updates:,} increments lost"
    if lost_updates < 0:
        return f"FAIL: {-lost_updates:,} more than the increments made"
    return "final count exact"


def ratios_table(ratios: Mapping[str, float]) -> str:
    """The ratios as a text table."""
    rows = [[name, f"{value:,.3f}"] for name, value in ratios.items()]
    return tabulate(rows, headers=["kvmgr ÷ peer", "ratio"], colalign=("left", "right"), disable_numparse=True)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }


def report(results: list[Sample], ratios: dict[str, float], profile: Profile, repeats: int) -> dict[str, Any]:
    """The JSON document --json writes."""
    return {
        "machine": machine_info(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv),
        "settings": {**asdict(profile), "repeats": repeats},
        "results": [asdict(sample) for sample in results],
        "ratios": ratios,
    }


def draw_plot(results: Sequence[Sample], path: Path) -> None:
    """Bar chart of the rate per system and workload (1 client), and throughput against client count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bars, lines) = plt.subplots(1, 2, figsize=(16, 6))
    workloads = [*POINT_WORKLOADS, *BULK_WORKLOADS]
    systems = sorted({(s.system, s.transport) for s in results if s.workload in workloads})
    width = 0.8 / max(1, len(systems))
    found = {s.key: s for s in results}
    for offset, (system, transport) in enumerate(systems):
        heights = [found[key].ops_per_s if (key := (system, transport, w, 1)) in found else 0 for w in workloads]
        bars.bar([i + offset * width for i in range(len(workloads))], heights, width, label=f"{system}/{transport}")
    bars.set_xticks([i + 0.4 - width / 2 for i in range(len(workloads))], workloads)
    bars.set_yscale("log")
    bars.set_ylabel("ops/s (get/store/mix), keys/s (bulk); 1 client")
    bars.legend(fontsize="small")
    for system, transport in systems:
        points = sorted((s.clients, s.ops_per_s) for s in results if (s.system, s.transport, s.workload) == (system, transport, "get"))
        if points:
            lines.plot(*zip(*points, strict=True), marker="o", label=f"{system}/{transport}")
    lines.set_xticks(sorted({s.clients for s in results if s.workload == "get"}))
    lines.set_xlabel("clients")
    lines.set_ylabel("get ops/s, all clients")
    lines.set_yscale("log")
    lines.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
