"""History recording by real clients, `kvmgr check` on files, and `kvmgr stress` end to end."""

from __future__ import annotations

import contextlib
import json
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

import kvmgr
from kvmgr.tools.processes import ProcessGroup, ServerProcess, child_environment, python_module, reap, suspend
from kvmgr.verify.check import check_file
from kvmgr.verify.history import HistoryWriter, read_history


def kvmgr_command(*args: str, env: dict | None = None, preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(python_module("kvmgr", *args), capture_output=True, text=True, timeout=120, env=env, preexec_fn=preexec_fn)


def memory_limit(mebibytes: int) -> Callable[[], None]:
    """A preexec_fn capping a command's address space (and its children's): unbounded memory use ends in MemoryError."""
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (mebibytes << 20, mebibytes << 20))


def test_client_records_every_operation_with_its_outcome(server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    key = server.authkey.encode()
    with HistoryWriter(path) as history, kvmgr.connect(server.address_text, authkey=key, name="alice", history=history) as client:
        client.store("k", "v1")
        client.get("k")
        with pytest.raises(kvmgr.KeyNotFound):
            client.get("missing")
        client.cas("k", "v1", b"\x01")
        client.delete("k")
        client.store_many({"a": "1", "b": "2"})
        client.get_many(["a", "zz"])
        client.size()  # not part of the register model: not recorded
    ops = read_history(path)
    assert [(op.op, op.key, op.result) for op in ops] == [
        ("store", "k", "saved"), ("get", "k", "v1"), ("get", "missing", None), ("cas", "k", True), ("delete", "k", True),
        ("store", "a", "saved"), ("store", "b", "saved"), ("get", "a", "1"), ("get", "zz", None),
    ]
    assert ops[3].value == b"\x01" and ops[3].expected == "v1"
    assert ops[5].start == ops[6].start and ops[5].end == ops[6].end
    assert all(op.client == "alice" and op.status == "ok" and op.end >= op.start for op in ops)
    assert check_file(path).linearizable


def test_call_to_a_hung_server_is_recorded_as_info(server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    with HistoryWriter(path) as history:
        client = kvmgr.connect(server.address_text, authkey=server.authkey.encode(), timeout=0.3, history=history)
        suspend(server.process)
        try:
            with pytest.raises(kvmgr.OutcomeUnknown):
                client.cas("k", None, "v")
        finally:
            server.process.resume()
        client.close()
    [op] = read_history(path)
    assert (op.op, op.status, op.end, op.result) == ("cas", "info", None, None)


def test_check_command_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(
        '{"client": "a", "op": "store", "key": "k", "value": "v", "result": "saved", "status": "ok", "start": 1, "end": 2}\n'
        '{"client": "b", "op": "get", "key": "k", "value": null, "result": "v", "status": "ok", "start": 3, "end": 4}\n'
    )
    assert kvmgr_command("check", str(good)).returncode == 0
    stale = tmp_path / "stale.jsonl"
    stale.write_text(good.read_text().replace('"result": "v"', '"result": "never-written"'))
    result = kvmgr_command("check", str(stale))
    assert result.returncode == 1 and "NOT linearizable: key 'k'" in result.stdout
    broken = tmp_path / "broken.jsonl"
    broken.write_text(good.read_text() + "{not json\n")
    result = kvmgr_command("check", str(broken))
    assert result.returncode == 2 and "broken.jsonl:3" in result.stderr and result.stderr.count("\n") == 1


def test_stress_starts_its_own_server_and_proves_linearizability(tmp_path: Path) -> None:
    history = tmp_path / "stress.jsonl"
    result = kvmgr_command("stress", "--clients", "4", "--ops", "300", "--keys", "3", "--seed", "7", "--history", str(history), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["linearizable"] is True and report["errors"] == 0 and report["operations"] == 1200
    assert {row["operation"] for row in report["by_operation"]} == {"store", "get", "cas", "delete"}
    assert len(read_history(history)) == 1200
    assert kvmgr_command("check", str(history)).returncode == 0


def test_stress_against_a_running_server_with_batches(server: ServerProcess) -> None:
    env = child_environment(server.authkey)
    result = kvmgr_command("stress", "--address", server.address_text, "--clients", "3", "--ops", "200",
                           "--mix", "store_many=1,get_many=1,cas=1", "--json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["linearizable"] is True


def test_stress_rejects_a_bad_mix() -> None:
    result = kvmgr_command("stress", "--mix", "store=40,fly=3")
    assert result.returncode == 2 and "bad --mix entry 'fly=3'" in result.stderr


def test_stress_against_an_unreachable_server_is_one_line_and_exit_3() -> None:
    env = child_environment("some-key")
    result = kvmgr_command("stress", "--address", "127.0.0.1:1", "--clients", "2", "--ops", "5", env=env)
    assert result.returncode == 3
    assert result.stderr.strip() == "kvmgr stress: error: cannot reach kvmgr server at 127.0.0.1:1: Connection refused"


def test_runs_sharing_a_server_each_meet_at_their_own_barrier(server: ServerProcess) -> None:
    """Two concurrent runs with different --clients: the server's barriers are per run, not global."""
    env = child_environment(server.authkey)
    runs = [subprocess.Popen(python_module("kvmgr", "stress", "--address", server.address_text, "--clients", str(clients), "--ops", "50"),
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for clients in (2, 3)]
    results = [(run.communicate(timeout=60), run.returncode) for run in runs]
    assert [status for _, status in results] == [0, 0], results


def test_stress_takes_a_binary_authkey_file(group: ProcessGroup, tmp_path: Path) -> None:
    key_file = tmp_path / "binary.key"
    key_file.write_bytes(bytes(range(1, 256)) + b"\x00\xff")
    key_file.chmod(0o600)
    server = group.start_server(extra_args=["--authkey-file", str(key_file)])
    env = child_environment(None)
    env.pop("KVMGR_AUTHKEY", None)
    result = kvmgr_command("stress", "--address", server.address_text, "--authkey-file", str(key_file),
                           "--clients", "2", "--ops", "50", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    argv = python_module("kvmgr.tools.actor", "--name=alice", "--address", server.address_text, "--authkey-file", str(key_file),
                         "--op", "size")
    alice = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert alice.returncode == 0, alice.stderr


def test_huge_key_space_is_never_materialized() -> None:
    """--keys 50000000 under a 1 GiB address-space limit: workers draw keys, they never build the list."""
    result = kvmgr_command("stress", "--keys", "50000000", "--clients", "2", "--ops", "100", "--json", preexec_fn=memory_limit(1024))
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["operations"] == 200


@pytest.mark.parametrize("mix", ["store=²", "store=٣", "store=" + "9" * 5000, "store=-1"])
def test_stress_rejects_a_weight_that_is_not_ascii_digits(mix: str) -> None:
    result = kvmgr_command("stress", "--mix", mix)
    assert result.returncode == 2
    assert result.stderr.startswith("kvmgr stress: error: bad --mix entry 'store=") and result.stderr.count("\n") == 1


def test_stress_counts_are_bounded() -> None:
    """A key count beyond what a range can hold is a usage error, not an OverflowError in every worker."""
    result = kvmgr_command("stress", "--keys", str(10**30), "--mix", "get_many=1", preexec_fn=memory_limit(1024))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].endswith(f"argument --keys: expected a whole number above 0 and at most {sys.maxsize}, "
                                                   "got '1000000000000000000000000000000'")


def first_worker_history(stress: psutil.Popen, deadline: float) -> Path:
    """The history file of the stress command's first client process, once it has started."""
    while time.monotonic() < deadline and stress.poll() is None:
        for child in stress.children():
            with contextlib.suppress(psutil.Error):
                argv = child.cmdline()
                if "--worker" in argv:
                    return Path(argv[argv.index("--history") + 1])
        time.sleep(0.005)
    raise AssertionError("the stress command never started a client")


def test_stress_against_a_server_that_hangs_ends_within_seconds(server: ServerProcess) -> None:
    """Each client stops at its first unanswered call instead of timing out a million times."""
    argv = python_module("kvmgr", "stress", "--address", server.address_text, "--clients", "2", "--ops", "1000000", "--timeout", "0.5")
    stress = psutil.Popen(argv, env=child_environment(server.authkey), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        history = first_worker_history(stress, deadline)
        while not (history.exists() and history.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.005)
        suspend(server.process)
        stopped = time.monotonic()
        _, stderr = stress.communicate(timeout=30)
        assert time.monotonic() - stopped < 10
    finally:
        server.process.resume()
        reap(stress)
    assert stress.returncode == 1 and "Traceback" not in stderr
    assert re.search(r"a client failed: c[01] stopped early: (OutcomeUnknown|ServerUnavailable)", stderr), stderr


@pytest.mark.parametrize("backend", ["manager", "redis"])
def test_stress_mix_with_incr_add_and_pop_is_recorded_and_checked(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> None:
    target: list[str] = []
    if backend == "redis":
        target = ["--target", request.getfixturevalue("redis_url")]
    history = tmp_path / "h.jsonl"
    result = kvmgr_command("stress", "--clients", "4", "--ops", "300", "--keys", "3", "--mix", "incr=3,decr=1,add=2,pop=2,get=2,store=1",
                           "--history", str(history), "--json", *target)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is True and report["linearizable"] is True and report["errors"] == 0
    assert {row["operation"] for row in report["by_operation"]} == {"incr", "decr", "add", "pop", "get", "store"}
    ops = read_history(history)
    counts = [op for op in ops if op.op in ("incr", "decr")]
    assert counts and all(op.status == "ok" for op in counts), "counters have keys of their own: never WrongType"
    assert any(op.op == "pop" and op.result is not None for op in ops) and any(op.op == "add" and op.result is True for op in ops)
    assert kvmgr_command("check", "--initial", "empty", str(history)).returncode == 0


def test_stress_mix_refuses_what_workers_cannot_run() -> None:
    result = kvmgr_command("stress", "--mix", "incr=1,expire=1")
    assert result.returncode == 2 and "bad --mix entry 'expire=1'" in result.stderr
    assert "incr, decr, add, pop" in result.stderr


@pytest.mark.parametrize("interrupted", [False, True], ids=["finished", "ctrl-c"])
def test_stress_on_a_shared_target_leaves_it_as_it_found_it(redis_url: str, interrupted: bool) -> None:
    with kvmgr.connect(redis_url) as shared:
        shared.store("someone-else", "theirs")
        before = sorted(shared.keys())
        argv = python_module("kvmgr", "stress", "--target", redis_url, "--clients", "2", "--ops", "200000" if interrupted else "300",
                             "--keys", "8")
        stress = psutil.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            if interrupted:
                deadline = time.monotonic() + 30
                while len(shared.keys()) <= len(before) and time.monotonic() < deadline:  # the workers are writing
                    time.sleep(0.05)
                assert len(shared.keys()) > len(before), "the workers never wrote"
                stress.send_signal(signal.SIGINT)
            stress.communicate(timeout=120)
        finally:
            reap(stress)
        assert stress.returncode == (130 if interrupted else 0)
        assert sorted(shared.keys()) == before and shared.get("someone-else") == "theirs"
        shared.delete("someone-else")
