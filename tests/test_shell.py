"""kvmgr shell in a real pseudo-terminal (typing, reading the screen, tab completion, history, Ctrl-C, Ctrl-D), and fed a script."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import stat
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from kvmgr.protocol.values import same_value
from kvmgr.tools.processes import ProcessGroup, python_module
from kvmgr.tools.shell import ShellError, as_key, as_value, split_arguments
from tests import test_commands
from tests.test_commands import Target

manager, redis, target = test_commands.manager, test_commands.redis, test_commands.target  # the fixtures, shared
PROMPT = "kvmgr> "
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|[\r\x07]")


def _controlling_terminal() -> None:
    """In the child, after setsid: make stdin (the pty) the controlling terminal, so Ctrl-C sends SIGINT."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A process on the slave side of a pty; the test types into the master side and reads what it shows."""

    def __init__(self, group: ProcessGroup, argv: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.process = psutil.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True, preexec_fn=_controlling_terminal,
        )
        group.processes.append(self.process)
        os.close(slave)
        self.master = master
        self.screen = ""  # everything shown so far, escapes and carriage returns taken out
        self.seen = 0  # how much of it earlier expectations consumed

    def type(self, text: str) -> None:
        """Type text (control characters included) into the terminal."""
        os.write(self.master, text.encode())

    def expect(self, text: str, timeout: float = 20.0) -> str:
        """Read until text shows after what was already consumed; everything shown up to and including it."""
        deadline = time.monotonic() + timeout
        while (found := self.screen.find(text, self.seen)) < 0:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} did not show within {timeout:g}s; the screen after the last match: {self.screen[self.seen:]!r}"
            if select.select([self.master], [], [], remaining)[0]:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the process closed its side
                    chunk = b""
                assert chunk, f"the shell closed the terminal before {text!r} showed: {self.screen[self.seen:]!r}"
                self.screen += ESCAPES.sub("", chunk.decode(errors="replace"))
        shown, self.seen = self.screen[self.seen:found + len(text)], found + len(text)
        return shown

    def run(self, line: str) -> list[str]:
        """Type a line and Enter; the lines it printed before the next prompt (its echo left out)."""
        self.type(line + "\r")
        shown = self.expect("\n" + PROMPT)
        echoed, *printed = shown[: -len(PROMPT)].split("\n")
        assert echoed == line, (echoed, line)
        return printed[:-1]

    def close(self) -> None:
        """Close the master side."""
        os.close(self.master)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home directory of the test's own, so the history file lands there."""
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def start_shell(group: ProcessGroup, target: Target, home: Path, *args: str) -> Terminal:
    """kvmgr shell against the target in a pty, its banner and first prompt read."""
    env = {**target.env, "HOME": str(home), "TERM": "dumb", "INPUTRC": "/dev/null"}
    env.pop("XDG_STATE_HOME", None)
    terminal = Terminal(group, python_module("kvmgr", "shell", "--address", target.address, *args), env)
    assert terminal.expect(PROMPT).startswith(f"kvmgr shell: connected to {target.address}; help lists the commands")
    return terminal


@pytest.fixture
def shell(group: ProcessGroup, target: Target, home: Path) -> Iterator[Terminal]:
    """A shell in a pty against each backend."""
    terminal = start_shell(group, target, home)
    yield terminal
    terminal.close()


def test_values_show_their_types_and_are_typed_the_same_way(shell: Terminal, target: Target) -> None:
    assert shell.run("set n 1") == ["saved"]
    assert shell.run("set s '1'") == ["saved"]
    assert shell.run("set w hello") == ["saved"]
    assert shell.run("set nested [1, (2.5, b'\\x00'), {'k': True}]") == ["saved"]
    assert shell.run("get n") == ["1"]
    assert shell.run("get s") == ["'1'"]
    assert shell.run("get w") == ["'hello'"]
    assert shell.run("get nested") == ["[1, (2.5, b'\\x00'), {'k': True}]"]
    assert same_value(target.client.get("nested"), [1, (2.5, b"\x00"), {"k": True}])
    assert shell.run("incr n 41") == ["42"]
    assert shell.run("keys") == ["'n'", "'nested'", "'s'", "'w'"]
    assert shell.run("del s") == ["True"]
    assert shell.run("size") == ["3"]


def test_errors_print_one_line_and_the_shell_goes_on(shell: Terminal) -> None:
    assert shell.run("get nothing") == ["error: key not found: 'nothing'"]
    assert shell.run("frobnicate x") == ["error: unknown command 'frobnicate'; type help for the list"]
    assert shell.run("set k") == ["error: usage: set KEY VALUE [TTL]"]
    assert shell.run("set k None") == ["error: VALUE: None is not a value (it means absent) (usage: set KEY VALUE [TTL])"]
    assert shell.run("set k 'open") == ["error: unterminated ' quote"]
    shell.run("set k text")
    assert shell.run("incr k")[0].startswith("error: ")
    assert shell.run("get k") == ["'text'"]


def test_expiry_commands(shell: Terminal) -> None:
    assert shell.run("set c v 100") == ["saved"]
    assert 99 < float(shell.run("ttl c")[0]) <= 100
    assert shell.run("persist c") == ["True"]
    assert shell.run("ttl c") == ["None"]
    assert shell.run("expire c 50") == ["True"]
    assert shell.run("add c other") == ["False"]
    assert shell.run("pop c") == ["'v'"]
    assert shell.run("exists c") == ["False"]
    assert shell.run("cas c None 1") == ["True"]
    assert shell.run("decr c 0.5") == ["0.5"]


def test_help_lists_the_commands(shell: Terminal) -> None:
    listing = shell.run("help")
    assert listing[0] == "Commands:"
    for name in ("get", "set", "del", "keys", "incr", "decr", "exists", "size", "ttl", "expire", "persist", "pop", "add", "info"):
        assert any(line.split()[:1] == [name] for line in listing[1:]), name
    assert shell.run("help incr") == ["incr KEY [BY]", "  add BY (default 1) to the number at KEY; the new number"]


def test_info_prints_the_table(shell: Terminal) -> None:
    lines = shell.run("info")
    assert any(line.split()[:2] == ["keys", "0"] for line in lines)


def test_tab_completes_command_names(shell: Terminal) -> None:
    shell.type("set k 7\r")
    shell.expect("saved\n" + PROMPT)
    shell.type("pers\t")
    shell.expect("persist ")
    shell.type("k\r")
    assert shell.expect(PROMPT).endswith("k\nFalse\n" + PROMPT)
    shell.type("ex\t\t")  # ambiguous: a second tab lists the candidates
    listing = shell.expect("expire")
    assert "exists" in listing and "exit" in listing
    shell.expect(PROMPT + "ex")  # the line comes back as it was
    shell.type("ists k\r")
    assert shell.expect(PROMPT).endswith("ists k\nTrue\n" + PROMPT)


def test_ctrl_c_abandons_the_line_and_ctrl_d_leaves(shell: Terminal) -> None:
    shell.type("set half")
    shell.expect("set half")
    shell.type("\x03")
    try:
        shell.expect(PROMPT, timeout=5)
    except AssertionError:  # CPython's input() missed the SIGINT (it came between two selects, python/cpython#112585,
        shell.type("\x03")  # seen once in a loaded CI run): a second Ctrl-C, as a user would press, is acted on
        shell.expect(PROMPT)
    assert shell.run("exists half") == ["False"]
    shell.type("\x04")
    assert shell.process.wait(20) == 0


def test_history_is_kept_in_a_private_file_and_recalled(group: ProcessGroup, target: Target, home: Path) -> None:
    shell = start_shell(group, target, home)
    shell.run("set remembered 1")
    shell.type("\x1b[A")  # up arrow: the last line back
    shell.expect("set remembered 1")
    shell.type("\x15quit\r")
    assert shell.process.wait(20) == 0
    shell.close()
    path = home / ".local" / "state" / "kvmgr" / "shell_history"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text().splitlines()[-2:] == ["set remembered 1", "quit"]
    again = start_shell(group, target, home)
    again.type("\x1b[A\x1b[A")
    again.expect("set remembered 1")
    again.type("\x15\x04")
    assert again.process.wait(20) == 0
    again.close()


def test_a_symlinked_history_file_is_not_followed(group: ProcessGroup, target: Target, home: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    state = home / ".local" / "state" / "kvmgr"
    state.mkdir(parents=True)
    (state / "shell_history").symlink_to(victim)
    env = {**target.env, "HOME": str(home), "TERM": "dumb", "INPUTRC": "/dev/null"}
    shell = Terminal(group, python_module("kvmgr", "shell", "--address", target.address), env)
    assert shell.expect(PROMPT).startswith(f"kvmgr shell: no history: cannot open {state / 'shell_history'}")
    assert shell.run("size") == ["0"]
    shell.type("\x04")
    assert shell.process.wait(20) == 0
    shell.close()
    assert victim.read_text() == "untouched\n"


def test_a_script_on_stdin_runs_without_prompts(target: Target, home: Path) -> None:
    script = "set a 1\nset b b'1'\nget a\nget b\nget missing\nkeys\n"
    env = {**target.env, "HOME": str(home)}
    result = subprocess.run(python_module("kvmgr", "shell", "--address", target.address), input=script, env=env,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "saved\nsaved\n1\nb'1'\n'a'\n'b'\n")
    assert result.stderr == "error: key not found: 'missing'\n"
    assert not (home / ".local").exists()


def test_an_unreachable_server_exits_3(home: Path) -> None:
    argv = python_module("kvmgr", "shell", "--address", "127.0.0.1:1")
    result = subprocess.run(argv, input="", env={**os.environ, "HOME": str(home), "KVMGR_AUTHKEY": "k"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3 and result.stderr.startswith("kvmgr shell: error: cannot reach")


@pytest.mark.parametrize(("line", "tokens"), [
    ("set k [1, 2]", ["set", "k", "[1, 2]"]),
    ("set 'a b' \"c ]\" (1, (2,))", ["set", "'a b'", '"c ]"', "(1, (2,))"]),
    ("  get   k  ", ["get", "k"]),
    ("set k 'it\\'s'", ["set", "k", "'it\\'s'"]),
])
def test_arguments_split_at_spaces_outside_quotes_and_brackets(line: str, tokens: list[str]) -> None:
    assert split_arguments(line) == tokens


def test_literals_and_bare_words() -> None:
    assert same_value(as_value("1"), 1) and same_value(as_value("'1'"), "1") and same_value(as_value("b'1'"), b"1")
    assert same_value(as_value("hello"), "hello") and same_value(as_value("1-2"), "1-2")
    assert same_value(as_value("{'a': (1, 2.0)}"), {"a": (1, 2.0)})
    assert as_key("1") == "1" and as_key("'a b'") == "a b"
    for bad in ("None", "{1, 2}", "1j", "[1, None]", "float('inf')", "{1: 2}"):
        with pytest.raises(ShellError):
            as_value(bad)
    with pytest.raises(ShellError):
        as_key("b'x'")


def test_sigterm_ends_the_shell(group: ProcessGroup, target: Target, home: Path) -> None:
    shell = start_shell(group, target, home)
    shell.process.send_signal(signal.SIGTERM)
    try:
        status = shell.process.wait(5)
    except psutil.TimeoutExpired:  # seen once in a loaded CI run: input() missed it (python/cpython#112585); a second one
        shell.process.send_signal(signal.SIGTERM)
        status = shell.process.wait(20)
    assert status != 0
    shell.close()
