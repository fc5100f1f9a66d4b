"""run_driver.py end to end: the seed scenario, failing and invalid scenario files, JSON, and no leftovers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from kvmgr.processes import reap
from tests.conftest import ROOT

DRIVER = [sys.executable, str(ROOT / "run_driver.py")]


def drive(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([*DRIVER, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return path


def test_seed_scenario_passes_with_a_table() -> None:
    result = drive()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout and "FAIL" not in result.stdout
    assert "server exits with status 0" in result.stdout
    assert "server leaves no child processes" in result.stdout


def test_json_report_lists_every_step_and_the_shutdown_checks() -> None:
    report = json.loads(drive("--json").stdout)
    assert report["passed"] is True
    operations = [row["operation"] for row in report["rows"]]
    assert operations[:3] == ["store", "get", "store"]
    assert sum(row["step"] == "shutdown" for row in report["rows"]) == 3
    concurrent = [row for row in report["rows"] if row["step"] == "3"]
    assert {row["actual"] for row in concurrent} == {"updated"}


def test_failing_expectation_gives_a_fail_row_and_exit_1(tmp_path: Path) -> None:
    scenario = write(tmp_path, """
[[steps]]
actors = ["alice"]
op = "store"
key = "k"
value = "v"
expect = "updated"
""")
    result = drive("--scenario", str(scenario), "--json")
    assert result.returncode == 1
    rows = json.loads(result.stdout)["rows"]
    assert rows[0]["result"] == "FAIL" and rows[0]["actual"] == "saved"
    assert all(row["result"] == "PASS" for row in rows[1:])  # the driver still quit the server cleanly


def test_new_test_case_needs_no_code_change(tmp_path: Path) -> None:
    scenario = write(tmp_path, """
name = "cas race"
[[steps]]
actors = ["alice", "bob", "carol"]
op = "cas"
key = "lock"
absent = true
value = "{actor}"
expect_one_of = [true, false]

[[steps]]
actors = ["dave"]
op = "size"
expect = 1

[[steps]]
actors = ["alice"]
op = "store_many"
pairs = { a = "1", b = "2" }
expect = { a = "saved", b = "saved" }
""")
    result = drive("--scenario", str(scenario), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert sorted(row["actual"] for row in rows if row["step"] == "1") == ["false", "false", "true"]


@pytest.mark.parametrize(("text", "problem"), [
    ("[[steps]]\nactors = ['alice']\nop = 'fly'\nexpect = 1\n", "step 1: 'op' must be one of"),
    ("[[steps]]\nactors = ['alice']\nop = 'get'\nexpect = 'x'\n", "step 1: get needs 'key'"),
    ("[[steps]]\nname = 'lonely'\nactors = ['alice']\nop = 'get'\nkey = 'k'\n", "step 1 (lonely): give exactly one of expect"),
    ("[[steps]]\nactors = 'alice'\nop = 'get'\nkey = 'k'\nexpect = 'x'\n", "'actors' must be a non-empty list"),
    ("[[steps]\n", "not valid TOML"),
    ("name = 'empty'\n", "no [[steps]]"),
])
def test_invalid_scenario_names_file_step_and_problem(tmp_path: Path, text: str, problem: str) -> None:
    scenario = write(tmp_path, text)
    result = drive("--scenario", str(scenario))
    assert result.returncode == 2
    assert result.stderr.startswith(f"run_driver.py: error: {scenario}")
    assert problem in result.stderr
    assert result.stderr.count("\n") == 1


def test_missing_scenario_file_is_exit_2(tmp_path: Path) -> None:
    result = drive("--scenario", str(tmp_path / "nope.toml"))
    assert result.returncode == 2 and "cannot read scenario" in result.stderr


def command_line(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_reaps_every_process_the_driver_started(tmp_path: Path, signum: int) -> None:
    step = "[[steps]]\nactors = ['alice', 'bob']\nop = 'store'\nkey = 'k{}'\nvalue = 'v'\nexpect_one_of = ['saved', 'updated']\n"
    scenario = write(tmp_path, "".join(step.format(i) for i in range(1000)))
    driver = psutil.Popen([*DRIVER, "--scenario", str(scenario)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        seen: dict[int, psutil.Process] = {}
        while time.monotonic() < deadline and sum("kvmgr.client" in command_line(p) for p in seen.values()) < 2:
            for child in driver.children(recursive=True):
                seen.setdefault(child.pid, child)
            time.sleep(0.01)
        assert any("serve" in command_line(p) for p in seen.values()), "the driver never started its server"
        driver.send_signal(signum)
        assert driver.wait(timeout=15) == 130
        _, alive = psutil.wait_procs(list(seen.values()), timeout=5)
        assert [p.pid for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    finally:
        reap(driver)
