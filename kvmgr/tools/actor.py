"""The alice and bob command line: one named client process that runs one operation and prints the seed's messages.

Exit status: 0 success, 1 key not found (or a cas that did not swap), 2 usage error, 3 server unreachable
or authentication failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kvmgr.client import connect
from kvmgr.client.operations import Operations
from kvmgr.config import DEFAULT_ADDRESS, DEFAULT_TIMEOUT
from kvmgr.errors import EXIT_NEGATIVE, EXIT_OK, ConfigError, KeyNotFound, KvmgrError, exit_status
from kvmgr.protocol.operations import BY_NAME, SCENARIO_OPERATIONS
from kvmgr.tools.arguments import positive_float, positive_int, writable_path
from kvmgr.verify.history import HistoryWriter


def build_parser(name: str | None) -> argparse.ArgumentParser:
    """The argument parser for `alice`, `bob` and `python -m kvmgr.client --name NAME`."""
    parser = argparse.ArgumentParser(
        prog=name or "python -m kvmgr.client",
        description="Run one operation against a kvmgr server, as the seed's alice.py/bob.py did. "
        "--key=K --value=V stores, --key=K gets, --key=QUIT asks the server to quit.",
        epilog="Exit status: 0 success, 1 key not found or cas not swapped, 2 usage error, "
        "3 server unreachable or authentication failed. The authkey comes from $KVMGR_AUTHKEY, "
        "--authkey-file, or the file a server generated.",
    )
    if name is None:
        parser.add_argument("--name", required=True, help="the actor's name (shown in histories and --json)")
    parser.add_argument("--key", help="the key; QUIT asks the server to quit")
    parser.add_argument("--value", help="the value to store (or cas's new value)")
    parser.add_argument("--op", choices=SCENARIO_OPERATIONS, help="the operation (default: inferred from --key/--value as the seed did)")
    parser.add_argument("--expected", help="cas: the value the key must hold for the swap")
    parser.add_argument("--absent", action="store_true", help="cas: swap only if the key is absent")
    parser.add_argument("--pairs", help="store_many: JSON object of key -> value; get_many: JSON list of keys")
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help=f"the server, HOST:PORT or a socket path (default {DEFAULT_ADDRESS})")
    parser.add_argument("--authkey-file", type=Path, help="read the authkey from this file")
    parser.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT, help="seconds to wait for a reply (default %(default)s)")
    parser.add_argument("--barrier", help="wait at this server-hosted barrier before the operation")
    parser.add_argument("--parties", type=positive_int, default=2, help="how many actors meet at --barrier (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object describing the outcome")
    parser.add_argument("--history", type=writable_path, help="append the operation to this history file (JSON lines)")
    parser.add_argument("--session", action="store_true", help="run steps read as JSON lines from stdin (used by the driver)")
    return parser


def infer_operation(args: argparse.Namespace) -> str:
    """The seed's rules: QUIT quits, a value stores, a key alone gets."""
    if args.op:
        return str(args.op)
    if args.key == "QUIT":
        return "quit"
    return "store" if args.value is not None else "get"


def operation_arguments(op: str, args: argparse.Namespace) -> tuple[Any, ...]:
    """The positional arguments of the Store method for op, from the command line."""
    needs_key = BY_NAME[op].needs_key
    if needs_key and args.key is None:
        raise ConfigError(f"{op} needs --key")
    if BY_NAME[op].needs_value and args.value is None:
        raise ConfigError(f"{op} needs --value")
    if op == "cas":
        if args.absent == (args.expected is not None):
            raise ConfigError("cas needs exactly one of --expected or --absent")
        return args.key, args.expected, args.value
    if op in ("get_many", "store_many"):
        return (_parse_pairs(op, args.pairs),)
    if op == "store":
        return args.key, args.value
    return (args.key,) if needs_key else ()


def _parse_pairs(op: str, text: str | None) -> Any:
    if text is None:
        raise ConfigError(f"{op} needs --pairs")
    try:
        pairs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--pairs is not JSON: {exc}") from None
    wanted = dict if op == "store_many" else list
    if not isinstance(pairs, wanted):
        raise ConfigError(f"{op} --pairs must be a JSON {'object' if wanted is dict else 'list'}")
    return pairs


def message_for(op: str, key: str | None, result: Any) -> tuple[str, int]:
    """The seed's response text for a successful call, and the exit status."""
    if op == "store":
        verb = "Saved" if result == "saved" else "Update"
        return f"{verb} Successfully for key:{key}", EXIT_OK
    if op == "delete":
        return (f"Deleted key:{key}", EXIT_OK) if result else (f"Invalid Key:{key}", EXIT_NEGATIVE)
    if op == "cas":
        return (f"Swapped key:{key}", EXIT_OK) if result else (f"Not swapped key:{key}", EXIT_NEGATIVE)
    if op == "keys":
        return "\n".join(result), EXIT_OK
    if isinstance(result, bool):
        return str(result).lower(), EXIT_OK
    if isinstance(result, dict):
        return json.dumps({k: printable(v) for k, v in result.items()}, sort_keys=True), EXIT_OK
    return printable(result), EXIT_OK


def printable(value: Any) -> str:
    """Text for a value: str as is, bytes as hex: plus hex."""
    if isinstance(value, bytes):
        return "hex:" + value.hex()
    return str(value)


def perform(client: Operations, name: str, args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """Meet at the barrier if asked, run the operation; return the outcome and exit status."""
    op = infer_operation(args)
    call_args = operation_arguments(op, args)
    if args.barrier:
        client.rendezvous(args.barrier, args.parties)
    outcome: dict[str, Any] = {"client": name, "op": op, "key": args.key, "value": args.value, "start": time.monotonic_ns()}
    try:
        result = client.call(op, *call_args)
    except KeyNotFound as exc:
        outcome.update(end=time.monotonic_ns(), status="error", error="KeyNotFound", result=None, message=str(exc))
        return outcome, EXIT_NEGATIVE
    outcome["end"] = time.monotonic_ns()
    message, status = message_for(op, args.key, result)
    outcome.update(status="ok", result=result if not isinstance(result, bytes) else printable(result), message=message)
    return outcome, status


@contextlib.contextmanager
def connected(name: str, args: argparse.Namespace) -> Iterator[Operations]:
    """A client for the actor, recording to --history when given."""
    with contextlib.ExitStack() as stack:
        history = stack.enter_context(HistoryWriter(args.history)) if args.history else None
        yield stack.enter_context(
            connect(args.address, timeout=args.timeout, name=name, authkey_file=args.authkey_file, history=history)
        )


def run_session(name: str, args: argparse.Namespace) -> int:
    """--session: one connection, then one step per JSON line on stdin, one JSON outcome per line on stdout.

    A step is an object of the one-shot flags (op, key, value, expected, absent, pairs, barrier, parties).
    The driver keeps each actor alive this way for a whole scenario instead of starting a process per step.
    """
    with connected(name, args) as client:
        for line in sys.stdin:
            try:
                outcome, _ = perform(client, name, argparse.Namespace(**{**vars(args), **json.loads(line)}))
            except json.JSONDecodeError as exc:
                outcome = _error_outcome(name, ConfigError(f"a step must be one JSON object per line: {exc}"))
            except KvmgrError as exc:
                outcome = _error_outcome(name, exc)
            print(json.dumps(outcome), flush=True)
    return EXIT_OK


def main(argv: list[str] | None = None, name: str | None = None) -> int:
    """Entry point of alice, bob and python -m kvmgr.client."""
    args = build_parser(name).parse_args(argv)
    actor = name or args.name
    try:
        if args.session:
            return run_session(actor, args)
        with connected(actor, args) as client:
            outcome, status = perform(client, actor, args)
    except KvmgrError as exc:
        return _fail(actor, args, exc, exit_status(exc))
    print(json.dumps(outcome) if args.json else outcome["message"], flush=True)
    return status


def _error_outcome(actor: str, exc: Exception) -> dict[str, Any]:
    return {"client": actor, "status": "error", "error": type(exc).__name__, "message": str(exc)}


def _fail(actor: str, args: argparse.Namespace, exc: Exception, status: int) -> int:
    if args.json:
        print(json.dumps(_error_outcome(actor, exc)), flush=True)
    print(f"{actor}: error: {exc}", file=sys.stderr, flush=True)
    return status


def alice() -> int:
    """The `alice` console script."""
    return main(name="alice")


def bob() -> int:
    """The `bob` console script."""
    return main(name="bob")


if __name__ == "__main__":
    raise SystemExit(main())
