"""kvmgr bench: a tiny run end to end (the shape of its JSON, never its timings), the CLI hook and the arithmetic.

These run on loaded 2-core CI machines: no assertion depends on speed, and the timeouts of whole runs are far
above what a run takes there (they only catch hangs)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import replace
from multiprocessing import AuthenticationError, connection
from pathlib import Path

import psutil
import pytest

import kvmgr
from kvmgr.config import parse_address
from kvmgr.tools import bench
from kvmgr.tools.bench import adapters, aio, launch, report, run, worker
from kvmgr.tools.processes import ProcessGroup, ServerProcess, python_module, wait_until_ready

POINT_SYSTEMS = {("kvmgr", "tcp"), ("kvmgr", "unix"), ("multiprocessing-dict", "tcp"), ("multiprocessing-dict", "unix"),
                 ("connection-floor", "tcp"), ("connection-floor", "unix"), ("selectors-floor", "tcp"), ("selectors-floor", "unix")}
SERVER_SYSTEMS = {"kvmgr", "kvmgr-pipelined", "multiprocessing-dict", "connection-floor", "selectors-floor"}
SPINNER = """
import threading, time
def spin():
    while time.thread_time() < 0.15:
        pass
threads = [threading.Thread(target=spin) for _ in range(2)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print("spun", flush=True)
time.sleep(60)
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict]:
    """One tiny benchmark run through python -m kvmgr.tools.bench, with its JSON report."""
    report = tmp_path_factory.mktemp("bench") / "report.json"
    argv = python_module("kvmgr.tools.bench", "--tiny", "--json", str(report))
    finished = subprocess.run(argv, capture_output=True, text=True, timeout=900)
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


def assert_server_cpu_measured(rows: list[dict]) -> None:
    """Each row's server CPU is measured and not negative, and it sums to more than 0 over the rows (a phase of 0.05 s
    may read 0 where the CPU clock counts in ticks; a whole set of rows cannot)."""
    for row in rows:
        assert row["server_cpu_us"] is not None and row["server_cpu_us"] >= 0, row
    assert sum(row["server_cpu_us"] for row in rows) > 0, rows


def test_server_cpu_per_operation_is_measured_for_every_server(tiny_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    finished, report = tiny_run
    point = [r for r in report["results"] if r["workload"] in bench.POINT_WORKLOADS]
    assert {r["system"] for r in point} >= SERVER_SYSTEMS
    for system, transport, clients in {(r["system"], r["transport"], r["clients"]) for r in point}:
        assert_server_cpu_measured([r for r in point if (r["system"], r["transport"], r["clients"]) == (system, transport, clients)])
    assert all(r["server_cpu_us"] is None for r in report["results"] if r["system"] == "python-dict")
    for name in ("kvmgr/tcp server CPU/op x2 vs selectors-floor/tcp", "kvmgr/tcp server CPU/op x1 vs selectors-floor/tcp",
                 "kvmgr/unix server CPU/op x2 vs selectors-floor/unix", "kvmgr/tcp server CPU/op x2 vs multiprocessing-dict/tcp",
                 "kvmgr/tcp mix x2 vs multiprocessing-dict/tcp", "kvmgr/tcp get x1 vs selectors-floor/tcp"):
        assert isinstance(report["ratios"][name], float), name
    assert "server CPU µs/op" in finished.stdout


def test_idle_row_holds_authenticated_connections_and_reports_their_cost(tiny_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    finished, report = tiny_run
    [idle] = [r for r in report["results"] if r["workload"] == "idle"]
    assert (idle["system"], idle["transport"], idle["clients"]) == ("kvmgr", "tcp", 1)
    assert idle["idle_connections"] >= bench.PROFILES["tiny"].idle_connections == report["settings"]["idle_connections"]
    assert isinstance(idle["rss_growth_bytes"], int)
    assert idle["p50_us"] > 0 and idle["idle_free_p50_us"] > 0
    assert_server_cpu_measured([idle])
    assert report["ratios"]["kvmgr/tcp get p50 with idle connections vs without"] > 0
    assert isinstance(report["ratios"]["kvmgr/tcp idle connections RSS growth MiB"], float)
    assert "50 idle connections held: RSS +" in finished.stdout


def test_incr_row_counts_exactly_on_every_system_and_is_compared(tiny_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    finished, report_json = tiny_run
    rows = {(r["system"], r["transport"], r["clients"]): r for r in report_json["results"] if r["workload"] == "incr"}
    systems = {("kvmgr", "tcp"), ("kvmgr", "unix"), ("multiprocessing-dict", "tcp"), ("multiprocessing-dict", "unix")}
    systems |= {("redis", "tcp")} if launch.load_redis()[0] is not None else set()
    assert set(rows) == {(system, transport, clients) for system, transport in systems for clients in (1, 2)}
    for row in rows.values():
        assert row["lost_updates"] == 0 and row["ops_per_s"] > 0, row
    assert_server_cpu_measured(list(rows.values()))
    assert all(r["lost_updates"] is None for r in report_json["results"] if r["workload"] not in ("incr", "lock"))
    ratios = report_json["ratios"]
    for transport in ("tcp", "unix"):
        for clients in (1, 2):
            assert ratios[f"kvmgr/{transport} incr x{clients} vs multiprocessing-dict/{transport} get+set under a Manager Lock"] > 0
    assert ratios["kvmgr/tcp incr x2 vs x1"] > 0
    if ("redis", "tcp") in systems:
        assert ratios["kvmgr/tcp incr x2 vs redis/tcp INCR"] > 0
    assert "with lock: d[k] = d.get(k, 0) + 1; final count exact" in finished.stdout
    assert "FAIL" not in finished.stdout


def results_of_only(tmp_path: Path, section: str) -> list[dict]:
    """The JSON results of `bench --tiny --only SECTION`, which must exit 0."""
    out = tmp_path / f"{section}.json"
    finished = subprocess.run(python_module("kvmgr.tools.bench", "--tiny", "--only", section, "--json", str(out)),
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    results: list[dict] = json.loads(out.read_text())["results"]
    return results


def test_only_incr_measures_just_the_incr_rows(tmp_path: Path) -> None:
    results = results_of_only(tmp_path, "incr")
    assert {r["workload"] for r in results} == {"incr"}
    assert {(r["system"], r["clients"]) for r in results} >= {("kvmgr", 1), ("kvmgr", 2), ("multiprocessing-dict", 2)}
    assert all(r["lost_updates"] == 0 for r in results)


def test_incr_row_fails_when_the_final_count_differs_from_the_increments(group: ProcessGroup, server: ServerProcess,
                                                                         tmp_path: Path) -> None:
    with kvmgr.connect(server.address_text, authkey=server.authkey.encode(), timeout=5.0) as client:
        client.store("seeded", 5)  # five counts no bench client made
    target = bench.Target("kvmgr", "tcp", "kvmgr", server.address_text, server.authkey, server.process.pid)
    [sample] = run.Bench(group, tmp_path, bench.PROFILES["tiny"], None).incr(target, 2, key="seeded")
    assert sample.lost_updates == -5
    assert run.count_failure(sample) == "kvmgr/tcp counted 5 more than the increments made"
    assert "FAIL: 5 more than the increments made" in report.result_note(sample, bench.PROFILES["tiny"])
    peer = bench.Sample("multiprocessing-dict", "tcp", "incr", 2, 100.0, 1.0, 2.0, lost_updates=0)
    assert bench.compute_ratios([sample, peer], (2,)) == {}
    exact = bench.compute_ratios([replace(sample, lost_updates=0), peer], (2,))
    assert list(exact) == ["kvmgr/tcp incr x2 vs multiprocessing-dict/tcp get+set under a Manager Lock"]
    lost = replace(sample, lost_updates=3)
    assert run.count_failure(lost) == "kvmgr/tcp lost 3 of its increments"
    assert bench.medians([replace(sample, lost_updates=0), lost, replace(sample, lost_updates=0)])[0].lost_updates == 3


def coordination_systems() -> set[tuple[str, str]]:
    """The systems of the lock and queue rows: kvmgr and the stdlib Manager on both transports, Redis when installed."""
    systems = {("kvmgr", "tcp"), ("kvmgr", "unix"), ("multiprocessing-dict", "tcp"), ("multiprocessing-dict", "unix")}
    return systems | ({("redis", "tcp")} if launch.load_redis()[0] is not None else set())


def test_lock_rows_hand_off_between_processes_with_an_exact_count(tiny_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    finished, report_json = tiny_run
    rows = {(r["system"], r["transport"]): r for r in report_json["results"] if r["workload"] == "lock"}
    assert set(rows) == coordination_systems()
    for row in rows.values():
        assert row["clients"] == 2 and row["unit"] == "hand-offs/s", row
        assert row["lost_updates"] == 0 and row["misdelivered"] is None, row
        assert row["ops_per_s"] > 0 and row["p50_us"] > 0 and 0 < row["handoff_share"] <= 1, row
    ratios = report_json["ratios"]
    for transport in ("tcp", "unix"):
        assert ratios[f"kvmgr/{transport} lock hand-off vs multiprocessing-dict/{transport} Manager Lock()"] > 0
        assert ratios[f"kvmgr/{transport} lock hand-off vs multiprocessing-dict/{transport} Manager Lock(), p50 latency"] > 0
    if ("redis", "tcp") in rows:
        assert ratios["kvmgr/tcp lock hand-off vs redis/tcp redis-py Lock (polls every 0.1 s)"] > 0
    assert "client.lock(name, lease=30); hand-offs" in finished.stdout and "count under the lock exact" in finished.stdout


def test_queue_rows_deliver_every_item_once(tiny_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    finished, report_json = tiny_run
    rows = {(r["system"], r["transport"]): r for r in report_json["results"] if r["workload"] == "queue"}
    assert set(rows) == coordination_systems()
    for row in rows.values():
        assert row["clients"] == 2 and row["unit"] == "items/s", row
        assert row["misdelivered"] == 0 and row["lost_updates"] is None and row["ops_per_s"] > 0 and row["p50_us"] > 0, row
    ratios = report_json["ratios"]
    for transport in ("tcp", "unix"):
        assert ratios[f"kvmgr/{transport} queue hand-off vs multiprocessing-dict/{transport} Manager Queue put/get"] > 0
    if ("redis", "tcp") in rows:
        assert ratios["kvmgr/tcp queue hand-off vs redis/tcp RPUSH/BLPOP, p50 latency"] > 0
    assert "client.queue(name).put/get; every item received once" in finished.stdout


def test_startup_rows_compare_alice_and_help_with_python(tiny_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    finished, report_json = tiny_run
    rows = {r["system"]: r for r in report_json["results"] if r["workload"] == "startup"}
    assert set(rows) == {"alice --key=foo", "kvmgr --help", "python -c pass"}
    baseline = rows["python -c pass"]["p50_us"]
    for name in ("alice --key=foo", "kvmgr --help"):
        row = rows[name]
        assert row["baseline_us"] == baseline > 0 and row["unit"] == "runs/s", row
        assert report_json["ratios"][f"{name} start time vs python -c pass"] == round(row["p50_us"] / baseline, 3)
    assert (rows["alice --key=foo"]["transport"], rows["kvmgr --help"]["transport"]) == ("tcp", "none")
    assert finished.stdout.count("(target <= 3.5x: ") == 2


def test_only_startup_measures_just_the_startup_rows(tmp_path: Path) -> None:
    results = results_of_only(tmp_path, "startup")
    assert sorted(r["system"] for r in results) == ["alice --key=foo", "kvmgr --help", "python -c pass"]
    assert {r["workload"] for r in results} == {"startup"}


def test_lock_row_fails_when_the_count_under_the_lock_is_off(group: ProcessGroup, server: ServerProcess, tmp_path: Path) -> None:
    with kvmgr.connect(server.address_text, authkey=server.authkey.encode(), timeout=5.0) as client:
        client.store("seeded:record", [5, -1, 0.0])  # five acquisitions no bench client made
    target = bench.Target("kvmgr", "tcp", "kvmgr", server.address_text, server.authkey, server.process.pid)
    [sample] = run.Bench(group, tmp_path, bench.PROFILES["tiny"], None).lock(target, name="seeded")
    assert sample.lost_updates == -5 and sample.handoff_share is not None
    assert run.count_failure(sample) == "kvmgr/tcp counted 5 more than the increments under the lock made"
    assert "FAIL: 5 more than the increments under the lock made" in report.result_note(sample, bench.PROFILES["tiny"])
    peer = bench.Sample("multiprocessing-dict", "tcp", "lock", 2, 100.0, 1.0, 2.0, lost_updates=0)
    assert bench.compute_ratios([sample, peer], (1, 2)) == {}
    assert len(bench.compute_ratios([replace(sample, lost_updates=0), peer], (1, 2))) == 2


def test_queue_row_fails_when_an_item_is_not_received_exactly_once(group: ProcessGroup, server: ServerProcess,
                                                                   tmp_path: Path) -> None:
    with kvmgr.connect(server.address_text, authkey=server.authkey.encode(), timeout=5.0) as client:
        client.queue("seeded:to0").put([5, time.monotonic()])  # an item no bench client put
    target = bench.Target("kvmgr", "tcp", "kvmgr", server.address_text, server.authkey, server.process.pid)
    [sample] = run.Bench(group, tmp_path, bench.PROFILES["tiny"], None).queue(target, name="seeded")
    assert sample.misdelivered and sample.misdelivered > 0
    assert run.count_failure(sample) == f"kvmgr/tcp delivered {sample.misdelivered:,} queue item(s) not exactly once"
    assert "FAIL:" in report.result_note(sample, bench.PROFILES["tiny"])
    peer = bench.Sample("redis", "tcp", "queue", 2, 100.0, 1.0, 2.0, misdelivered=0)
    assert bench.compute_ratios([sample, peer], (1, 2)) == {}
    assert bench.medians([replace(sample, misdelivered=0), sample])[0].misdelivered == sample.misdelivered


def aio_systems() -> set[tuple[str, str]]:
    """The systems of the aio rows: kvmgr.aio on both transports, and on Redis with redis.asyncio when Redis is installed."""
    systems = {("kvmgr.aio", "tcp"), ("kvmgr.aio", "unix")}
    return systems | ({("kvmgr.aio-redis", "tcp"), ("redis.asyncio", "tcp")} if launch.load_redis()[0] is not None else set())


def test_aio_rows_check_every_answer_and_are_compared_with_redis_asyncio(tiny_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    finished, report_json = tiny_run
    rows = {(r["system"], r["transport"]): r for r in report_json["results"] if r["workload"] == "aio"}
    assert set(rows) == aio_systems()
    for row in rows.values():
        assert row["clients"] == 1 and row["unit"] == "ops/s" and row["wrong_answers"] == 0, row
        assert row["ops_per_s"] > 0 and row["p50_us"] > 0, row
    ratios = report_json["ratios"]
    if ("redis.asyncio", "tcp") in rows:
        for system in ("kvmgr.aio/tcp", "kvmgr.aio/unix", "kvmgr.aio-redis/tcp"):
            assert ratios[f"{system} asyncio concurrent gets vs redis.asyncio/tcp"] > 0
    assert "kvmgr.aio on a kvmgr server, one pipelined connection; latency: a round of 100 gets; every answer right" in finished.stdout
    assert "100 concurrent gets x2 rounds" in finished.stderr


def test_only_aio_measures_just_the_aio_rows(tmp_path: Path) -> None:
    results = results_of_only(tmp_path, "aio")
    assert {(r["system"], r["transport"]) for r in results} == aio_systems()
    assert {r["workload"] for r in results} == {"aio"} and all(r["wrong_answers"] == 0 for r in results)


def test_aio_rounds_count_every_answer_that_is_not_the_tasks_own() -> None:
    keys, values = aio.workload(10, "k")
    answers = {**dict(zip(keys, values, strict=True)), "k-3": "value-4", "k-7": None}

    async def get(key: str) -> object:
        await asyncio.sleep(0)
        return answers[key]
    rounds = asyncio.run(aio.measure_rounds(get, keys, values, rounds=3, warmup=1))
    assert rounds.wrong_answers == 2 * 4 and len(rounds.seconds) == 3 and all(s > 0 for s in rounds.seconds)
    right = asyncio.run(aio.measure_rounds(get, keys[:3], values[:3], rounds=2, warmup=0))
    assert right.wrong_answers == 0 and len(right.seconds) == 2


def test_aio_row_with_a_wrong_answer_fails_and_is_not_compared() -> None:
    wrong = bench.Sample("kvmgr.aio", "tcp", "aio", 1, 5_000.0, 200_000.0, 250_000.0, wrong_answers=3)
    peer = bench.Sample("redis.asyncio", "tcp", "aio", 1, 1_000.0, 1e6, 1.2e6, wrong_answers=0)
    assert run.count_failure(wrong) == "kvmgr.aio/tcp gave 3 concurrent get(s) an answer that was not their own"
    assert "FAIL: 3 answer(s) not the task's own" in report.result_note(wrong, bench.PROFILES["quick"])
    assert bench.compute_ratios([wrong, peer], (1,)) == {}
    right = replace(wrong, wrong_answers=0)
    assert run.count_failure(right) is None
    assert bench.compute_ratios([right, peer], (1,)) == {"kvmgr.aio/tcp asyncio concurrent gets vs redis.asyncio/tcp": 5.0}
    assert bench.medians([right, wrong, right])[0].wrong_answers == 3


def test_lock_row_takes_turns_on_one_lock_object_and_its_connection(server: ServerProcess, tmp_path: Path) -> None:
    client = adapters.KvmgrAdapter(server.address_text, server.authkey.encode())
    try:
        spec = bench.WorkerSpec("kvmgr", ["lock"], 0.05, str(tmp_path / "go"), 10, 10, 10, counter_key="turns")
        worker.prepare_handoffs(client, spec)
        assert client.lock("turns") is client.lock("turns")
        before = connections_to(server)
        for _ in range(20):
            lock = client.lock("turns")
            lock.acquire()
            lock.release()
        assert connections_to(server) == before and len(before) == 2  # the client's and the lock session's, no new one
    finally:
        client.close()
    assert connections_to(server) == set()


def connections_to(server: ServerProcess) -> set[tuple]:
    """This process's open TCP connections to the server (their local addresses)."""
    port = parse_address(server.address_text)[1]  # type: ignore[index]
    return {tuple(c.laddr) for c in psutil.Process().net_connections(kind="tcp") if c.raddr and c.raddr[1] == port}


def test_misdelivered_counts_missing_repeated_and_unknown_items() -> None:
    assert run.misdelivered([0, 1, 2, 3], [1, 0, 3, 2]) == 0
    assert run.misdelivered([0, 1, 2], [0, 2]) == 1  # 1 never arrived
    assert run.misdelivered([0, 1], [0, 1, 1]) == 1  # 1 arrived twice
    assert run.misdelivered([0], [0, 7]) == 1  # 7 was never sent


def test_startup_ratio_and_target_verdict_of_known_samples() -> None:
    alice = bench.Sample("alice --key=foo", "tcp", "startup", 1, 10.0, 40_000.0, 50_000.0, "runs/s", baseline_us=10_000.0)
    help_row = replace(alice, system="kvmgr --help", transport="none", p50_us=30_000.0)
    python = replace(alice, system="python -c pass", transport="none", p50_us=10_000.0)
    ratios = bench.compute_ratios([alice, help_row, python], (1,))
    assert ratios == {"alice --key=foo start time vs python -c pass": 4.0, "kvmgr --help start time vs python -c pass": 3.0}
    profile = bench.PROFILES["tiny"]
    assert report.result_note(alice, profile) == "x4.00 python -c pass (target <= 3.5x: not met)"
    assert report.result_note(help_row, profile) == "x3.00 python -c pass (target <= 3.5x: met)"
    assert report.result_note(python, profile) == "the baseline"


def test_selectors_floor_serves_authenticated_clients_in_order(group: ProcessGroup) -> None:
    _, address, authkey = launch.start_peer_server(group, "selectors-floor", "127.0.0.1:0")
    first, second = (adapters.SelectorsFloorAdapter(address, authkey.encode()) for _ in range(2))
    first.store("k", b"v")
    assert (second.get("k"), first.get("missing")) == (b"v", None)
    first.load({"a": b"1", "b": b"2"})
    second.conn.send(("get", "a", None))
    second.conn.send(("get", "b", None))
    assert (second.conn.recv(), second.conn.recv()) == (b"1", b"2")
    with pytest.raises(AuthenticationError):
        connection.Client(parse_address(address), authkey=b"not the key")
    assert first.get("b") == b"2"
    first.close()
    assert second.get("k") == b"v"


def test_cpu_clock_counts_every_thread_of_another_process(group: ProcessGroup) -> None:
    spinner = group.launch([sys.executable, "-c", SPINNER])
    wait_until_ready(spinner, "spun", "the spinner")
    read = run.cpu_clock(spinner.pid)
    cpu = psutil.Process(spinner.pid).cpu_times()
    assert read() >= 0.3  # both threads' 0.15 s, though they have exited
    assert read() == pytest.approx(cpu.user + cpu.system, abs=0.03)


def test_holders_keep_authenticated_connections_until_their_stdin_closes(
    group: ProcessGroup, server: ServerProcess, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(launch, "HOLDER_CONNECTIONS", 2)
    target = bench.Target("kvmgr", "tcp", "kvmgr", server.address_text, server.authkey, server.process.pid)
    holders = launch.start_holders(group, target, 3)
    assert len(holders) == 2
    assert launch.established_connections(server.process) == 3
    for holder in holders:
        holder.stdin.close()
    assert all(holder.wait(timeout=30) == 0 for holder in holders)
    deadline = time.monotonic() + 30
    while launch.established_connections(server.process) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert launch.established_connections(server.process) == 0


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path: Path) -> None:
    if importlib.util.find_spec("matplotlib") is not None:
        pytest.skip("matplotlib is installed")
    finished = subprocess.run(
        python_module("kvmgr.tools.bench", "--tiny", "--plot", str(tmp_path / "plot.png")), capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 2
    assert "pip install 'kvmgr[plot]'" in finished.stderr
    assert not (tmp_path / "plot.png").exists()


def test_add_parser_registers_the_bench_subcommand() -> None:
    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers())
    args = parser.parse_args(["bench", "--quick", "--repeats", "2", "--json", "out.json"])
    assert args.handler is bench.run_bench_command
    assert (args.quick, args.repeats, args.json, args.plot, args.tiny, args.only) == (True, 2, "out.json", None, False, None)
    assert parser.parse_args(["bench", "--only", "incr", "--only", "point"]).only == ["incr", "point"]
    assert parser.parse_args(["bench", "--only", "lock", "--only", "queue", "--only", "startup"]).only == ["lock", "queue", "startup"]
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--repeats", "0"])
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--only", "everything"])


def test_medians_and_ratios_of_known_samples() -> None:
    samples = [bench.Sample("kvmgr", "tcp", "get", 1, rate, 10.0, 20.0) for rate in (100.0, 300.0, 200.0)]
    samples += [bench.Sample("multiprocessing-dict", "tcp", "get", 1, 400.0, 5.0, 9.0)]
    results = bench.medians(samples)
    assert [(r.system, r.ops_per_s) for r in results] == [("kvmgr", 200.0), ("multiprocessing-dict", 400.0)]
    assert bench.compute_ratios(results, (1,)) == {"kvmgr/tcp get x1 vs multiprocessing-dict/tcp": 0.5}
    assert bench.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0


def test_server_cpu_and_idle_ratios_of_known_samples() -> None:
    cpus = [bench.Sample("kvmgr", "tcp", "mix", 8, 100.0, 1.0, 2.0, server_cpu_us=cpu) for cpu in (None, 40.0, 20.0)]
    results = bench.medians([*cpus, bench.Sample("selectors-floor", "tcp", "mix", 8, 100.0, 1.0, 2.0, server_cpu_us=20.0)])
    results.append(bench.Sample("kvmgr", "tcp", "idle", 1, 100.0, 12.0, 20.0, rss_growth_bytes=3 * 2**20, idle_connections=1000,
                                idle_free_p50_us=10.0))
    assert results[0].server_cpu_us == 30.0
    ratios = bench.compute_ratios(results, (1, 8))
    assert ratios["kvmgr/tcp server CPU/op x8 vs selectors-floor/tcp"] == 1.5
    assert ratios["kvmgr/tcp get p50 with idle connections vs without"] == 1.2
    assert ratios["kvmgr/tcp idle connections RSS growth MiB"] == 3.0


def test_checker_benchmark_reports_a_linearizable_verdict(tmp_path: Path) -> None:
    out = tmp_path / "checker.json"
    result = subprocess.run(python_module("kvmgr", "bench", "--checker", "--repeats", "1", "--json", str(out)),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["operations"] == 50_000 and report["linearizable"] is True and report["seconds_median"] > 0
