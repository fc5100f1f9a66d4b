"""alice and bob: the seed's messages and flags, exit statuses, and errors as one clear line."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest

from kvmgr.tools.processes import ServerProcess, child_environment, python_module
from tests.conftest import console_script, run_actor


def test_seed_messages_and_exit_codes(server: ServerProcess) -> None:
    saved = run_actor(server, "--key=foo", "--value=foo-val")
    assert (saved.stdout, saved.returncode) == ("Saved Successfully for key:foo\n", 0)
    updated = run_actor(server, "--key=foo", "--value=foo-val-bob", name="bob")
    assert (updated.stdout, updated.returncode) == ("Update Successfully for key:foo\n", 0)
    value = run_actor(server, "--key=foo")
    assert (value.stdout, value.returncode) == ("foo-val-bob\n", 0)
    missing = run_actor(server, "--key=abc")
    assert (missing.stdout, missing.returncode) == ("Invalid Key:abc\n", 1)
    quitting = run_actor(server, "--key=QUIT", name="bob")
    assert (quitting.stdout, quitting.returncode) == ("Server Quitting..!\n", 0)
    assert server.process.wait(timeout=2) == 0


@pytest.mark.parametrize("script", ["alice", "bob"])
def test_console_scripts(server: ServerProcess, script: str) -> None:
    argv = [console_script(script), "--address", server.address_text, "--key=k", f"--value={script}"]
    result = subprocess.run(argv, env=child_environment(server.authkey), capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() in ("Saved Successfully for key:k", "Update Successfully for key:k")


def test_json_output_names_the_actor(server: ServerProcess) -> None:
    result = run_actor(server, "--key=k", "--value=v", "--json", name="carol")
    report = json.loads(result.stdout)
    assert report["client"] == "carol" and report["result"] == "saved" and report["end"] >= report["start"]


def test_new_operations_from_the_command_line(server: ServerProcess) -> None:
    assert run_actor(server, "--op", "cas", "--key=k", "--absent", "--value=v1").stdout == "Swapped key:k\n"
    assert run_actor(server, "--op", "cas", "--key=k", "--expected=zz", "--value=v2").returncode == 1
    assert run_actor(server, "--op", "store_many", "--pairs", '{"a": "1", "b": "2"}').returncode == 0
    assert json.loads(run_actor(server, "--op", "get_many", "--pairs", '["a", "k"]').stdout) == {"a": "1", "k": "v1"}
    assert run_actor(server, "--op", "size").stdout == "3\n"
    assert run_actor(server, "--op", "keys").stdout == "a\nb\nk\n"
    assert run_actor(server, "--op", "exists", "--key=a").stdout == "true\n"
    assert run_actor(server, "--op", "delete", "--key=a").stdout == "Deleted key:a\n"
    assert run_actor(server, "--op", "delete", "--key=a").returncode == 1


def test_usage_errors_exit_2(server: ServerProcess) -> None:
    assert run_actor(server, "--bogus").returncode == 2
    empty_key = run_actor(server, "--key=", "--value=v")
    assert empty_key.returncode == 2
    assert empty_key.stderr.strip() == "alice: error: key must be a non-empty str, not an empty str"
    assert run_actor(server, "--op", "cas", "--key=k", "--value=v").returncode == 2


def test_wrong_authkey_exits_3_with_one_line(server: ServerProcess) -> None:
    result = run_actor(server, "--key=k", authkey="wrong-key")
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1 and "rejected the authkey" in result.stderr
    assert "Traceback" not in result.stderr
    assert run_actor(server, "--key=k", "--value=v").returncode == 0


def test_unreachable_server_exits_3_quickly(server: ServerProcess) -> None:
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=2)
    started = time.monotonic()
    result = run_actor(server, "--key=k", "--timeout=1")
    assert result.returncode == 3
    assert "cannot reach kvmgr server" in result.stderr and result.stderr.count("\n") == 1
    assert time.monotonic() - started < 10


def test_help_works_for_every_command() -> None:
    for argv in (["alice", "--help"], ["bob", "--help"], ["kvmgr", "--help"], ["kvmgr", "serve", "--help"]):
        result = subprocess.run([console_script(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and "usage:" in result.stdout


def test_session_mode_runs_one_step_per_line(server: ServerProcess) -> None:
    steps = '{"op": "store", "key": "k", "value": "v"}\n{"op": "get", "key": "k"}\n{"op": "get", "key": "nope"}\n'
    result = subprocess.run(python_module("kvmgr.tools.actor", "--name", "alice", "--address", server.address_text, "--session"),
                            input=steps, env=child_environment(server.authkey), capture_output=True, text=True, timeout=30)
    outcomes = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o.get("result") for o in outcomes] == ["saved", "v", None]
    assert outcomes[2]["error"] == "KeyNotFound" and result.returncode == 0


@pytest.fixture(params=["manager", "redis"])
def actor_target(request: pytest.FixtureRequest) -> tuple[str, dict[str, str]]:
    """Where an actor connects, and its environment: a fresh kvmgr server, or an emptied Redis database."""
    if request.param == "manager":
        server = request.getfixturevalue("server")
        return server.address_text, child_environment(server.authkey)
    from kvmgr.client.redis_transport import connect_redis

    url = request.getfixturevalue("redis_url")
    with connect_redis(url) as redis:
        redis.flush()
    return url, child_environment(None)


def actor(target: tuple[str, dict[str, str]], *args: str) -> tuple[str, str, int]:
    """Run alice against the target: (stdout, stderr, exit status)."""
    address, env = target
    result = subprocess.run(python_module("kvmgr.tools.actor", "--name", "alice", "--address", address, *args),
                            env=env, capture_output=True, text=True, timeout=30)
    return result.stdout, result.stderr, result.returncode


def test_counting_operations_show_their_results_with_types(actor_target: tuple[str, dict[str, str]]) -> None:
    assert actor(actor_target, "--op", "incr", "--key", "n") == ("Incremented key:n to 1\n", "", 0)
    assert actor(actor_target, "--op", "incr", "--key", "n", "--by", "41") == ("Incremented key:n to 42\n", "", 0)
    assert actor(actor_target, "--op", "decr", "--key", "n", "--by", "0.5") == ("Decremented key:n to 41.5\n", "", 0)
    assert actor(actor_target, "--op", "get", "--key", "n") == ("41.5\n", "", 0)
    assert actor(actor_target, "--op", "unsafe_increment", "--key", "u", "--repeat", "3") == (
        "Incremented key:u to 3 (a get, then a store: not atomic)\n", "", 0)
    assert actor(actor_target, "--op", "get", "--key", "u", "--json")[0].count('"result": 3,') == 1
    actor(actor_target, "--key", "s", "--value", "text")
    out, err, status = actor(actor_target, "--op", "incr", "--key", "s")
    assert (out, status) == ("", 2) and err.count("\n") == 1 and err.startswith("alice: error: ") and "Traceback" not in err
    assert actor(actor_target, "--op", "get", "--key", "s") == ("text\n", "", 0), "a refused incr changes nothing"


def test_add_pop_and_expiry_from_the_command_line(actor_target: tuple[str, dict[str, str]]) -> None:
    assert actor(actor_target, "--op", "add", "--key", "a", "--value", "1") == ("Added key:a\n", "", 0)
    assert actor(actor_target, "--op", "add", "--key", "a", "--value", "2") == ("Not added key:a (it is present)\n", "", 1)
    assert actor(actor_target, "--op", "pop", "--key", "a") == ("Popped key:a value:'1'\n", "", 0), "--value stays a str"
    assert actor(actor_target, "--op", "pop", "--key", "a") == ("Invalid Key:a\n", "", 1)
    assert actor(actor_target, "--key", "t", "--value", "v", "--ttl", "100") == ("Saved Successfully for key:t\n", "", 0)
    left = actor(actor_target, "--op", "ttl", "--key", "t")[0]
    assert re.fullmatch(r"TTL of key:t: (\d+\.\d+) seconds\n", left) and 90 < float(left.split()[3]) <= 100, left
    assert actor(actor_target, "--op", "persist", "--key", "t") == ("Removed expiry of key:t\n", "", 0)
    assert actor(actor_target, "--op", "persist", "--key", "t") == ("No expiry on key:t\n", "", 1)
    assert actor(actor_target, "--op", "ttl", "--key", "t") == ("TTL of key:t: none (it never expires)\n", "", 0)
    assert actor(actor_target, "--op", "expire", "--key", "t", "--ttl", "50") == ("Set expiry of key:t\n", "", 0)
    assert actor(actor_target, "--op", "expire", "--key", "gone", "--ttl", "50") == ("Invalid Key:gone\n", "", 1)
    assert actor(actor_target, "--op", "ttl", "--key", "gone") == ("Invalid Key:gone\n", "", 1)
    assert actor(actor_target, "--op", "add", "--key", "b", "--value", "x", "--ttl", "0.05")[2] == 0
    deadline = time.monotonic() + 10
    while actor(actor_target, "--op", "exists", "--key", "b")[0] != "false\n":
        assert time.monotonic() < deadline, "the added key never expired"


@pytest.mark.parametrize(("args", "problem"), [
    (["--op", "get", "--key", "k", "--by", "2"], "alice: error: --by does not apply to get (only to incr, decr)\n"),
    (["--op", "get", "--key", "k", "--ttl", "2"], "alice: error: --ttl does not apply to get (only to store, add, expire)\n"),
    (["--op", "expire", "--key", "k"], "alice: error: expire needs --ttl\n"),
    (["--op", "add", "--key", "k"], "alice: error: add needs --value\n"),
    (["--op", "incr"], "alice: error: incr needs --key\n"),
    (["--op", "store", "--key", "k", "--value", "v", "--ttl", "1e10"], "alice: error: ttl must be a number of seconds above 0"),
])
def test_misused_new_flags_are_usage_errors(server: ServerProcess, args: list[str], problem: str) -> None:
    result = run_actor(server, *args)
    assert (result.stdout, result.returncode) == ("", 2)
    assert result.stderr.startswith(problem) and result.stderr.count("\n") == 1


@pytest.mark.parametrize("args", [["--by", "true"], ["--by", "nan"], ["--ttl", "0"], ["--ttl", "-3"], ["--repeat", "0"]])
def test_bad_numbers_are_refused_before_connecting(args: list[str]) -> None:
    result = subprocess.run(python_module("kvmgr.tools.actor", "--name", "alice", "--address", "127.0.0.1:1", "--op", "incr",
                                          "--key", "k", *args), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and f"argument {args[0]}: expected" in result.stderr


def test_session_steps_carry_any_value_in_json_form(server: ServerProcess) -> None:
    steps = [
        {"op": "store", "key": "k", "value": {"$tuple": [1, {"$bytes": "ff"}, [True, 2.5]]}, "ttl": 60},
        {"op": "get", "key": "k"},
        {"op": "unsafe_increment", "key": "u", "repeat": 4},
        {"op": "incr", "key": "u", "by": 0.5, "repeat": 2},
        {"op": "store", "key": "bad", "value": {"$nope": 1}},
    ]
    lines = "".join(json.dumps(step) + "\n" for step in steps)
    result = subprocess.run(python_module("kvmgr.tools.actor", "--name", "alice", "--address", server.address_text, "--session"),
                            input=lines, env=child_environment(server.authkey), capture_output=True, text=True, timeout=30)
    outcomes = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o.get("result") for o in outcomes[:4]] == ["saved", {"$tuple": [1, {"$bytes": "ff"}, [True, 2.5]]}, 4, 5.0]
    assert outcomes[4]["error"] == "ConfigError" and "unknown tag '$nope'" in outcomes[4]["message"]


def test_lock_from_the_command_line_ends_with_its_process(actor_target: tuple[str, dict[str, str]]) -> None:
    """A one-shot --op lock exits at once: kvmgr's server frees the lock then; on Redis it lasts its lease (or --token unlock)."""
    out, err, status = actor(actor_target, "--op", "lock", "--lock", "printer", "--lease", "60")
    first = re.fullmatch(r"Acquired lock:printer token:(\d+)\n", out)
    assert first is not None and (err, status) == ("", 0), (out, err)
    again = actor(actor_target, "--op", "lock", "--lock", "printer", "--timeout", "0.3", "--lease", "1")
    if actor_target[0].startswith("redis://"):
        assert again == ("Not acquired lock:printer within 0.3s\n", "", 1), "on Redis the lock outlives its process"
        assert actor(actor_target, "--op", "unlock", "--lock", "printer", "--token", first[1]) == ("Released lock:printer\n", "", 0)
    else:
        assert re.fullmatch(r"Acquired lock:printer token:(\d+)\n", again[0]) and again[2] == 0, "freed when alice exited"
        assert int(again[0].split(":")[-1]) > int(first[1]), "fencing tokens grow"
    out, _, status = actor(actor_target, "--op", "unlock", "--lock", "printer", "--token", first[1])
    assert status == 1 and out.startswith("Not held lock:printer (") and out.count("\n") == 1, "nothing of someone else's is freed"


def test_wait_and_queues_from_the_command_line(actor_target: tuple[str, dict[str, str]]) -> None:
    assert actor(actor_target, "--op", "wait", "--key", "cfg", "--after", "current", "--timeout", "0.2") == (
        "No change to key:cfg after version 0 within 0.2s\n", "", 1)
    actor(actor_target, "--key", "cfg", "--value", "v1")
    out, _, status = actor(actor_target, "--op", "wait", "--key", "cfg", "--after", "0")
    assert re.fullmatch(r"Changed key:cfg to 'v1' \(version [1-9]\d*\)\n", out) and status == 0, out
    assert actor(actor_target, "--op", "qput", "--queue", "jobs", "--value", "job-1") == ("Put on queue:jobs (length 1)\n", "", 0)
    assert actor(actor_target, "--op", "qput", "--queue", "jobs", "--value", "job-2") == ("Put on queue:jobs (length 2)\n", "", 0)
    assert actor(actor_target, "--op", "qput", "--queue", "jobs", "--value", "job-3") == ("Put on queue:jobs (length 3)\n", "", 0)
    assert actor(actor_target, "--op", "qget", "--queue", "jobs") == ("Got from queue:jobs value:'job-1'\n", "", 0)
    assert actor(actor_target, "--op", "qget", "--queue", "jobs", "--until-empty", "--timeout", "0.2") == (
        "Got 2 items from queue:jobs: 'job-2', 'job-3'\n", "", 0)
    empty = ("Queue empty:jobs (no item within 0.2s)\n", "", 1)
    assert actor(actor_target, "--op", "qget", "--queue", "jobs", "--timeout", "0.2") == empty
    assert actor(actor_target, "--op", "qget", "--queue", "jobs", "--timeout", "0.2", "--until-empty") == empty
    report = json.loads(actor(actor_target, "--op", "wait", "--key", "cfg", "--after", "0", "--json")[0])
    assert (report["result"], report["after"], report["status"]) == ("v1", 0, "ok") and report["version"] > 0


@pytest.mark.parametrize(("args", "problem"), [
    (["--op", "lock"], "alice: error: lock needs --lock\n"),
    (["--op", "lock", "--key", "k", "--lock", "l"], "alice: error: --key does not apply to lock (it has a name: --lock)\n"),
    (["--op", "qget", "--queue", "q", "--value", "v"], "alice: error: --value does not apply to qget (it has a name: --queue)\n"),
    (["--op", "unlock", "--lock", "l"], "alice: error: unlock needs --token N: a one-shot process holds no lock"),
    (["--op", "get", "--key", "k", "--lock", "l"], "alice: error: --lock does not apply to get (only to lock, unlock)\n"),
    (["--op", "qget", "--key", "k", "--queue", "q", "--lease", "2"], "alice: error: --lease does not apply to qget (only to lock)\n"),
    (["--op", "qput", "--queue", "q"], "alice: error: qput needs --value\n"),
    (["--op", "wait", "--key", "k"], "alice: error: wait needs --after\n"),
    (["--op", "store", "--key", "k", "--value", "v", "--until-empty"], "alice: error: --until_empty does not apply to store"),
    (["--op", "lock", "--lock", "l", "--repeat", "2"], "alice: error: --repeat does not apply to lock\n"),
])
def test_misused_coordination_flags_are_usage_errors(server: ServerProcess, args: list[str], problem: str) -> None:
    result = run_actor(server, *args)
    assert (result.stdout, result.returncode) == ("", 2), result.stderr
    assert result.stderr.startswith(problem) and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize("args", [["--after", "later"], ["--after", "-1"], ["--token", "x"], ["--lease", "0"]])
def test_bad_coordination_numbers_are_refused_before_connecting(args: list[str]) -> None:
    result = subprocess.run(python_module("kvmgr.tools.actor", "--name", "alice", "--address", "127.0.0.1:1", "--op", "wait",
                                          "--key", "k", *args), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and f"argument {args[0]}: expected" in result.stderr


def test_a_session_holds_its_lock_from_the_lock_step_to_the_unlock_step(actor_target: tuple[str, dict[str, str]]) -> None:
    address, env = actor_target
    session = subprocess.Popen(python_module("kvmgr.tools.actor", "--name", "alice", "--address", address, "--session"),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    try:
        def step(request: dict) -> dict:
            assert session.stdin is not None and session.stdout is not None
            session.stdin.write(json.dumps(request) + "\n")
            session.stdin.flush()
            return json.loads(session.stdout.readline())

        assert step({"op": "lock", "lock": "L", "lease": 60})["status"] == "ok"
        assert step({"op": "store", "key": "k", "value": "v"})["result"] == "saved"
        assert actor(actor_target, "--op", "lock", "--lock", "L", "--timeout", "0.2")[2] == 1, "alice still holds L"
        again = step({"op": "lock", "lock": "L"})
        assert again["error"] == "ConfigError" and "already holds lock 'L'" in again["message"]
        assert step({"op": "unlock", "lock": "L"})["result"] is True
        assert step({"op": "unlock", "lock": "L"})["error"] == "LockLost"
        assert step({"op": "lock", "lock": "L", "lease": 60})["status"] == "ok"
        session.stdin.close()  # the end of its input: it releases what it holds and exits
        assert session.wait(timeout=10) == 0
    finally:
        session.kill()
        session.wait()
    out, _, status = actor(actor_target, "--op", "lock", "--lock", "L", "--timeout", "0.2")
    assert status == 0 and out.startswith("Acquired lock:L"), "released at the end of the session, on Redis too"
