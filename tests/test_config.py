"""Settings every command shares: the generated authkey and key files, timeout bounds, output paths checked up front."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmgr.config import default_authkey_path, generated_authkey
from kvmgr.tools.processes import ProcessGroup, ServerProcess, child_environment, python_module, read_line
from tests.conftest import ROOT

SERVE = python_module("kvmgr", "serve", "--address", "127.0.0.1:0")


def without_authkey(config_home: Path) -> dict[str, str]:
    """An environment with no $KVMGR_AUTHKEY, whose default key file lives under config_home."""
    env = child_environment(None, {"XDG_CONFIG_HOME": str(config_home)})
    env.pop("KVMGR_AUTHKEY", None)
    return env


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20, cwd=ROOT)


def test_generated_key_file_open_to_others_is_refused_and_never_replaced(group: ProcessGroup, tmp_path: Path) -> None:
    """A running server may be using the key: a second server says how to fix the mode instead of overwriting it."""
    key_file = tmp_path / "kvmgr" / "authkey"
    key_file.parent.mkdir()
    key_file.write_text("the-first-servers-key\n")
    key_file.chmod(0o644)
    second = group.launch(SERVE, without_authkey(tmp_path))
    assert read_line(second, time.monotonic() + 15) is None, "the second server started with a replaced key"
    assert second.wait(timeout=5) == 2
    assert key_file.read_text() == "the-first-servers-key\n"
    assert second.stderr.read().decode() == (
        f"kvmgr serve: error: authkey file {key_file} is open to other users (mode 0644), so it is not used "
        f"(and not replaced, a running server may use it): run chmod 600 {key_file}, or remove it to have a new key generated\n"
    )


def test_authkey_file_open_to_others_gets_a_warning(server: ServerProcess, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(server.authkey)
    argv = python_module("kvmgr.tools.actor", "--name=alice", "--address", server.address_text, "--authkey-file", str(key_file), "--key=k")
    for mode, warning in ((0o644, f"kvmgr: warning: authkey file {key_file} is open to other users (mode 0644): "
                                  f"run chmod 600 {key_file}\n"), (0o600, "")):
        key_file.chmod(mode)
        result = run(argv, without_authkey(tmp_path))
        assert (result.returncode, result.stdout, result.stderr) == (1, "Invalid Key:k\n", warning)


TOO_LONG = [
    python_module("kvmgr.tools.actor", "--name=alice", "--key=k", "--timeout", "1e10"),
    python_module("kvmgr", "stress", "--timeout", "1e10"),
    python_module("kvmgr", "serve", "--address", "127.0.0.1:0", "--handshake-timeout", "1e300"),
    [sys.executable, str(ROOT / "run_driver.py"), "--timeout", "1e10"],
]


@pytest.mark.parametrize("argv", TOO_LONG, ids=["alice --timeout", "stress --timeout", "serve --handshake-timeout", "driver --timeout"])
def test_timeouts_beyond_a_day_are_a_usage_error(argv: list[str]) -> None:
    """Not an OverflowError later (in a socket timeout, a timer), nor a server whose every connection dies."""
    result = run(argv, child_environment("some-key"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].endswith(f"expected a number of seconds from 0.001 to 86400, got '{argv[-1]}'")


COMMANDS_WITH_OUTPUT = [["kvmgr", "stress", "--clients", "2", "--ops", "20"], ["kvmgr.tools.actor", "--name=alice", "--key=k"]]


@pytest.mark.parametrize("command", COMMANDS_WITH_OUTPUT)
def test_output_path_in_a_missing_directory_is_refused_before_anything_runs(server: ServerProcess, tmp_path: Path,
                                                                            command: list[str]) -> None:
    target = tmp_path / "missing" / "history.jsonl"
    argv = python_module(*command, "--address", server.address_text, "--history", str(target))
    result = run(argv, child_environment(server.authkey))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].endswith(f"argument --history: cannot write {target}: directory {target.parent} does not exist")
    assert run(python_module("kvmgr.tools.actor", "--name=bob", "--address", server.address_text, "--op", "size"),
               child_environment(server.authkey)).stdout == "0\n", "nothing ran"


def test_output_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    result = run(python_module("kvmgr", "stress", "--history", str(tmp_path)))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith(f"argument --history: cannot write {tmp_path}: it is a directory")


def test_a_key_file_another_server_writes_meanwhile_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two servers starting at once: the one that finds no file, then loses the race, uses the winner's key."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path = default_authkey_path()
    real_exists = Path.exists

    def written_right_after_the_check(self: Path) -> bool:
        if self == path and not real_exists(self):
            path.parent.mkdir(mode=0o700)
            path.write_text("the-winners-key\n")
            path.chmod(0o600)
            return False
        return real_exists(self)

    monkeypatch.setattr(Path, "exists", written_right_after_the_check)
    assert generated_authkey() == (b"the-winners-key", path)
    assert path.read_text() == "the-winners-key\n"
