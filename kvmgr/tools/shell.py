"""kvmgr shell: an interactive prompt against a kvmgr server or Redis, with readline editing, history and completion.

Arguments are typed as Python literals, as values are printed: 1 is an int, '1' a str, b'1' bytes, [1, (2, 3)]
a list holding a tuple. A bare word (no quotes, brackets or spaces) is a str, so `set greeting hello` stores
'hello'; a KEY is always a str, so `get 1` reads the key '1'. Errors print one line and the prompt comes back;
Ctrl-C abandons the line, Ctrl-D (or quit) leaves with exit status 0.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import signal
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from kvmgr.errors import EXIT_OK, KeyNotFound, KvmgrError
from kvmgr.tools.arguments import add_server_arguments

if TYPE_CHECKING:
    from kvmgr.client.operations import Operations
    from kvmgr.protocol.values import Value

PROMPT = "kvmgr> "
HISTORY_LENGTH = 1000
BARE_WORD = re.compile(r"[^\s'\"\[\](){},]+")
OPENERS, CLOSERS = "([{", ")]}"
LEAVE = ("quit", "exit")


class ShellError(Exception):
    """A line the shell cannot run: an unknown command, a wrong number of arguments, an argument that is no literal."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: leave the shell (unlike Ctrl-C, which only abandons the line)."""


# --- reading arguments ---


def split_arguments(text: str) -> list[str]:
    """The line's arguments: split at spaces outside quotes and brackets, so [1, 2] and 'a b' are one argument each."""
    tokens: list[str] = []
    current: list[str] = []
    depth, quote, escaped = 0, "", False
    for char in text:
        if quote:
            escaped, quote = (False, quote) if escaped else (char == "\\", "" if char == quote else quote)
        elif char in "'\"":
            quote = char
        elif char in OPENERS:
            depth += 1
        elif char in CLOSERS:
            depth -= 1
        elif char.isspace() and depth <= 0:
            if current:
                tokens.append("".join(current))
            current, depth = [], 0
            continue
        current.append(char)
    if quote:
        raise ShellError(f"unterminated {quote} quote")
    if depth > 0:
        raise ShellError("unclosed bracket")
    if current:
        tokens.append("".join(current))
    return tokens


def literal(token: str) -> Any:
    """The Python literal the token spells, or ShellError."""
    try:
        return ast.literal_eval(token)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ShellError(f"not a Python literal or a bare word: {token}") from None


def as_value(token: str) -> Value:
    """An argument as a value: a Python literal of the kvmgr value types, or a bare word as a str."""
    from kvmgr.protocol.values import ValueRuleError, plain

    try:
        parsed = literal(token)
    except ShellError:
        if BARE_WORD.fullmatch(token):
            return token
        raise
    try:
        return plain(parsed)
    except ValueRuleError as exc:
        raise ShellError(str(exc)) from None


def as_key(token: str) -> str:
    """An argument as a key: a bare word as it is, else a quoted str literal."""
    if BARE_WORD.fullmatch(token):
        return token
    parsed = literal(token)
    if type(parsed) is not str:
        raise ShellError(f"expected a str (a bare word or quoted), not {type(parsed).__name__}: {token}")
    return parsed


def as_number(token: str) -> int | float:
    """An argument as an int or float (not a bool)."""
    try:
        parsed = literal(token)
    except ShellError:
        parsed = None
    if type(parsed) not in (int, float):
        raise ShellError(f"expected an int or float, not {token}")
    return parsed  # type: ignore[no-any-return]


def as_ttl(token: str) -> int | float:
    """An argument as a number of seconds above 0."""
    seconds = as_number(token)
    if not seconds > 0:
        raise ShellError(f"expected a number of seconds above 0, not {token}")
    return seconds


def as_expected(token: str) -> Value | None:
    """cas's EXPECTED: a value, or None (the key must be absent)."""
    return None if token == "None" else as_value(token)


PARAMETER_KINDS: dict[str, Callable[[str], Any]] = {
    "KEY": as_key, "PREFIX": as_key, "VALUE": as_value, "EXPECTED": as_expected, "TTL": as_ttl, "BY": as_number,
    "COMMAND": str,
}


# --- the commands ---


@dataclass(kw_only=True, frozen=True)
class ShellCommand:
    """One command: its usage line (parameters in capitals, optional ones in brackets), what it does, and how it runs."""

    usage: str
    summary: str
    run: Callable[..., str]

    @property
    def name(self) -> str:
        """The word that runs it."""
        return self.usage.split()[0]

    def arguments(self, tokens: list[str]) -> list[Any]:
        """The tokens read as this command's parameters; ShellError naming the usage if they do not fit."""
        params = self.usage.split()[1:]
        required = [p for p in params if not p.startswith("[")]
        if not len(required) <= len(tokens) <= len(params):
            raise ShellError(f"usage: {self.usage}")
        return [self.argument(param.strip("[]"), token) for param, token in zip(params, tokens, strict=False)]

    def argument(self, param: str, token: str) -> Any:
        """One token read as the parameter param; ShellError naming the parameter and the usage."""
        try:
            return PARAMETER_KINDS[param](token)
        except ShellError as exc:
            raise ShellError(f"{param}: {exc} (usage: {self.usage})") from None


def show(value: object) -> str:
    """A result as the shell prints it: repr(), so '1' and 1 differ."""
    return repr(value)


def show_keys(keys: list[str]) -> str:
    """Keys one a line, with repr(); (no keys) for none."""
    return "\n".join(map(repr, keys)) if keys else "(no keys)"


def show_info(client: Operations) -> str:
    """The server's info as the table `kvmgr info` prints."""
    from kvmgr.tools.info_command import fetch_info, render

    return render(fetch_info(client))


def build_commands() -> dict[str, ShellCommand]:
    """Every shell command by name."""
    commands = [
        ShellCommand(usage="get KEY", summary="the value at KEY", run=lambda c, k: show(c.get(k))),
        ShellCommand(usage="set KEY VALUE [TTL]", summary="store VALUE (expiring after TTL seconds); saved or updated",
                     run=lambda c, k, v, t=None: c.store(k, v, t)),
        ShellCommand(usage="add KEY VALUE [TTL]", summary="store VALUE only if KEY is absent; True if it stored",
                     run=lambda c, k, v, t=None: show(c.add(k, v, t))),
        ShellCommand(usage="del KEY", summary="delete KEY; True if it existed", run=lambda c, k: show(c.delete(k))),
        ShellCommand(usage="exists KEY", summary="True if KEY is present", run=lambda c, k: show(c.exists(k))),
        ShellCommand(usage="keys [PREFIX]", summary="the keys (starting with PREFIX), sorted",
                     run=lambda c, p=None: show_keys(list(c.iter_keys(p)))),
        ShellCommand(usage="size", summary="how many keys there are", run=lambda c: show(c.size())),
        ShellCommand(usage="incr KEY [BY]", summary="add BY (default 1) to the number at KEY; the new number",
                     run=lambda c, k, by=1: show(c.incr(k, by))),
        ShellCommand(usage="decr KEY [BY]", summary="subtract BY (default 1) from the number at KEY; the new number",
                     run=lambda c, k, by=1: show(c.decr(k, by))),
        ShellCommand(usage="pop KEY", summary="remove KEY and print its value", run=lambda c, k: show(c.pop(k))),
        ShellCommand(usage="cas KEY EXPECTED VALUE", summary="store VALUE if KEY holds EXPECTED (None: if absent); True if it did",
                     run=lambda c, k, e, v: show(c.cas(k, e, v))),
        ShellCommand(usage="ttl KEY", summary="seconds until KEY expires; None if it never does", run=lambda c, k: show(c.ttl(k))),
        ShellCommand(usage="expire KEY TTL", summary="make KEY expire TTL seconds from now; False if absent",
                     run=lambda c, k, t: show(c.expire(k, t))),
        ShellCommand(usage="persist KEY", summary="remove KEY's expiry; True if it had one", run=lambda c, k: show(c.persist(k))),
        ShellCommand(usage="info", summary="what the server is doing (as kvmgr info)", run=show_info),
    ]
    return {command.name: command for command in commands}


COMMANDS = build_commands()
NAMES = sorted([*COMMANDS, "help", *LEAVE])


def help_text(topic: str | None = None) -> str:
    """The command list, or one command's usage and summary."""
    if topic is not None:
        if topic in COMMANDS:
            return f"{COMMANDS[topic].usage}\n  {COMMANDS[topic].summary}"
        if topic in ("help", *LEAVE):
            return "help [COMMAND]: this list, or one command's usage" if topic == "help" else f"{topic}: leave the shell (Ctrl-D too)"
        raise ShellError(f"unknown command {topic!r}; commands: {', '.join(NAMES)}")
    width = max(len(command.usage) for command in COMMANDS.values())
    lines = [f"  {command.usage:<{width}}  {command.summary}" for command in COMMANDS.values()]
    return "\n".join([
        "Commands:", *lines, f"  {'help [COMMAND]':<{width}}  this list, or one command's usage",
        f"  {'quit':<{width}}  leave the shell (Ctrl-D too)",
        "Type values as Python literals: 1 (int), '1' (str), b'1' (bytes), 1.5, True, [1, 2], (1, 2), {'a': 1};",
        "a bare word is a str. Keys are always str. Tab completes command names.",
    ])


def run_line(client: Operations, line: str) -> str | None:
    """What the shell prints for one line (None: nothing); raises ShellError or the client's errors."""
    tokens = split_arguments(line)
    if not tokens:
        return None
    name, rest = tokens[0], tokens[1:]
    if name == "help":
        if len(rest) > 1:
            raise ShellError("usage: help [COMMAND]")
        return help_text(rest[0] if rest else None)
    command = COMMANDS.get(name)
    if command is None:
        raise ShellError(f"unknown command {name!r}; type help for the list")
    return command.run(client, *command.arguments(rest))


def error_line(exc: Exception) -> str:
    """The one line an error prints."""
    if isinstance(exc, KeyNotFound):
        return f"error: key not found: {exc.key!r}"
    return f"error: {exc}"


# --- readline: editing, history, completion ---


def history_path() -> Path:
    """$XDG_STATE_HOME/kvmgr/shell_history, else ~/.local/state/kvmgr/shell_history."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "kvmgr" / "shell_history"


def prepare_history(path: Path) -> str | None:
    """Create the history file (mode 0600, its directory 0700) unless it is there; None if it is usable, else why not."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        return f"cannot open {path}: {exc.strerror or exc}"
    try:
        status = os.fstat(descriptor)
    finally:
        os.close(descriptor)
    if not stat.S_ISREG(status.st_mode) or status.st_uid != os.getuid():
        return f"{path} is not a regular file of this user"
    return None


class LineEditor:
    """readline set up for the shell: command-name completion and a history file (when one is usable)."""

    def __init__(self, history: Path | None, interactive: bool = True) -> None:
        self.history = history
        self.readline: Any = None
        if not interactive:  # lines from a pipe or file: no editing, and nothing for the history
            return
        try:
            import readline
        except ImportError:  # a Python built without it: input() still works, without editing
            return
        self.readline = readline
        readline.set_completer(self.complete)
        readline.set_completer_delims(" \t\n")
        binding = "bind ^I rl_complete" if "libedit" in (readline.__doc__ or "") else "tab: complete"
        readline.parse_and_bind(binding)
        readline.set_history_length(HISTORY_LENGTH)
        if history is not None:
            problem = prepare_history(history)
            if problem is None:
                readline.read_history_file(history)
                readline.write_history_file(history)  # trimmed to HISTORY_LENGTH
            else:
                print(f"kvmgr shell: no history: {problem}", file=sys.stderr)
                self.history = None

    def complete(self, text: str, state: int) -> str | None:
        """readline's completer: command names for the first word, nothing after it."""
        line = self.readline.get_line_buffer()[: self.readline.get_begidx()]
        if line.strip():
            return None
        matches = [name + " " for name in NAMES if name.startswith(text)]
        return matches[state] if state < len(matches) else None

    def remember(self) -> None:
        """Append the line just entered to the history file (so a killed shell loses none)."""
        if self.readline is not None and self.history is not None:
            try:
                self.readline.append_history_file(1, self.history)
            except OSError as exc:
                print(f"kvmgr shell: history not saved: {exc.strerror or exc}", file=sys.stderr)
                self.history = None


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"signal {signum}")


def repl(client: Operations, editor: LineEditor, interactive: bool) -> int:
    """Read lines until Ctrl-D or quit, print each one's answer or one error line; the exit status (0)."""
    prompt = PROMPT if interactive else ""
    while True:
        try:
            line = input(prompt)
        except EOFError:
            if interactive:
                print()
            return EXIT_OK
        except Terminated:
            raise
        except KeyboardInterrupt:
            print()  # Ctrl-C abandons the line
            continue
        if line.strip() in LEAVE:
            editor.remember()
            return EXIT_OK
        if line.strip():
            editor.remember()
        run_and_print(client, line)


def run_and_print(client: Operations, line: str) -> None:
    """Run one line and print its answer, or one line saying what went wrong."""
    try:
        answer = run_line(client, line)
    except Terminated:
        raise
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return
    except (ShellError, KvmgrError, TypeError, ValueError) as exc:
        print(error_line(exc), file=sys.stderr, flush=True)
        return
    if answer is not None:
        print(answer, flush=True)


def shown_address(address: str) -> str:
    """The address for the banner, a Redis URL's password left out."""
    scheme, separator, rest = address.partition("://")
    if separator and "@" in rest:
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return address


def command_shell(args: argparse.Namespace) -> int:
    """Run `kvmgr shell`."""
    from kvmgr.tools.commands import connect_from

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    interactive = sys.stdin.isatty()
    with connect_from(args, name="kvmgr-shell") as client:
        editor = LineEditor(None if args.no_history else args.history_file or history_path(), interactive)
        if interactive:
            print(f"kvmgr shell: connected to {shown_address(args.address)}; help lists the commands, Ctrl-D leaves")
        return repl(client, editor, interactive)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `kvmgr shell`."""
    parser = subparsers.add_parser(
        "shell", help="an interactive prompt against a server", description=__doc__.split("\n\n", 1)[0],
        epilog=__doc__.split("\n\n", 1)[1],
    )
    add_server_arguments(parser)
    parser.add_argument("--history-file", type=Path, help=f"keep the line history here (default {history_path()})")
    parser.add_argument("--no-history", action="store_true", help="keep no history file")
    parser.set_defaults(handler=command_shell)
