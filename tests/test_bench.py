"""kvmgr bench: a tiny run end to end (the shape of its JSON, never its timings), the CLI hook and the arithmetic."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from kvmgr.tools import bench
from kvmgr.tools.processes import python_module

POINT_SYSTEMS = {("kvmgr", "tcp"), ("kvmgr", "unix"), ("multiprocessing-dict", "tcp"), ("multiprocessing-dict", "unix"),
                 ("connection-floor", "tcp"), ("connection-floor", "unix")}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict]:
    """One tiny benchmark run through python -m kvmgr.tools.bench, with its JSON report."""
    report = tmp_path_factory.mktemp("bench") / "report.json"
    argv = python_module("kvmgr.tools.bench", "--tiny", "--json", str(report))
    finished = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    return finished, json.loads(report.read_text())


def test_report_has_machine_date_command_results_and_ratios(tiny_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    _, report = tiny_run
    assert set(report) >= {"machine", "date", "command", "results", "ratios"}
    assert report["machine"]["cores"] >= 1
    assert report["machine"]["python"] and report["machine"]["platform"]
    assert "--tiny" in report["command"]


def test_every_system_and_workload_is_measured(tiny_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    results = tiny_run[1]["results"]
    measured = {(r["system"], r["transport"], r["workload"], r["clients"]) for r in results}
    for system, transport in POINT_SYSTEMS:
        for workload in bench.POINT_WORKLOADS:
            assert {(system, transport, workload, clients) for clients in (1, 2)} <= measured
    for transport in ("tcp", "unix"):
        for workload in bench.BULK_WORKLOADS:
            assert ("kvmgr", transport, workload, 1) in measured
            assert ("multiprocessing-dict", transport, workload, 1) in measured
    assert {("kvmgr", "unix", "memory", 1), ("python-dict", "in-process", "memory", 1)} <= measured
    assert ("kvmgr", "tcp", "driver", 1) in measured


def test_every_number_is_positive(tiny_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    for result in tiny_run[1]["results"]:
        assert set(result) >= {"system", "transport", "workload", "clients", "ops_per_s", "p50_us", "p99_us"}
        assert result["ops_per_s"] > 0 and result["p50_us"] > 0 and result["p99_us"] > 0, result
        if result["workload"] == "memory":
            assert isinstance(result["rss_growth_bytes"], int)


def test_ratios_and_tables_are_reported(tiny_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    finished, report = tiny_run
    ratios = report["ratios"]
    for name in ("kvmgr/tcp get x1 vs multiprocessing-dict/tcp", "kvmgr/unix get x1 vs connection-floor/unix",
                 "kvmgr/tcp get x2 vs x1", "kvmgr/tcp get_many vs multiprocessing-dict/tcp", "kvmgr memory vs python-dict",
                 "driver p50 seconds"):
        assert isinstance(ratios[name], float), name
    assert "p50 µs" in finished.stdout and "kvmgr ÷ peer" in finished.stdout
    assert "bench: repeat 1/1" in finished.stderr


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path: Path) -> None:
    if importlib.util.find_spec("matplotlib") is not None:
        pytest.skip("matplotlib is installed")
    finished = subprocess.run(
        python_module("kvmgr.tools.bench", "--tiny", "--plot", str(tmp_path / "plot.png")), capture_output=True, text=True, timeout=30
    )
    assert finished.returncode == 2
    assert "pip install 'kvmgr[plot]'" in finished.stderr
    assert not (tmp_path / "plot.png").exists()


def test_add_parser_registers_the_bench_subcommand() -> None:
    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers())
    args = parser.parse_args(["bench", "--quick", "--repeats", "2", "--json", "out.json"])
    assert args.handler is bench.run_bench_command
    assert (args.quick, args.repeats, args.json, args.plot, args.tiny) == (True, 2, "out.json", None, False)
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--repeats", "0"])


def test_medians_and_ratios_of_known_samples() -> None:
    samples = [bench.Sample("kvmgr", "tcp", "get", 1, rate, 10.0, 20.0) for rate in (100.0, 300.0, 200.0)]
    samples += [bench.Sample("multiprocessing-dict", "tcp", "get", 1, 400.0, 5.0, 9.0)]
    results = bench.medians(samples)
    assert [(r.system, r.ops_per_s) for r in results] == [("kvmgr", 200.0), ("multiprocessing-dict", 400.0)]
    assert bench.compute_ratios(results, (1,)) == {"kvmgr/tcp get x1 vs multiprocessing-dict/tcp": 0.5}
    assert bench.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0


def test_checker_benchmark_reports_a_linearizable_verdict(tmp_path: Path) -> None:
    out = tmp_path / "checker.json"
    result = subprocess.run(python_module("kvmgr", "bench", "--checker", "--repeats", "1", "--json", str(out)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["operations"] == 50_000 and report["linearizable"] is True and report["seconds_median"] > 0
