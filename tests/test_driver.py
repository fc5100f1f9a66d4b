"""run_driver.py end to end: the seed scenario, failing and invalid scenario files, JSON, and no leftovers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from kvmgr.tools.driver import Actors, Endpoint, step_request
from kvmgr.tools.processes import ProcessGroup, read_line, reap, suspend
from kvmgr.tools.scenarios import load_scenario
from tests.conftest import ROOT
from tests.test_stress import memory_limit

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
    assert {row["actual"] for row in concurrent} == {'"updated"'}  # the table's cells: values in JSON notation


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
    assert rows[0]["result"] == "FAIL" and rows[0]["actual"] == '"saved"' and rows[0]["expected"] == '"updated"'
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
    ("[[steps]]\nactors = ['--help']\nop = 'size'\nexpect = 0\n", "step 1: actor name '--help' is not a plain name"),
    (f"[[steps]]\nactors = ['{'a' * 65}']\nop = 'size'\nexpect = 0\n", "at most 64 characters"),
    ("[[steps]]\nactors = ['alice']\nop = 'get'\nkey = 'k'\nexpect_error = ['KeyNotFound']\n", "'expect_error' must name a kvmgr error"),
    ("[[steps]]\nactors = ['alice']\nop = 'get'\nkey = 'k'\nexpect_error = { a = 1 }\n", "'expect_error' must name a kvmgr error"),
    ("[[steps]]\nactors = ['bob']\nop = 'quit'\nexpect = 'Server Quitting..!'\n"
     "[[steps]]\nactors = ['alice']\nop = 'size'\nexpect = 0\n", "step 2 (size): comes after the quit of step 1"),
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
        while time.monotonic() < deadline and sum("kvmgr.tools.actor" in command_line(p) for p in seen.values()) < 2:
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


def test_actor_name_cannot_write_outside_the_run_directory(tmp_path: Path) -> None:
    scratch = tmp_path / "a" / "b"
    scratch.mkdir(parents=True)
    scenario = write(tmp_path, "[[steps]]\nactors = ['../../x']\nop = 'size'\nexpect = 0\n")
    result = subprocess.run([*DRIVER, "--scenario", str(scenario)], capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env={**os.environ, "TMPDIR": str(scratch)})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "actor name '../../x' is not a plain name" in result.stderr
    assert list(tmp_path.rglob("x*")) == []


def test_scenario_file_is_read_only_up_to_a_bound(tmp_path: Path) -> None:
    """/dev/zero would be read until memory runs out: refused after 1 MiB, as one line (the bound is under a 1 GiB limit)."""
    result = subprocess.run([*DRIVER, "--scenario", "/dev/zero"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                            preexec_fn=memory_limit(1024))
    assert result.returncode == 2
    assert result.stderr == "run_driver.py: error: /dev/zero: larger than 1 MiB: not a scenario file\n"


def test_results_are_compared_with_types_and_shown_in_json_notation(tmp_path: Path) -> None:
    scenario = write(tmp_path, """
[[steps]]
actors = ["alice"]
op = "store"
key = "k"
value = "1"
expect = "saved"

[[steps]]
actors = ["alice"]
op = "exists"
key = "k"
expect = 1

[[steps]]
actors = ["alice"]
op = "get"
key = "k"
expect_one_of = [1, true]

[[steps]]
actors = ["alice"]
op = "size"
expect = 1.0
""")
    result = drive("--scenario", str(scenario), "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    rows = {row["step"]: row for row in json.loads(result.stdout)["rows"]}
    assert (rows["1"]["expected"], rows["1"]["actual"], rows["1"]["result"]) == ('"saved"', '"saved"', "PASS")
    assert (rows["2"]["expected"], rows["2"]["actual"], rows["2"]["result"]) == ("1", "true", "FAIL")
    assert (rows["3"]["expected"], rows["3"]["actual"], rows["3"]["result"]) == ("one of 1, true", '"1"', "FAIL")
    assert (rows["4"]["expected"], rows["4"]["actual"], rows["4"]["result"]) == ("1.0", "1", "FAIL")
    table = drive("--scenario", str(scenario)).stdout
    assert re.search(r"^2 +alice +exists +k +1 +true +FAIL *$", table, re.MULTILINE), table
    assert re.search(r"^4 +alice +size +1\.0 +1 +FAIL *$", table, re.MULTILINE), table


def test_every_run_has_its_own_barrier_namespace(tmp_path: Path) -> None:
    scenario = write(tmp_path, "[[steps]]\nactors = ['alice', 'bob']\nop = 'size'\nexpect = 0\n")
    step = load_scenario(scenario).steps[0]
    with ProcessGroup() as group:
        first, second = (Actors(group, Endpoint("127.0.0.1:1"), tmp_path) for _ in range(2))
        barriers = {step_request(step, "alice", actors.namespace)["barrier"] for actors in (first, second)}
    assert len(barriers) == 2


def scenario_of(steps: int, actors: str, first: str = "") -> str:
    """A scenario of `first` and then `steps` stores, each by `actors` (a TOML list)."""
    step = "[[steps]]\nactors = {}\nop = 'store'\nkey = 'k{}'\nvalue = 'v'\nexpect_one_of = ['saved', 'updated']\n"
    return first + "".join(step.format(actors, i) for i in range(steps))


def actor_process(driver: psutil.Popen, name: str, deadline: float) -> psutil.Process:
    """The driver's actor process called name, once it has started."""
    while time.monotonic() < deadline and driver.poll() is None:
        for child in driver.children(recursive=True):
            if re.search(f"--name[= ]{name} ", command_line(child)):
                return child
        time.sleep(0.005)
    raise AssertionError(f"the driver never started actor {name}")


def test_hung_server_fails_the_remaining_steps_at_once(tmp_path: Path) -> None:
    """A SIGSTOPped server: one timeout, a probe, then every remaining step fails at once (not 1,000 timeouts)."""
    scenario = write(tmp_path, scenario_of(1000, "['alice']"))
    driver = psutil.Popen([*DRIVER, "--scenario", str(scenario), "--timeout", "0.5", "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        alice = actor_process(driver, "alice", deadline)
        history = Path(alice.cmdline()[alice.cmdline().index("--history") + 1])
        [server] = [p for p in driver.children() if " serve " in command_line(p)]
        while time.monotonic() < deadline and not (history.exists() and history.stat().st_size):
            time.sleep(0.005)
        suspend(server)
        stopped = time.monotonic()
        stdout, stderr = driver.communicate(timeout=30)
        assert time.monotonic() - stopped < 10
    finally:
        reap(driver)
    assert driver.returncode == 1 and "Traceback" not in stderr
    rows = [row for row in json.loads(stdout)["rows"] if row["step"].isdigit()]
    failed = [row for row in rows if row["result"] == "FAIL"]
    assert 900 < len(failed) < len(rows), "the server was stopped mid-scenario"
    assert re.match("error (OutcomeUnknown|ServerUnavailable)", failed[0]["actual"]), failed[0]
    assert all(row["actual"].startswith("error NotRun: the server stopped answering at step") for row in failed[1:])


def test_an_actor_that_died_fails_its_steps_at_once_and_nothing_is_left_running(tmp_path: Path) -> None:
    """bob is killed before his first step: his steps fail at once; an interrupt (had it come) reaps everything."""
    solo = scenario_of(300, "['alice']")
    scenario = write(tmp_path, solo + scenario_of(500, "['alice', 'bob']").replace("key = 'k", "key = 'pair"))
    driver = psutil.Popen([*DRIVER, "--scenario", str(scenario)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        bob = actor_process(driver, "bob", time.monotonic() + 30)
        seen = driver.children(recursive=True)
        bob.kill()
        try:
            stdout, stderr = driver.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # still waiting for bob, step after step: interrupt it
            driver.send_signal(signal.SIGINT)
            stdout, stderr = driver.communicate(timeout=15)
        _, alive = psutil.wait_procs(seen, timeout=5)
        assert [command_line(p) for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    finally:
        reap(driver)
    assert "Traceback" not in stderr, stderr
    assert driver.returncode == 1, stderr
    assert "error NotRun: actor bob exited with status -9" in stdout


def test_reaping_survives_a_process_whose_pipe_is_broken() -> None:
    with ProcessGroup() as group:
        sleeper = group.launch([sys.executable, "-c", "import time; time.sleep(60)"])
        quitter = group.launch([sys.executable, "-c", "pass"], stdin=True)
        quitter.wait(timeout=10)
        with contextlib.suppress(BrokenPipeError):
            quitter.stdin.write(b"unsent\n")  # buffered: flushing it to a dead process fails
            quitter.stdin.flush()
        group.reap_all()
    assert not sleeper.is_running() or sleeper.status() == psutil.STATUS_ZOMBIE


def test_an_answer_already_written_is_read_even_after_the_deadline() -> None:
    """After waiting out one wedged actor, the others' answers that did come are still read (not counted as silence)."""
    with ProcessGroup() as group:
        actor = group.launch([sys.executable, "-c", "print('answered')"])
        actor.wait(timeout=10)
        assert read_line(actor, time.monotonic() - 1) == "answered"


def target_args(request: pytest.FixtureRequest, backend: str) -> list[str]:
    """run_driver.py's arguments for a backend: nothing (a server of its own), or the session's Redis target."""
    return [] if backend == "manager" else ["--target", request.getfixturevalue("redis_url")]


@pytest.mark.parametrize("backend", ["manager", "redis"])
def test_counter_scenario_loses_updates_with_get_and_store_and_none_with_incr(request: pytest.FixtureRequest, backend: str) -> None:
    started = time.monotonic()
    result = drive("--scenario", "counter", "--json", *target_args(request, backend))
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 60, "each actor's 500 calls run in one process over one connection"
    report = json.loads(result.stdout)
    assert report["scenario"] == "counter" and report["file"].endswith("kvmgr/tools/scenarios/counter.toml")
    rows = {row["step"]: row for row in report["rows"]}
    unsafe, atomic, history = rows["1"], rows["2"], rows["history"]
    assert (unsafe["actors"], unsafe["operation"], unsafe["expected"]) == ("alice, bob", "unsafe_increment x500 each", "final at most 1000")
    final = re.fullmatch(r"(\d+) \((?:no update lost|([\d,]+) of 1,000 updates lost)\)", unsafe["actual"])
    assert final is not None and unsafe["result"] == "PASS", unsafe
    assert int(final[1]) + int((final[2] or "0").replace(",", "")) == 1000, "lost updates are what the count is missing"
    assert (atomic["operation"], atomic["expected"], atomic["actual"], atomic["result"]) == (
        "incr x500 each", "final 1000", "1000 (no update lost)", "PASS")
    assert history["result"] == "PASS" and history["actual"].startswith("yes (3004 operations)")  # 2000 + 1000 + 4 reads


def test_table_shows_the_counter_rows() -> None:
    result = drive("--scenario", "counter")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("scenario counter (kvmgr/tools/scenarios/counter.toml)\n")
    assert re.search(r"^2 +alice, bob +incr x500 each +count +final 1000 +1000 \(no update lost\) +PASS *$", result.stdout, re.MULTILINE)


NEW_OPERATIONS = """
[[steps]]
actors = ["alice"]
op = "store"
key = "doc"
value = { tags = ["a", "b"], size = 2, ratio = 0.5, ok = true }
expect = "saved"

[[steps]]
actors = ["bob"]
op = "get"
key = "doc"
expect = { ok = true, ratio = 0.5, size = 2, tags = ["a", "b"] }

[[steps]]
actors = ["alice", "bob"]
op = "add"
key = "lock"
value = "{actor}"
expect_one_of = [true, false]

[[steps]]
actors = ["alice"]
op = "incr"
key = "n"
by = 2.5
expect = 2.5

[[steps]]
actors = ["alice"]
op = "decr"
key = "n"
repeat = 5
expect_final = -2.5

[[steps]]
actors = ["bob"]
op = "pop"
key = "n"
expect = -2.5

[[steps]]
actors = ["bob"]
op = "pop"
key = "n"
expect_error = "KeyNotFound"

[[steps]]
actors = ["alice"]
op = "store"
key = "session"
value = 1
ttl = 600
expect = "saved"

[[steps]]
actors = ["alice"]
op = "persist"
key = "session"
expect = true

[[steps]]
actors = ["alice"]
op = "ttl"
key = "session"
expect = 1

[[steps]]
actors = ["bob"]
op = "expire"
key = "session"
ttl = 300
expect = true

[[steps]]
actors = ["bob"]
op = "incr"
key = "doc"
expect_error = "WrongType"
"""


@pytest.mark.parametrize("backend", ["manager", "redis"])
def test_new_operations_in_a_scenario_compare_with_types(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> None:
    result = drive("--scenario", str(write(tmp_path, NEW_OPERATIONS)), "--json", *target_args(request, backend))
    assert result.returncode == 1, result.stdout + result.stderr
    rows = {row["step"]: row for row in json.loads(result.stdout)["rows"] if row["step"] != "shutdown"}
    failed = {step: row["actual"] for step, row in rows.items() if row["result"] == "FAIL"}
    assert failed == {"10": "null"}, "only the deliberate mistake fails: ttl of a persisted key is null, not 1"
    assert rows["5"]["actual"] == "-2.5 (no update lost)" and rows["5"]["operation"] == "decr x5 each"
    assert rows["4"]["value"] == "by 2.5" and rows["8"]["value"] == "1, ttl 600"
    assert sorted(row["actual"] for row in [r for r in json.loads(result.stdout)["rows"] if r["step"] == "3"]) == ["false", "true"]
    assert rows["history"]["result"] == "PASS"
    assert "1 key left out of the check ('session': a store with a ttl: expiry is outside the model)" in rows["history"]["actual"]


def test_a_repeated_step_that_fails_shows_the_error_and_the_final_value(tmp_path: Path) -> None:
    scenario = write(tmp_path, """
[[steps]]
actors = ["alice"]
op = "store"
key = "k"
value = "text"
expect = "saved"

[[steps]]
actors = ["alice", "bob"]
op = "incr"
key = "k"
repeat = 50
expect_final = 100

[[steps]]
actors = ["alice", "bob"]
op = "incr"
key = "n"
repeat = 50
expect_at_least = 101

[[steps]]
actors = ["bob"]
op = "unsafe_increment"
key = "k"
expect_final = "text"
""")
    result = drive("--scenario", str(scenario), "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    rows = {row["step"]: row for row in json.loads(result.stdout)["rows"]}
    assert rows["2"]["result"] == "FAIL" and rows["2"]["actual"].startswith("alice: error WrongType: ")
    assert "; bob: error WrongType: " in rows["2"]["actual"]
    assert (rows["3"]["expected"], rows["3"]["actual"], rows["3"]["result"]) == ("final at least 101", "100 (no update lost)", "FAIL")
    assert rows["4"]["actual"] == "bob: error WrongType: unsafe_increment: key 'k' holds a str, not a number"
    assert rows["history"]["result"] == "PASS" and rows["shutdown"]["result"] == "PASS"


def test_scenario_by_bare_name_and_an_unknown_name(tmp_path: Path) -> None:
    assert json.loads(drive("--scenario", "seed", "--json").stdout)["passed"] is True
    unknown = drive("--scenario", "nosuch")
    assert unknown.returncode == 2
    assert unknown.stderr == (
        "run_driver.py: error: nosuch: no such file, and no shipped scenario of that name (shipped: coordination, counter, seed)\n"
    )


@pytest.mark.parametrize("backend", ["manager", "redis"])
def test_coordination_scenario_passes_and_shows_how_long_bob_waited(request: pytest.FixtureRequest, backend: str) -> None:
    """alice is killed -9 holding the lock: bob gets it at once from kvmgr's server (her connection closed), after her
    2 s lease on Redis; bob sees alice's store; the three jobs are taken once each; no lock, wait or queue call is in a history."""
    result = drive("--scenario", "coordination", "--json", *target_args(request, backend))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {row["step"]: row for row in json.loads(result.stdout)["rows"] if row["step"] != "shutdown"}
    assert re.fullmatch(r"token (\d+), waited \d+\.\d{3}s; then killed -9 holding it", rows["1"]["actual"]), rows["1"]
    taken = re.fullmatch(r"token (\d+), waited (\d+\.\d{3})s; granted (\d+\.\d{3})s after alice was killed holding it", rows["2"]["actual"])
    assert taken is not None, rows["2"]
    assert int(taken[1]) > int(re.findall(r"token (\d+)", rows["1"]["actual"])[0]), "fencing tokens grow"
    granted_after = float(taken[3])
    if backend == "manager":
        assert granted_after < 1.0, "freed when alice's connection closed, long before her 2 s lease ends"
    else:
        assert 1.5 < granted_after < 3.0, "on Redis the dead holder's lock lasts until its lease ends"
    assert rows["5"]["actual"].startswith('"v2" (version ') and rows["5"]["result"] == "PASS"
    together = rows["10"]["actual"]
    assert re.fullmatch(r"alice got [^;]*; bob got [^;]*", together), together
    assert sorted(re.findall(r'"(job-\d)"', together)) == ["job-1", "job-2", "job-3"]
    assert rows["history"]["actual"] == "yes (2 operations)", "only alice's two stores are recorded"


DELIBERATE = """
[[steps]]
actors = ["alice"]
op = "lock"
lock = "L"
expect_within = 5

[[steps]]
name = "alice still holds L from her last step"
actors = ["bob"]
op = "lock"
lock = "L"
timeout = 0.2
expect_error = "LockTimeout"

[[steps]]
actors = ["bob"]
op = "unlock"
lock = "L"
expect_error = "LockLost"

[[steps]]
actors = ["alice"]
op = "unlock"
lock = "L"
expect = true

[[steps]]
actors = ["alice", "bob"]
op = "lock"
lock = "L"
timeout = 5
expect_within = 5

[[steps]]
actors = ["alice"]
op = "qput"
queue = "q"
value = [1, "a"]
expect = 1

[[steps]]
actors = ["alice"]
op = "qput"
queue = "q"
value = [1, "a"]
expect = 2

[[steps]]
name = "a job twice and another never: FAIL"
actors = ["alice", "bob"]
op = "qget"
queue = "q"
until_empty = true
timeout = 0.1
expect_together = [[1, "a"], "b"]

[[steps]]
actors = ["bob"]
op = "wait"
key = "never-written"
after = 0
timeout = 0.2
expect_error = "WaitTimeout"

[[steps]]
name = "a wait that cannot be met in time: FAIL"
actors = ["bob"]
op = "wait"
key = "never-written"
after = "current"
timeout = 0.3
expect_within = 0.1
"""


@pytest.mark.parametrize("backend", ["manager", "redis"])
def test_coordination_steps_pass_and_fail_as_they_should(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> None:
    result = drive("--scenario", str(write(tmp_path, DELIBERATE)), "--json", *target_args(request, backend))
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)["rows"]
    failed = {row["step"]: row["actual"] for row in report if row["result"] == "FAIL"}
    assert set(failed) == {"5", "8", "10"}, failed
    both = [row for row in report if row["step"] == "5"]
    assert sorted(row["actual"].split(";")[0].startswith("token ") for row in both) == [False, True], "one of two gets the lock"
    assert next(row["actual"] for row in both if not row["actual"].startswith("token")).startswith("error LockTimeout: ")
    assert failed["8"].endswith('; never got "b"; got more than once or not expected [1, "a"]'), failed["8"]
    assert failed["10"].startswith("error WaitTimeout: No change to key:never-written after version 0 within 0.3s")
    rows = {row["step"]: row for row in report}
    assert (rows["2"]["result"], rows["3"]["result"], rows["4"]["result"]) == ("PASS", "PASS", "PASS"), "alice held L across steps"
    assert rows["2"]["actual"] == "error LockTimeout: Not acquired lock:L within 0.2s"
    assert (rows["1"]["key"], rows["1"]["expected"], rows["8"]["operation"], rows["9"]["value"]) == (
        "lock L", "acquired within 5s", "qget until empty", "timeout 0.2, after 0")
    assert rows["history"]["result"] == "PASS"


def test_a_kill_step_restarts_the_actor_for_its_later_steps(tmp_path: Path) -> None:
    scenario = write(tmp_path, """
[[steps]]
actors = ["alice"]
op = "lock"
lock = "L"
kill = true
expect_within = 5

[[steps]]
actors = ["alice"]
op = "incr"
key = "n"
repeat = 3
expect_final = 3

[[steps]]
actors = ["alice"]
op = "lock"
lock = "L"
kill = true
timeout = 5
expect_within = 5

[[steps]]
actors = ["alice"]
op = "size"
expect = 1
""")
    result = drive("--scenario", str(scenario), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {row["step"]: row["actual"] for row in json.loads(result.stdout)["rows"]}
    pattern = r"token \d+, waited \d+\.\d{3}s; granted \d+\.\d{3}s after alice was killed holding it; then killed -9 holding it"
    assert re.fullmatch(pattern, rows["3"]), rows["3"]
    assert rows["4"] == "1"
    assert rows["history"].startswith("yes (5 operations)"), "the restarted alice appends to her history"


@pytest.mark.parametrize("scenario", ["seed", "counter", "coordination"])
def test_a_run_on_a_shared_redis_leaves_it_as_it_found_it_and_writes_its_page(redis_url: str, tmp_path: Path, scenario: str) -> None:
    import kvmgr

    with kvmgr.connect(redis_url) as shared:
        shared.store_many({"foo": "someone else's", "count": 41})  # the scenarios' own key names, held by another user
        before = shared.get_many(shared.keys())
        kvmgr_keys_before = own_keys(redis_url)
        page = tmp_path / "history.html"
        result = drive("--scenario", scenario, "--target", redis_url, "--html", str(page), timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert shared.get_many(shared.keys()) == before  # nothing added, nothing changed, nothing flushed
        assert own_keys(redis_url) <= {b"\xffkvmgr:revision", b"\xffkvmgr:versions"}  # no lock, queue or barrier left
        assert own_keys(redis_url) == kvmgr_keys_before  # and kvmgr's shared bookkeeping as it was
        assert not any(field.startswith(b"driver-") for field in version_fields(redis_url))  # nor a version of the run's keys
        assert page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
        shared.delete("foo")
        shared.delete("count")


def own_keys(url: str) -> set[bytes]:
    """kvmgr's own (internal) keys in a Redis database."""
    import redis

    with redis.Redis.from_url(url) as db:
        return {name for name in db.scan_iter(match=b"\xff*")}


def version_fields(url: str) -> list[bytes]:
    """The keys kvmgr's version bookkeeping remembers in a Redis database."""
    import redis

    with redis.Redis.from_url(url) as db:
        return [field for field, _ in db.hscan_iter(b"\xffkvmgr:versions")]


@pytest.mark.parametrize("deployment", ["sentinel_deployment", "redis_cluster"])
@pytest.mark.parametrize("scenario", ["seed", "counter", "coordination"])
def test_the_shipped_scenarios_pass_through_sentinel_and_on_a_cluster(
    request: pytest.FixtureRequest, deployment: str, scenario: str,
) -> None:
    import kvmgr

    url = request.getfixturevalue(deployment).url
    with kvmgr.connect(url) as shared:
        shared.store("unrelated", "kept")
        before = shared.get_many(shared.keys())  # other tests of the session may have left keys in the deployment
        result = drive("--scenario", scenario, "--target", url, "--json", timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["passed"] is True
        assert shared.get_many(shared.keys()) == before  # the unrelated key kept, and nothing of the run's left
        shared.delete("unrelated")
