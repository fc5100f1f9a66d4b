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

from kvmgr import __version__
from kvmgr.config import (
    DEFAULT_ADDRESS,
    HANDSHAKE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    Limits,
    configured_authkey,
    generated_authkey,
    is_loopback,
    parse_address,
)
from kvmgr.errors import ConfigError, KvmgrError, ServerUnavailable, exit_status
from kvmgr.server.durable import FSYNC_MODES
from kvmgr.tools.arguments import positive_float, positive_int
from kvmgr.tools.processes import interrupt_on_terminate


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


def build_parser() -> argparse.ArgumentParser:
    """The `kvmgr` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="kvmgr", description="kvmgr: a key-value store shared by Python processes through a multiprocessing.managers server.",
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--version", action="version", version=f"kvmgr {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_serve, add_check, add_stress, add_faults, add_bench, add_one_shot, add_shell, add_info,
]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the kvmgr console script and python -m kvmgr."""
    args = build_parser().parse_args(argv)
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
