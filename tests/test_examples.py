"""Every program in examples/ runs as printed, shows what it says it shows, exits 0 and leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from kvmgr.tools.processes import ProcessGroup, child_environment, read_line

from .conftest import ROOT, running

EXAMPLES = ROOT / "examples"
RUN_MARK = "KVMGR_EXAMPLE_RUN"
RUN_TIMEOUT = 120.0
HELPERS = {"servers.py"}  # not an example: the throwaway servers the examples start

# What each example must print (regular expressions, matched against whole lines, in this order).
EXPECTED = {
    "counter_pool": [
        r"kvmgr incr: 4000 of 4000",
        r"Manager dict d\['hits'\] \+= 1: \d+ of 4000 \(updates lost in the race: \d+\)",
    ],
    "cache_expiry": [
        r"round 1, cold cache: 8 squares, 8 computed, 0 from the cache",
        r"round 2, warm cache: 8 squares, 0 computed, 8 from the cache",
        r"square:20 has [01]\.\d s left to live",
        r"after 2\.1 s, square:20 is cached: False",
        r"round 3, expired: 8 squares, 8 computed, 0 from the cache",
    ],
    "job_queue": [
        *[rf"consumer {n} processed \d+ jobs" for n in range(3)],
        r"200 jobs produced, 200 processed, 0 processed twice",
    ],
    "wait_for_config": [
        r"worker: applying \{'log_level': 'info', 'workers': 2\} \(version \d+\)",
        r"main: setting workers to 4",
        r"worker: applying \{'log_level': 'info', 'workers': 4\} \(version \d+\)",
        r"main: setting workers to 8",
        r"worker: applying \{'log_level': 'info', 'workers': 8\} \(version \d+\)",
        r"main: deleting the configuration",
        r"worker: configuration deleted \(version \d+\), stopping",
        r"worker exited with status 0",
    ],
    "crash_safe_lock": [
        r"holder \(pid \d+\) has the lock, token (\d+); locked: True",
        r"holder killed; we got the lock (?P<waited>\d+\.\d) s later \(its lease was (?P<lease>\d+) s\)",
        r"our fencing token \d+ > the dead holder's \d+",
        r"write with our token \d+: True",
        r"write with the old token \d+: False",
    ],
}


def run_example(group: ProcessGroup, name: str, *args: str) -> list[str]:
    """Run `python examples/NAME.py args`; its stdout lines, once it exited 0 and left no process of its own running."""
    mark = uuid.uuid4().hex
    process = group.launch([sys.executable, str(EXAMPLES / f"{name}.py"), *args], env=child_environment(None, {RUN_MARK: mark}))
    try:
        out, err = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"examples/{name}.py did not finish within {RUN_TIMEOUT:g}s")
    assert process.returncode == 0, f"examples/{name}.py exited {process.returncode}:\n{err.decode()}"
    assert not leftovers(mark), f"examples/{name}.py left processes running: {leftovers(mark)}"
    return str(out.decode()).splitlines()


def leftovers(mark: str) -> list[str]:
    """The command lines of running processes started by the example run carrying this mark."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(RUN_MARK) == mark and running(process):
                found.append(" ".join(process.cmdline()))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def assert_prints(lines: list[str], expected: list[str]) -> list[re.Match[str]]:
    """Each expected pattern matches a whole line, in order; the matches."""
    matches, rest = [], iter(lines)
    for pattern in expected:
        found = next((m for line in rest if (m := re.fullmatch(pattern, line))), None)
        assert found, f"no line matching {pattern!r} (in this order) in:\n" + "\n".join(lines)
        matches.append(found)
    return matches


def test_every_example_is_run_by_this_module() -> None:
    on_disk = {path.stem for path in EXAMPLES.glob("*.py") if path.name not in HELPERS}
    assert on_disk == {*EXPECTED, "on_redis"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_against_a_kvmgr_server_it_starts(group: ProcessGroup, name: str) -> None:
    assert_prints(run_example(group, name), EXPECTED[name])


def test_a_crashed_lock_holder_frees_the_lock_at_once_on_kvmgr(group: ProcessGroup) -> None:
    lines = run_example(group, "crash_safe_lock")
    waited = assert_prints(lines, EXPECTED["crash_safe_lock"])[1]
    assert waited["lease"] == "30" and float(waited["waited"]) < 5.0, waited.group(0)


def test_the_same_examples_run_on_redis(group: ProcessGroup, redis_url: str) -> None:
    from kvmgr.client.redis_transport import connect_redis

    with connect_redis(redis_url, timeout=5.0) as redis:
        redis.flush()  # the session's Redis: start from an empty database
    lines = run_example(group, "on_redis", redis_url)
    expected = [pattern for name in ("counter_pool", "cache_expiry", "job_queue", "wait_for_config", "crash_safe_lock")
                for pattern in [re.escape(f"--- {name} on {redis_url}"), *EXPECTED[name]]]
    waited = assert_prints(lines, expected)[-4]
    # Redis cannot see the holder die: the lock is free only when its 2 s lease ends
    assert waited["lease"] == "2" and float(waited["waited"]) >= 1.0, waited.group(0)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_example_stops_every_process_it_started(group: ProcessGroup, how: str) -> None:
    """Interrupted while it sleeps, with its server and a Pool of 4 workers running: it exits, and nothing is left."""
    mark = uuid.uuid4().hex
    process = psutil.Popen([sys.executable, str(EXAMPLES / "cache_expiry.py")], env=child_environment(None, {RUN_MARK: mark}),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    group.processes.append(process)  # reaped by the fixture if this test fails
    deadline = time.monotonic() + RUN_TIMEOUT
    while (line := read_line(process, deadline)) is not None and "left to live" not in line:
        pass
    assert line is not None, "cache_expiry.py ended before its sleep"
    assert len(leftovers(mark)) >= 6  # the example, its server and 4 Pool workers
    if how == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)  # what a terminal does: every process of the foreground group gets it
    else:
        process.send_signal(signal.SIGTERM)  # the example alone
    assert process.wait(timeout=30) != 0
    assert not leftovers(mark)
