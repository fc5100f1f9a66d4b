"""The arithmetic on measurements: combining clients' phases into a Sample, percentiles, units, medians over repeats."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import replace

from kvmgr.tools.bench.common import (
    AIO_WORKLOAD,
    BULK_WORKLOADS,
    INCR_WORKLOAD,
    LOCK_WORKLOAD,
    POINT_WORKLOADS,
    QUEUE_WORKLOAD,
    STARTUP_WORKLOAD,
    Sample,
)


def combine(system: str, transport: str, workload: str, outputs: list[list[dict]], index: int) -> Sample:
    """Aggregate ops/s over all clients and latency percentiles over all their samples for one workload."""
    phases = [per_client[index] for per_client in outputs]
    rate = sum(phase["ops"] / phase["seconds"] for phase in phases)
    latencies = sorted(value for phase in phases for value in phase["latencies_us"])
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    return Sample(system, transport, workload, len(outputs), rate, p50, p99, unit_of(system, workload))


def percentile(ordered: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(percent / 100 * (len(ordered) - 1)))]


def unit_of(system: str, workload: str) -> str:
    """The unit of a rate."""
    if workload in BULK_WORKLOADS or workload == "memory":
        return "keys/s"
    if workload == LOCK_WORKLOAD:
        return "hand-offs/s"
    if workload == QUEUE_WORKLOAD:
        return "items/s"
    return "cmds/s" if system.endswith("-pipelined") else "ops/s"


def medians(samples: Sequence[Sample]) -> list[Sample]:
    """One Sample per measurement: the median over repeats of each number."""
    grouped: dict[tuple, list[Sample]] = {}
    for sample in samples:
        grouped.setdefault(sample.key, []).append(sample)
    merged = []
    for group in grouped.values():
        growth = median_of([s.rss_growth_bytes for s in group])
        connections = [s.idle_connections for s in group if s.idle_connections is not None]
        merged.append(replace(
            group[0],
            ops_per_s=statistics.median(s.ops_per_s for s in group),
            p50_us=statistics.median(s.p50_us for s in group),
            p99_us=statistics.median(s.p99_us for s in group),
            rss_growth_bytes=None if growth is None else int(growth),
            server_cpu_us=median_of([s.server_cpu_us for s in group]),
            idle_connections=min(connections) if connections else None,
            idle_free_p50_us=median_of([s.idle_free_p50_us for s in group]),
            lost_updates=worst_of([s.lost_updates for s in group]),
            handoff_share=median_of([s.handoff_share for s in group]),
            misdelivered=worst_of([s.misdelivered for s in group]),
            baseline_us=median_of([s.baseline_us for s in group]),
            wrong_answers=worst_of([s.wrong_answers for s in group]),
        ))
    return sorted(merged, key=lambda s: (workload_order(s.workload), s.clients, s.system, s.transport))


def median_of(values: Sequence[float | None]) -> float | None:
    """The median of the values that were measured, None if none was."""
    measured = [value for value in values if value is not None]
    return statistics.median(measured) if measured else None


def worst_of(counts: Sequence[int | None]) -> int | None:
    """The count furthest from 0 (a single failed repeat fails the row), None if none was measured."""
    measured = [count for count in counts if count is not None]
    return max(measured, key=abs) if measured else None


def workload_order(workload: str) -> int:
    """Position of a workload in the tables."""
    order = [*POINT_WORKLOADS, *BULK_WORKLOADS, INCR_WORKLOAD, LOCK_WORKLOAD, QUEUE_WORKLOAD, AIO_WORKLOAD, STARTUP_WORKLOAD, "memory",
             "idle", "driver"]
    return order.index(workload) if workload in order else len(order)
