"""`kvmgr check` as users run it: real histories from real clients, --initial, --timeout, hostile files, memory."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

import kvmgr
from kvmgr.tools.processes import ServerProcess, python_module
from kvmgr.tools.stress import StressReport
from kvmgr.verify.check import CheckResult, check_operations
from kvmgr.verify.history import HistoryWriter, Operation, operation_to_json
from tests.conftest import run_actor


def kvmgr_check(*args: str) -> subprocess.CompletedProcess:
    """Run `python -m kvmgr check args`; return the finished process."""
    return subprocess.run(python_module("kvmgr", "check", *args), capture_output=True, text=True, timeout=120)


def write_history(path: Path, ops: list[Operation]) -> Path:
    """Write operations as a JSON-lines history."""
    path.write_text("".join(operation_to_json(op) + "\n" for op in ops))
    return path


def test_a_string_that_looks_like_hex_is_not_bytes(server: ServerProcess, tmp_path: Path) -> None:
    """bytes b'\\x01' and the str 'hex:01' are different values: a cas expecting one fails on the other, rightly."""
    path = tmp_path / "h.jsonl"
    with HistoryWriter(path) as history, kvmgr.connect(server.address_text, authkey=server.authkey.encode(), history=history) as client:
        client.store("k", b"\x01")
        assert client.cas("k", "hex:01", "x") is False
        assert client.get("k") == b"\x01"
        client.store("k", "hex:01")
        assert client.cas("k", b"\x01", "y") is False
        assert client.get("k") == "hex:01"
    result = kvmgr_check(str(path))
    assert (result.returncode, result.stdout) == (0, "linearizable: 6 operations on 1 keys\n"), result.stdout + result.stderr


def test_a_history_recorded_against_a_store_that_held_data(server: ServerProcess, tmp_path: Path) -> None:
    """README's alice/bob --history run on a key stored before the history began: linearizable from an unknown start."""
    path = tmp_path / "h.jsonl"
    assert run_actor(server, "--key=foo", "--value=before").returncode == 0  # not recorded
    assert run_actor(server, "--key=foo", "--value=bar", "--history", str(path)).stdout == "Update Successfully for key:foo\n"
    assert run_actor(server, "--key=foo", "--history", str(path), name="bob").stdout == "bar\n"
    assert run_actor(server, "--key=foo", "--op=delete", "--history", str(path), name="bob").returncode == 0
    default = kvmgr_check(str(path))
    assert (default.returncode, default.stdout) == (0, "linearizable: 3 operations on 1 keys\n"), default.stdout + default.stderr
    empty = kvmgr_check("--initial", "empty", str(path))
    assert empty.returncode == 1 and empty.stdout.startswith("NOT linearizable: key 'foo'")


HOSTILE = {
    "a 4,301-digit integer": b'{"client": "a", "start": 1' + b"0" * 4300 + b"}\n",
    "an array nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "an object nested 100,000 deep": b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"\n",
    "a value nested 50,000 deep": b'{"client": "a", "value": ' + b"[" * 50_000 + b"]" * 50_000 + b"}\n",
    "invalid UTF-8": b'{"client": "\xff"}\n',
    "a NaN time": b'{"client": "a", "op": "get", "key": "k", "value": null, "result": null, "status": "ok", "start": NaN, "end": 1}\n',
    "an infinite time": b'{"client": "a", "op": "get", "key": "k", "value": null, "result": null, "status": "ok", '
    b'"start": 1e999, "end": 1}\n',
    "a bad bytes tag": b'{"client": "a", "op": "store", "key": "k", "value": {"$bytes": "xyz"}, "result": "saved", "status": "ok", '
    b'"start": 1, "end": 2}\n',
    "binary junk": b"\x00\x01\x02 {\n",
    "a bare string": b'"just a string"\n',
}


@pytest.mark.parametrize("content", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_input_is_one_line_and_exit_2(tmp_path: Path, content: bytes) -> None:
    """Malformed or hostile files: exit 2 and one line on stderr naming the file and line, never a traceback."""
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(content)
    result = kvmgr_check(str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"kvmgr check: error: {path}:1: ")


def test_values_that_cannot_be_printed_as_they_are(tmp_path: Path) -> None:
    """Lone surrogates and control characters in keys and values: the verdict is still printed, escaped."""
    ops = [Operation(client="a", op="store", key="\ud800", value="\udfff\n", expected=None, result="saved", status="ok", start=1, end=2),
           Operation(client="b", op="get", key="\ud800", value=None, expected=None, result="\x00", status="ok", start=3, end=4)]
    result = kvmgr_check(str(write_history(tmp_path / "h.jsonl", ops)))
    assert result.returncode == 1 and result.stdout.startswith("NOT linearizable: key '\\ud800'"), result.stdout + result.stderr
    assert "'\\x00'" in result.stdout


@pytest.mark.parametrize("where", ["missing.jsonl", "."])
def test_unreadable_paths_are_one_line_and_exit_2(tmp_path: Path, where: str) -> None:
    """A missing file or a directory: exit 2 and one line."""
    result = kvmgr_check(str(tmp_path / where))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def lost_writes_puzzle(writes: int) -> list[Operation]:
    """`writes` stores whose replies were lost, each read by one of as many concurrent gets, then a get of a
    value nobody wrote: not linearizable.

    The search cannot know that before it has tried the lost stores in every subset and order (the cache
    makes that 2 to the `writes` configurations, not a factorial), so it takes exponentially long.
    """
    ops = [
        Operation(client=f"w{n}", op="store", key="k", value=f"v{n}", expected=None, result=None, status="info", start=0, end=None)
        for n in range(writes)
    ]
    ops += [
        Operation(client=f"r{n}", op="get", key="k", value=None, expected=None, result=f"v{n}", status="ok", start=1, end=100)
        for n in range(writes)
    ]
    return [*ops, Operation(client="z", op="get", key="k", value=None, expected=None, result="ghost", status="ok", start=200, end=201)]


def test_the_time_limit_answers_unknown_with_progress(tmp_path: Path) -> None:
    """A history too hard to decide in time: exit 3, 'unknown' with the reason, progress lines on stderr meanwhile."""
    path = write_history(tmp_path / "hard.jsonl", lost_writes_puzzle(24))
    result = kvmgr_check("--timeout", "2.5", "--initial", "empty", str(path))
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout.startswith("unknown: the time limit (2.5s) came first, on key 'k' (1 of 1")
    assert "no violation found" in result.stdout
    progress = result.stderr.splitlines()
    assert progress and all(line.startswith("check: 0/1 keys done, key 'k': ") for line in progress)


def test_a_small_puzzle_is_decided() -> None:
    """The same puzzle, small enough to decide: not linearizable; with the last value written, it is."""
    ops = lost_writes_puzzle(6)
    assert check_operations(ops).linearizable is False
    ghost = Operation(client="y", op="store", key="k", value="ghost", expected=None, result="updated", status="ok", start=150, end=160)
    assert check_operations([*ops, ghost]).linearizable is True


def test_unknown_in_the_api_and_in_stress_reports() -> None:
    """check_operations answers None past its limit; stress shows 'unknown' and does not pass."""
    result = check_operations(lost_writes_puzzle(24), timeout=0.2)
    assert (result.linearizable, result.verdict, result.key) == (None, "unknown", "k")
    report = StressReport(2, [], 1.0, result)
    assert not report.passed
    assert "linearizable: unknown" in report.table() and "unknown: the time limit" in report.table()
    data = json.loads(report.to_json())
    assert (data["linearizable"], data["verdict"], data["passed"], data["first_bad_key"]) == (None, "unknown", False, None)
    assert data["check_detail"].startswith("the time limit (0.2s) came first")
    assert CheckResult(True, None, [], 1, 1).verdict == "yes" and CheckResult(False, "k", [], 1, 1).verdict == "NO"


def test_stress_with_a_check_time_limit_too_short_is_unknown_and_fails() -> None:
    """kvmgr stress: when the check's time limit comes first, the verdict is unknown and the run fails (exit 1)."""
    argv = python_module("kvmgr", "stress", "--clients", "4", "--ops", "500", "--keys", "1", "--check-timeout", "0.001", "--json")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert (report["verdict"], report["linearizable"], report["passed"]) == ("unknown", None, False)
    assert "time limit" in report["check_detail"]


MEMORY_SCRIPT = """
import json, resource
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from kvmgr.verify.check import check_operations
from kvmgr.tools.check_bench import peak_rss_mb, synthetic_history
ops = synthetic_history(8, 50_000, 1, 0)
history = peak_rss_mb()
verdict = check_operations(ops).linearizable
print(json.dumps({"linearizable": verdict, "history_mb": history, "peak_mb": peak_rss_mb()}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the peak is read from /proc/self/status (VmHWM)")
def test_memory_on_one_hot_key_stays_near_linear() -> None:
    """50,000 operations on one key are checked within 150 MB of peak memory, history included (in its own process)."""
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-500:]
    figures = json.loads(result.stdout)
    assert figures["linearizable"] is True
    assert figures["peak_mb"] < 150, figures


def test_the_checker_bench_reports_each_case_with_its_peak_memory() -> None:
    """bench --checker's cases each run in a fresh process and report time, verdict and peak memory."""
    from kvmgr.tools.check_bench import CheckerCase, run_checker_benchmark

    report = run_checker_benchmark(repeats=1, cases=(CheckerCase(2000, 4, 1), CheckerCase(3000, 8, 2)))
    assert [(case["operations"], case["keys"]) for case in report["cases"]] == [(2000, 1), (3000, 2)]  # type: ignore[attr-defined]
    for case in report["cases"]:  # type: ignore[attr-defined]
        assert case["linearizable"] is True and case["peak_mb"] >= case["history_peak_mb"] > 0
    assert report["operations"] == 2000


def test_several_files_are_each_reported_and_the_worst_status_wins(tmp_path: Path) -> None:
    """One block per file, prefixed by its name; exit 1 if any is illegal, else 3 if any is unknown; --json: a list."""
    store = Operation(client="a", op="store", key="k", value="v", expected=None, result="saved", status="ok", start=1, end=2)
    good = write_history(tmp_path / "good.jsonl", [store])
    bad = write_history(tmp_path / "bad.jsonl", [store, dataclasses.replace(store, start=3, end=4)])
    hard = write_history(tmp_path / "hard.jsonl", lost_writes_puzzle(24))
    result = kvmgr_check("--initial", "empty", "--timeout", "0.3", str(good), str(hard))
    assert result.returncode == 3, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines == [f"{good}: linearizable: 1 operations on 1 keys", lines[1]] and lines[1].startswith(f"{hard}: unknown: ")
    result = kvmgr_check("--initial", "empty", "--timeout", "0.3", "--json", str(hard), str(bad), str(good))
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert [(entry["file"], entry["outcome"], entry["key"]) for entry in report] == [
        (str(hard), "unknown", "k"), (str(bad), "illegal", "k"), (str(good), "ok", None),
    ]
    missing = kvmgr_check(str(good), str(tmp_path / "missing.jsonl"))
    assert missing.returncode == 2 and missing.stdout == f"{good}: linearizable: 1 operations on 1 keys\n"
    assert missing.stderr == f"kvmgr check: error: {tmp_path / 'missing.jsonl'}: no such history file\n"


def test_keys_that_use_expiry_are_named_in_the_output_and_the_json(tmp_path: Path) -> None:
    """kvmgr check leaves a key with a ttl out, and says so after the verdict and in --json."""
    ops = [
        Operation(client="a", op="store", key="cache", value=[1, 2.5], expected=None, result="saved", status="ok", start=0, end=1, ttl=5.0),
        Operation(client="a", op="incr", key="n", value=1, expected=None, result=1, status="ok", start=2, end=3),
    ]
    path = write_history(tmp_path / "h.jsonl", ops)
    text = kvmgr_check(str(path))
    assert (text.returncode, text.stdout.splitlines()) == (0, [
        "linearizable: 2 operations on 1 keys",
        "1 key left out of the check ('cache': a store with a ttl: expiry is outside the model)",
    ]), text.stderr
    data = json.loads(kvmgr_check("--json", str(path)).stdout)
    assert data[0]["skipped_keys"] == {"cache": "a store with a ttl: expiry is outside the model"}
