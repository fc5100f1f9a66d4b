"""alice and bob: the seed's messages and flags, exit statuses, and errors as one clear line."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from kvmgr.tools.processes import ServerProcess, child_environment
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
    from kvmgr.tools.processes import python_module

    steps = '{"op": "store", "key": "k", "value": "v"}\n{"op": "get", "key": "k"}\n{"op": "get", "key": "nope"}\n'
    result = subprocess.run(python_module("kvmgr.tools.actor", "--name", "alice", "--address", server.address_text, "--session"),
                            input=steps, env=child_environment(server.authkey), capture_output=True, text=True, timeout=30)
    outcomes = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o.get("result") for o in outcomes] == ["saved", "v", None]
    assert outcomes[2]["error"] == "KeyNotFound" and result.returncode == 0
