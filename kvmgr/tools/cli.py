"""The `kvmgr` command and its subcommands.

Exit status, shared by every subcommand: 0 success, 1 a negative verdict (not linearizable, a FAIL),
2 usage error or malformed input, 3 a server could not be reached, started or listened for (for `kvmgr check`:
no answer within --timeout).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from kvmgr.config import (
    DEFAULT_ADDRESS,
    HANDSHAKE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    VERSION,
    Limits,
    configured_authkey,
    generated_authkey,
    is_loopback,
    parse_address,
)
from kvmgr.errors import ConfigError, KvmgrError, ServerUnavailable, exit_status
from kvmgr.tools.arguments import positive_float, positive_int
from kvmgr.tools.interrupts import interrupt_on_terminate


def command_serve(args: argparse.Namespace) -> int:
    """Run a server in this process until quit, SIGTERM or SIGINT."""
    from kvmgr.server.durable import SQLiteJournal
    from kvmgr.server.journal import IN_MEMORY
    from kvmgr.server.manager import serve

    limits = Limits(
        args.max_key_bytes, args.max_value_bytes, args.handshake_timeout, max_request_bytes=args.max_request_bytes or 0,
        max_connections=args.max_connections,
    )
    address = parse_address(args.address)
    authkey = configured_authkey(args.authkey_file)
    if authkey is None:
        if not is_loopback(address):
            raise ConfigError(
                f"refusing to listen on non-loopback {args.address} with a generated authkey: "
                "set $KVMGR_AUTHKEY or pass --authkey-file"
            )
        authkey, path = generated_authkey()
        print(f"kvmgr: authkey in {path} (clients on this machine read it from there)", file=sys.stderr, flush=True)
    journal = SQLiteJournal(args.data_dir, args.fsync) if args.data_dir is not None else IN_MEMORY
    try:
        return serve(address, authkey, limits, journal)
    except OSError as exc:
        raise ServerUnavailable(f"cannot listen on {args.address}: {exc.strerror or exc}") from None


def add_serve(subparsers: argparse._SubParsersAction) -> None:
    from kvmgr.server.durable import FSYNC_MODES  # sqlite3: imported only when serve is the command

    parser = subparsers.add_parser("serve", help="run a kvmgr server", description="Run a kvmgr server until quit, SIGTERM or SIGINT.")
    parser.add_argument(
        "--address", default=DEFAULT_ADDRESS,
        help=f"HOST:PORT (port 0 picks a free one) or a Unix socket path (default {DEFAULT_ADDRESS})",
    )
    parser.add_argument("--authkey-file", type=Path, help="read the authkey from this file (else $KVMGR_AUTHKEY, else generate one)")
    parser.add_argument(
        "--max-key-bytes", type=positive_int, default=MAX_KEY_BYTES, help="longest key in UTF-8 bytes (default %(default)s)",
    )
    parser.add_argument(
        "--max-value-bytes", type=positive_int, default=MAX_VALUE_BYTES, help="largest value in bytes (default %(default)s)",
    )
    parser.add_argument(
        "--max-request-bytes", type=positive_int,
        help="largest request (one call, pickled) the server reads (default: 64 MiB, or more when --max-value-bytes needs it)",
    )
    parser.add_argument(
        "--handshake-timeout", type=positive_float, default=HANDSHAKE_TIMEOUT,
        help="seconds an unauthenticated peer may take to authenticate (default %(default)s)",
    )
    parser.add_argument(
        "--max-connections", type=positive_int, default=MAX_CONNECTIONS,
        help="authenticated connections served at once; one more is refused with a clear error (default %(default)s)",
    )
    parser.add_argument("--data-dir", type=Path, help="keep the data in SQLite inside this directory (default: in memory only)")
    parser.add_argument(
        "--fsync", choices=FSYNC_MODES, default="always",
        help="with --data-dir: always = each write durable before its reply; batch = group commit, still durable "
        "before the reply; off = the OS decides (default %(default)s)",
    )
    parser.set_defaults(handler=command_serve)


def add_check(subparsers: argparse._SubParsersAction) -> None:
    from kvmgr.tools.check_command import add_parser

    add_parser(subparsers)


def add_stress(subparsers: argparse._SubParsersAction) -> None:
    from kvmgr.tools.stress import add_parser

    add_parser(subparsers)


def add_faults(subparsers: argparse._SubParsersAction) -> None:
    from kvmgr.tools.faults import add_parser

    add_parser(subparsers)


def add_bench(subparsers: argparse._SubParsersAction) -> None:
    from kvmgr.tools.bench import add_parser

    add_parser(subparsers)


def add_one_shot(subparsers: argparse._SubParsersAction) -> None:
    from kvmgr.tools.commands import add_parsers

    add_parsers(subparsers)


def add_shell(subparsers: argparse._SubParsersAction) -> None:
    from kvmgr.tools.shell import add_parser

    add_parser(subparsers)


def add_info(subparsers: argparse._SubParsersAction) -> None:
    from kvmgr.tools.info_command import add_parser

    add_parser(subparsers)


Adder = Callable[[argparse._SubParsersAction], None]

COMMANDS: dict[str, tuple[Adder, str]] = {
    "serve": (add_serve, "run a kvmgr server"),
    "get": (add_one_shot, "print a key's value"),
    "set": (add_one_shot, "store a value"),
    "del": (add_one_shot, "delete a key"),
    "keys": (add_one_shot, "list keys"),
    "incr": (add_one_shot, "add to a number"),
    "dump": (add_one_shot, "write every key to stdout as JSON lines"),
    "load": (add_one_shot, "store every key of a dump file"),
    "shell": (add_shell, "an interactive prompt against a server"),
    "info": (add_info, "what a server is doing"),
    "check": (add_check, "are recorded histories linearizable?"),
    "stress": (add_stress, "many client processes at once; check the history"),
    "faults": (add_faults, "run the fault suite against real server processes"),
    "bench": (add_bench, "measure kvmgr against its peers on loopback"),
}
"""Every subcommand: what adds its parser (importing its module) and its one-line help (for `kvmgr --help`, which imports none)."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `kvmgr` argument parser: every subcommand's full parser, or (given the command being run) that one's only,
    the others listed with their help, so that a command imports nothing it does not use."""
    parser = argparse.ArgumentParser(
        prog="kvmgr", description="kvmgr: a key-value store shared by Python processes through a multiprocessing.managers server.",
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--version", action="version", version=f"kvmgr {VERSION}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = None if command is None else COMMANDS.get(command, (None, ""))[0]
    done: set[Adder] = set()
    for name, (add, help_text) in COMMANDS.items():
        if command is not None and add is not wanted:
            subparsers.add_parser(name, help=help_text, add_help=False)
        elif add not in done:
            add(subparsers)
            done.add(add)
    return parser


def command_word(argv: list[str]) -> str:
    """The subcommand argv names (its first word that is not an option), or "" when it names none (`kvmgr --help`)."""
    return next((word for word in argv if not word.startswith("-")), "")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the kvmgr console script and python -m kvmgr."""
    args = build_parser(command_word(sys.argv[1:] if argv is None else argv)).parse_args(argv)
    interrupt_on_terminate()  # `serve` installs its own graceful handlers
    logging.basicConfig(level=logging.INFO, format=f"kvmgr {args.command}: %(message)s", stream=sys.stderr)
    try:
        return int(args.handler(args))
    except KvmgrError as exc:
        return _fail(args, exc, exit_status(exc))
    except KeyboardInterrupt:
        return 130


def _fail(args: argparse.Namespace, exc: Exception, status: int) -> int:
    if args.debug:
        raise exc
    print(f"kvmgr {args.command}: error: {exc}", file=sys.stderr, flush=True)
    return status
