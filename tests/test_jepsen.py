"""Jepsen single-register logs: the reader's mapping of each kind of line, and `kvmgr check --format jepsen` on them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kvmgr.errors import HistoryError
from kvmgr.tools.processes import python_module
from kvmgr.verify.check import check_operations
from kvmgr.verify.history import Operation
from kvmgr.verify.jepsen import JEPSEN_KEY, read_jepsen

DATA = Path(__file__).parent / "data"


def kvmgr_check(*args: str) -> subprocess.CompletedProcess:
    """Run `python -m kvmgr check args`; return the finished process."""
    return subprocess.run(python_module("kvmgr", "check", *args), capture_output=True, text=True, timeout=60)


def jepsen_log(tmp_path: Path, *lines: str) -> Path:
    """Write a log of `lines`, each 'PROCESS TYPE F VALUE' with tabs, as Jepsen's jepsen.util logger prints them."""
    path = tmp_path / "jepsen.log"
    path.write_text("".join("INFO  jepsen.util - " + "\t".join(line.split(" ", 3)) + "\n" for line in lines))
    return path


def shown(op: Operation) -> tuple[object, ...]:
    """The fields a test compares."""
    return (op.client, op.op, op.value, op.expected, op.result, op.status, op.start, op.end)


def test_each_kind_of_line_becomes_the_right_operation() -> None:
    """:info and never-completed writes are unknown outcomes, timed-out and failed reads are dropped, a write's answer is null."""
    ops = read_jepsen(DATA / "jepsen-info.log")
    assert {op.key for op in ops} == {JEPSEN_KEY}
    assert [shown(op) for op in ops] == [
        ("p0", "store", "1", None, None, "ok", 1, 2),
        ("p1", "store", "2", None, None, "info", 3, None),  # :info write
        ("p6", "get", None, None, "2", "ok", 7, 8),
        ("p3", "cas", "4", "2", None, "info", 9, None),  # :info cas
        ("p5", "get", None, None, "3", "ok", 14, 15),
        ("p4", "store", "3", None, None, "info", 13, None),  # never completed
    ]  # the :info read of p2 and the :fail read of p7 are gone


def test_fail_cas_did_not_swap_and_fail_write_never_happened(tmp_path: Path) -> None:
    """A :fail cas is a cas that returned false; a :fail write is dropped; nil reads are absent."""
    path = jepsen_log(tmp_path, "0 :invoke :cas [1 2]", "0 :fail :cas [1 2]", "1 :invoke :write 5", "1 :fail :write 5",
                      "2 :invoke :read nil", "2 :ok :read nil")
    assert [shown(op) for op in read_jepsen(path)] == [
        ("p0", "cas", "2", "1", False, "ok", 1, 2),
        ("p2", "get", None, None, None, "ok", 5, 6),
    ]


def test_unknown_outcomes_are_what_makes_the_info_log_linearizable() -> None:
    """The reads of 2 and 3 need the :info write and the never-completed one; as failed writes they would be illegal."""
    ops = read_jepsen(DATA / "jepsen-info.log")
    assert check_operations(ops, initial="empty").outcome == "ok"
    failed = [op if op.status != "info" or op.op != "store" else Operation(
        client=op.client, op=op.op, key=op.key, value=op.value, expected=None, result=None, status="fail", start=op.start, end=op.start + 1,
    ) for op in ops]
    assert check_operations(failed, initial="empty").outcome == "illegal"


def test_timestamped_lines_and_other_lines(tmp_path: Path) -> None:
    """The logger's timestamped form is read too; other lines and the nemesis's are ignored."""
    path = tmp_path / "jepsen.log"
    path.write_text(
        "2017-03-23 19:52:43,178{GMT}\tINFO\t[jepsen worker 3] jepsen.util: 3\t:invoke\t:write\t7\n"
        "INFO  jepsen.core - Run complete, writing\n"
        "INFO  jepsen.util - :nemesis\t:info\t:start\tnil\n"
        "2017-03-23 19:52:43,201{GMT}\tINFO\t[jepsen worker 3] jepsen.util: 3\t:ok\t:write\t7\n"
    )
    assert [shown(op) for op in read_jepsen(path)] == [("p3", "store", "7", None, None, "ok", 1, 4)]


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (("0 :invoke :cas [1", "0 :ok :cas [1 2]"), ":1: a cas takes [EXPECTED NEW]"),
        (("0 :invoke :write x",), ":1: expected an integer (got 'x')"),
        (("0 :invoke :read nil", "0 :ok :read one"), ":2: expected an integer (got 'one')"),
        (("0 :ok :read 1",), ":1: process 0 completes :read without invoking it"),
        (("0 :invoke :read nil", "0 :ok :write 1"), ":2: process 0 completes :write without invoking it"),
        (("0 :invoke :read nil", "0 :invoke :read nil"), ":2: process 0 invokes again before its last call completed"),
        (("0 :invoke :add 1",), ":1: expected :read, :write or :cas and a value (got ':add"),
    ],
)
def test_malformed_logs_name_the_file_and_line(tmp_path: Path, lines: tuple[str, ...], problem: str) -> None:
    """A line the reader cannot make sense of: HistoryError with file:line and what is wrong."""
    path = jepsen_log(tmp_path, *lines)
    with pytest.raises(HistoryError, match=r"^" + str(path) + r":\d") as caught:
        read_jepsen(path)
    assert str(caught.value).startswith(str(path) + problem)


def test_kvmgr_check_reports_each_jepsen_log() -> None:
    """Several logs in one run: a block per file, exit 1 for the illegal one; --json gives one list."""
    files = [str(DATA / name) for name in ("jepsen-ok.log", "jepsen-illegal.log", "jepsen-info.log")]
    result = kvmgr_check("--format", "jepsen", *files)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{files[0]}: linearizable: 7 operations on 1 keys"
    assert lines[1] == f"{files[1]}: NOT linearizable: key 'register'"
    assert lines[-1] == f"{files[2]}: linearizable: 6 operations on 1 keys"
    report = json.loads(kvmgr_check("--format", "jepsen", "--json", *files).stdout)
    assert [(entry["file"], entry["outcome"]) for entry in report] == list(zip(files, ["ok", "illegal", "ok"], strict=True))


def test_a_malformed_log_among_several_is_reported_and_the_others_checked() -> None:
    """The malformed file: one line on stderr naming file and line; the others still get their verdicts; exit 2."""
    files = [str(DATA / name) for name in ("jepsen-illegal.log", "jepsen-malformed.log", "jepsen-ok.log")]
    result = kvmgr_check("--format", "jepsen", *files)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == f"kvmgr check: error: {files[1]}:3: a cas takes [EXPECTED NEW] (got '[1')\n"
    assert result.stdout.startswith(f"{files[0]}: NOT linearizable") and f"{files[2]}: linearizable" in result.stdout
    alone = kvmgr_check("--format", "jepsen", files[1])
    assert (alone.returncode, alone.stdout, alone.stderr.count("\n")) == (2, "", 1)


def test_the_register_starts_empty_unless_told(tmp_path: Path) -> None:
    """--format jepsen defaults to --initial empty: a first read of a value nobody wrote is illegal, unless unknown."""
    path = jepsen_log(tmp_path, "0 :invoke :read nil", "0 :ok :read 4")
    assert kvmgr_check("--format", "jepsen", str(path)).returncode == 1
    assert kvmgr_check("--format", "jepsen", "--initial", "unknown", str(path)).returncode == 0
    assert kvmgr_check(str(path)).returncode == 2  # not a kvmgr history
