"""The alice and bob command line: one named client process that runs one operation and prints the seed's messages.

Exit status: 0 success, 1 the operation found nothing to act on (a key not found, a cas that did not swap,
an add of a present key, an expire or persist that changed nothing), 2 usage error (including a key or value
the server rejects, or a value of the wrong type for incr), 3 server unreachable or authentication failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kvmgr.client import connect
from kvmgr.client.operations import Operations
from kvmgr.config import DEFAULT_ADDRESS, DEFAULT_TIMEOUT
from kvmgr.errors import EXIT_NEGATIVE, EXIT_OK, EXIT_USAGE, ConfigError, KeyNotFound, KvmgrError, WrongType, exit_status
from kvmgr.protocol.operations import BY_NAME, SCENARIO_OPERATIONS
from kvmgr.protocol.values import ValueRuleError, from_json, is_number, to_json
from kvmgr.tools.arguments import positive_float, positive_int, writable_path
from kvmgr.verify.history import HistoryWriter

UNSAFE_INCREMENT = "unsafe_increment"
PSEUDO_OPERATIONS: dict[str, tuple[str, ...]] = {UNSAFE_INCREMENT: ("key",)}
"""Operations that are not one call of the store, with their parameters: unsafe_increment is a get, then a store of
the value plus one (an absent key counts as 0), exactly what `d[k] += 1` does on a Manager dict."""
ACTOR_OPERATIONS: tuple[str, ...] = (*SCENARIO_OPERATIONS, *PSEUDO_OPERATIONS)
MAX_REPEAT = 1_000_000
OPTION_OPERATIONS = {"by": ("incr", "decr"), "ttl": ("store", "add", "expire")}
"""Which operations each optional flag applies to (it is refused with any other)."""
NEGATIVE_ANSWERS = {
    "add": "Not added key:{key} (it is present)",
    "expire": "Invalid Key:{key}",
    "persist": "No expiry on key:{key}",
}
"""The message of a new operation that answered False (exit status 1)."""
POSITIVE_ANSWERS = {
    "incr": "Incremented key:{key} to {result!r}",
    "decr": "Decremented key:{key} to {result!r}",
    UNSAFE_INCREMENT: "Incremented key:{key} to {result!r} (a get, then a store: not atomic)",
    "add": "Added key:{key}",
    "pop": "Popped key:{key} value:{result!r}",
    "expire": "Set expiry of key:{key}",
    "persist": "Removed expiry of key:{key}",
}
"""The message of a new operation that succeeded; results are shown with repr() so their types are visible."""


def number(text: str) -> int | float:
    """An argparse type: an int ("3", "-2") or a finite float ("0.5", "1e3"); what incr's --by can be."""
    if re.fullmatch(r"[+-]?[0-9]+", text.strip()):
        return int(text)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected an int or a finite float, got {text[:40]!r}")
    return value


def seconds_to_live(text: str) -> int | float:
    """An argparse type: a ttl, a number of seconds above 0 (the client refuses more than a hundred years)."""
    value = number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text[:40]!r}")
    return value


def build_parser(name: str | None) -> argparse.ArgumentParser:
    """The argument parser for `alice`, `bob` and `python -m kvmgr.client --name NAME`."""
    parser = argparse.ArgumentParser(
        prog=name or "python -m kvmgr.client",
        description="Run one operation against a kvmgr server, as the seed's alice.py/bob.py did. "
        "--key=K --value=V stores, --key=K gets, --key=QUIT asks the server to quit.",
        epilog="Exit status: 0 success, 1 key not found, cas not swapped, add of a present key, or expire/persist "
        "that changed nothing, 2 usage error (or a value of the wrong type for incr), 3 server unreachable or "
        "authentication failed. The authkey comes from $KVMGR_AUTHKEY, --authkey-file, or the file a server generated.",
    )
    if name is None:
        parser.add_argument("--name", required=True, help="the actor's name (shown in histories and --json)")
    parser.add_argument("--key", help="the key; QUIT asks the server to quit")
    parser.add_argument("--value", help="the value to store (or cas's new value, or add's value): a str")
    parser.add_argument("--op", choices=ACTOR_OPERATIONS, help="the operation (default: inferred from --key/--value as the seed did)")
    parser.add_argument("--expected", help="cas: the value the key must hold for the swap")
    parser.add_argument("--absent", action="store_true", help="cas: swap only if the key is absent")
    parser.add_argument("--pairs", help="store_many: JSON object of key -> value; get_many: JSON list of keys")
    parser.add_argument("--by", type=number, help="incr/decr: the amount, an int or a float (default 1)")
    parser.add_argument("--ttl", type=seconds_to_live, help="store/add: expire after this many seconds; expire: the new ttl")
    parser.add_argument("--repeat", type=lambda text: positive_int(text, MAX_REPEAT), default=None,
                        help="run the operation this many times over one connection; print the last result")
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help=f"the server, HOST:PORT or a socket path (default {DEFAULT_ADDRESS})")
    parser.add_argument("--authkey-file", type=Path, help="read the authkey from this file")
    parser.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT, help="seconds to wait for a reply (default %(default)s)")
    parser.add_argument("--barrier", help="wait at this server-hosted barrier before the operation")
    parser.add_argument("--parties", type=positive_int, default=2, help="how many actors meet at --barrier (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object describing the outcome (values in JSON form)")
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
    _check_options(op, args)
    params = PSEUDO_OPERATIONS[op] if op in PSEUDO_OPERATIONS else BY_NAME[op].params
    if "key" in params and args.key is None:
        raise ConfigError(f"{op} needs --key")
    if "value" in params and args.value is None:
        raise ConfigError(f"{op} needs --value")
    if op == "cas":
        if args.absent == (args.expected is not None):
            raise ConfigError("cas needs exactly one of --expected or --absent")
        return args.key, args.expected, args.value
    if op in ("get_many", "store_many"):
        return (_parse_pairs(op, args.pairs),)
    if op == "expire" and args.ttl is None:
        raise ConfigError("expire needs --ttl")
    given = {"key": args.key, "value": args.value, "by": args.by, "ttl": args.ttl}
    return _without_trailing_none(tuple(given[name] for name in params if name in given))


def _check_options(op: str, args: argparse.Namespace) -> None:
    for option, operations in OPTION_OPERATIONS.items():
        if getattr(args, option, None) is not None and op not in operations:
            raise ConfigError(f"--{option} does not apply to {op} (only to {', '.join(operations)})")


def _without_trailing_none(arguments: tuple[Any, ...]) -> tuple[Any, ...]:
    """Optional arguments left out (store without a ttl is a call with two arguments)."""
    while arguments and arguments[-1] is None:
        arguments = arguments[:-1]
    return arguments


def _parse_pairs(op: str, text: str | None) -> Any:
    if text is None:
        raise ConfigError(f"{op} needs --pairs")
    try:
        pairs = from_json(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--pairs is not JSON: {exc}") from None
    except ValueRuleError as exc:
        raise ConfigError(f"--pairs: {exc}") from None
    wanted = dict if op == "store_many" else list
    if not isinstance(pairs, wanted):
        raise ConfigError(f"{op} --pairs must be a JSON {'object' if wanted is dict else 'list'}")
    return pairs


def message_for(op: str, key: str | None, result: Any) -> tuple[str, int]:
    """The seed's response text for a successful call (new operations: their own line, results in repr), and the exit status."""
    if op in NEGATIVE_ANSWERS and result is False:
        return NEGATIVE_ANSWERS[op].format(key=key), EXIT_NEGATIVE
    if op in POSITIVE_ANSWERS:
        return POSITIVE_ANSWERS[op].format(key=key, result=result), EXIT_OK
    if op == "ttl":
        return f"TTL of key:{key}: " + ("none (it never expires)" if result is None else f"{result!r} seconds"), EXIT_OK
    if op == "store":
        verb = "Saved" if result == "saved" else "Update"
        return f"{verb} Successfully for key:{key}", EXIT_OK
    if op == "delete":
        return (f"Deleted key:{key}", EXIT_OK) if result else (f"Invalid Key:{key}", EXIT_NEGATIVE)
    if op == "cas":
        return (f"Swapped key:{key}", EXIT_OK) if result else (f"Not swapped key:{key}", EXIT_NEGATIVE)
    if op == "keys":
        return "\n".join(result), EXIT_OK
    if op == "get":
        return printable(result), EXIT_OK
    if isinstance(result, bool):
        return str(result).lower(), EXIT_OK
    if isinstance(result, dict):
        return json.dumps({k: _shown(v) for k, v in result.items()}, sort_keys=True), EXIT_OK
    return printable(result), EXIT_OK


def printable(value: Any) -> str:
    """Text for a value: str as is (as the seed printed it), bytes as hex: plus hex, anything else as repr()."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return "hex:" + value.hex()
    return repr(value)


def _shown(value: Any) -> Any:
    """A get_many value in its JSON line: str as is, bytes as hex: plus hex, anything else in JSON form."""
    return value if isinstance(value, str) else printable(value) if isinstance(value, bytes) else to_json(value)


def unsafe_increment(client: Operations, key: str) -> int | float:
    """A get, then a store of the value plus one (absent: 0); not atomic, exactly as `d[k] += 1` on a Manager dict."""
    try:
        current = client.get(key)
    except KeyNotFound:
        current = 0
    if not is_number(current):
        raise WrongType(f"unsafe_increment: key {key!r} holds a {type(current).__name__}, not a number")
    client.store(key, current + 1)  # type: ignore[operator]
    return current + 1  # type: ignore[operator]


def caller(client: Operations, op: str, call_args: tuple[Any, ...]) -> Callable[[], Any]:
    """One run of the operation."""
    if op == UNSAFE_INCREMENT:
        return lambda: unsafe_increment(client, call_args[0])
    return lambda: client.call(op, *call_args)


def perform(client: Operations, name: str, args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """Meet at the barrier if asked, run the operation (--repeat times); return the outcome and exit status."""
    op = infer_operation(args)
    run = caller(client, op, operation_arguments(op, args))
    if args.barrier:
        client.rendezvous(args.barrier, args.parties)
    value = None if args.value is None else to_json(args.value)
    outcome: dict[str, Any] = {"client": name, "op": op, "key": args.key, "value": value, "start": time.monotonic_ns()}
    try:
        for _ in range(getattr(args, "repeat", None) or 1):
            result = run()
    except KeyNotFound as exc:
        outcome.update(end=time.monotonic_ns(), status="error", error="KeyNotFound", result=None, message=str(exc))
        return outcome, EXIT_NEGATIVE
    outcome["end"] = time.monotonic_ns()
    message, status = message_for(op, args.key, result)
    outcome.update(status="ok", result=None if result is None else to_json(result), message=message)
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

    A step is an object of the one-shot flags (op, key, value, expected, absent, pairs, by, ttl, repeat, barrier,
    parties), value and expected in JSON form (any value, $bytes/$tuple tagged). The driver keeps each actor
    alive this way for a whole scenario instead of starting a process per step.
    """
    with connected(name, args) as client:
        for line in sys.stdin:
            try:
                outcome, _ = perform(client, name, argparse.Namespace(**{**vars(args), **session_step(line)}))
            except KvmgrError as exc:
                outcome = _error_outcome(name, exc)
            print(json.dumps(outcome), flush=True)
    return EXIT_OK


def session_step(line: str) -> dict[str, Any]:
    """One --session step: a JSON object of flags, its value and expected decoded from the JSON form (ConfigError if not)."""
    try:
        step = json.loads(line)
        if not isinstance(step, dict):
            raise ConfigError("a step must be one JSON object per line")
        for name in ("value", "expected"):
            if step.get(name) is not None:
                step[name] = from_json(step[name])
    except json.JSONDecodeError as exc:
        raise ConfigError(f"a step must be one JSON object per line: {exc}") from None
    except ValueRuleError as exc:
        raise ConfigError(f"a step's value is not in JSON form: {exc}") from None
    return step


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
        return _fail(actor, args, exc, EXIT_USAGE if isinstance(exc, WrongType) else exit_status(exc))
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
