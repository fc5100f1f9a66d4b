"""The kvmgr command starts fast: `kvmgr --help` and a one-shot command import only what they use."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from kvmgr.tools.cli import COMMANDS, build_parser, command_word


def subcommand_helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each subcommand's one-line help, as `kvmgr --help` lists it."""
    [subparsers] = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return {choice.dest: choice.help or "" for choice in subparsers._choices_actions}


def test_the_help_listed_without_importing_a_command_is_the_help_its_parser_gives() -> None:
    assert subcommand_helps(build_parser()) == {name: help_text for name, (_, help_text) in COMMANDS.items()}
    assert subcommand_helps(build_parser("")) == subcommand_helps(build_parser())


@pytest.mark.parametrize(("argv", "word"), [(["--help"], ""), (["--debug", "get", "k"], "get"), (["serve", "--address", "x"], "serve")])
def test_the_command_word_is_the_first_word_that_is_not_an_option(argv: list[str], word: str) -> None:
    assert command_word(argv) == word


HEAVY = ("psutil", "tabulate", "sqlite3", "asyncio", "kvmgr.client", "kvmgr.verify.check", "kvmgr.tools.bench", "kvmgr.server")


@pytest.mark.parametrize(("argv", "allowed"), [
    (["--help"], ()), (["get", "--help"], ()), (["serve", "--help"], ("sqlite3", "kvmgr.server")),
], ids=["help", "get-help", "serve-help"])
def test_a_command_imports_nothing_it_does_not_use(argv: list[str], allowed: tuple[str, ...]) -> None:
    code = (
        "import json, sys\nfrom kvmgr.tools.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps(sorted(name for name in sys.modules if name.startswith({HEAVY!r}))))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = json.loads(run.stdout.splitlines()[-1])
    assert [name for name in loaded if not name.startswith(allowed or ("-",))] == [], loaded
