"""The alice and bob command line: one named client process that runs one operation and prints the seed's messages.

Exit status: 0 success, 1 the operation found nothing to act on (a key not found, a cas that did not swap,
an add of a present key, an expire or persist that changed nothing, a lock not acquired in time or no longer
held, a wait that saw no change, a queue with no item), 2 usage error (including a key or value the server
rejects, or a value of the wrong type for incr), 3 server unreachable or authentication failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, cast

from kvmgr.client import connect
from kvmgr.client.coordination import Lock
from kvmgr.client.operations import Operations
from kvmgr.config import DEFAULT_ADDRESS, DEFAULT_LEASE, DEFAULT_TIMEOUT
from kvmgr.errors import (
    EXIT_NEGATIVE,
    EXIT_OK,
    EXIT_USAGE,
    ConfigError,
    KeyNotFound,
    KvmgrError,
    LockLost,
    LockTimeout,
    QueueEmpty,
    WaitTimeout,
    WrongType,
    exit_status,
)
from kvmgr.protocol.operations import BY_NAME, SCENARIO_OPERATIONS
from kvmgr.protocol.values import ValueRuleError, from_json, is_number, to_json
from kvmgr.tools.arguments import number, positive_float, positive_int, seconds_to_live, writable_path

UNSAFE_INCREMENT = "unsafe_increment"
COORDINATION_OPERATIONS: dict[str, tuple[str, ...]] = {
    "lock": ("lock", "lease", "timeout", "kill"),
    "unlock": ("lock",),
    "wait": ("key", "after", "timeout"),
    "qput": ("queue", "value"),
    "qget": ("queue", "timeout", "until_empty"),
}
"""The coordination steps (a Lock, wait, a Queue) and the parameters a scenario step of each may give (`kill`
is the driver's: it kills the actor once it holds the lock)."""
PSEUDO_OPERATIONS: dict[str, tuple[str, ...]] = {UNSAFE_INCREMENT: ("key",), **COORDINATION_OPERATIONS}
"""Operations that are not one call of the store, with their parameters: unsafe_increment is a get, then a store of
the value plus one (an absent key counts as 0), exactly what `d[k] += 1` does on a Manager dict; and the
coordination steps."""
OPTIONAL_PARAMETERS = frozenset({"lease", "timeout", "kill", "until_empty"})
"""Parameters of the operations above that may be left out."""
ACTOR_OPERATIONS: tuple[str, ...] = (*SCENARIO_OPERATIONS, *PSEUDO_OPERATIONS)
CURRENT = "current"  # wait's --after current: the version the actor reads at the start of the step
MAX_REPEAT = 1_000_000
OPTION_OPERATIONS = {
    "by": ("incr", "decr"), "ttl": ("store", "add", "expire"), "lock": ("lock", "unlock"), "lease": ("lock",),
    "token": ("unlock",), "after": ("wait",), "queue": ("qput", "qget"), "until_empty": ("qget",),
}
"""Which operations each optional flag applies to (it is refused with any other)."""
NOT_REPEATED = ("lock", "unlock")
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
    "lock": "Acquired lock:{key} token:{result!r}",
    "unlock": "Released lock:{key}",
    "qput": "Put on queue:{key} (length {result!r})",
    "add": "Added key:{key}",
    "pop": "Popped key:{key} value:{result!r}",
    "expire": "Set expiry of key:{key}",
    "persist": "Removed expiry of key:{key}",
}
"""The message of a new operation that succeeded; results are shown with repr() so their types are visible."""


def version_or_current(text: str) -> int | str:
    """An argparse type: wait's --after, a version (a whole number >= 0) or `current` (the version read first)."""
    if text == CURRENT:
        return text
    if not re.fullmatch(r"[0-9]+", text.strip()):
        raise argparse.ArgumentTypeError(f"expected a version (a whole number >= 0) or 'current', got {text[:40]!r}")
    return int(text)


def fencing_token(text: str) -> int:
    """An argparse type: a fencing token, a whole number >= 0 (what --op lock printed)."""
    if not re.fullmatch(r"[0-9]+", text.strip()):
        raise argparse.ArgumentTypeError(f"expected a fencing token (a whole number >= 0), got {text[:40]!r}")
    return int(text)


def build_parser(name: str | None) -> argparse.ArgumentParser:
    """The argument parser for `alice`, `bob` and `python -m kvmgr.client --name NAME`."""
    parser = argparse.ArgumentParser(
        prog=name or "python -m kvmgr.client",
        description="Run one operation against a kvmgr server, as the seed's alice.py/bob.py did. "
        "--key=K --value=V stores, --key=K gets, --key=QUIT asks the server to quit.",
        epilog="Exit status: 0 success, 1 key not found, cas not swapped, add of a present key, expire/persist "
        "that changed nothing, lock not acquired within --timeout (LockTimeout) or no longer held (LockLost), no change "
        "within --timeout (WaitTimeout), no item within --timeout (QueueEmpty), 2 usage error (or a value of the wrong "
        "type for incr), 3 server unreachable or authentication failed. The authkey comes from $KVMGR_AUTHKEY, "
        "--authkey-file, or the file a server generated. Note: a one-shot `--op lock` exits as soon as it holds the "
        "lock; on kvmgr's server the lock is freed at that moment (its connection closes), on Redis it lasts its "
        "--lease (release it with --op unlock --token N). To hold a lock across steps, use --session (the driver does).",
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
    parser.add_argument("--lock", metavar="NAME", help="lock/unlock: the lock's name (locks are not keys)")
    parser.add_argument("--lease", type=positive_float, metavar="SECONDS",
                        help=f"lock: hold it at most this long unless released first (default {DEFAULT_LEASE:g})")
    parser.add_argument("--token", type=fencing_token, metavar="N",
                        help="unlock: release the lock held with this fencing token (what --op lock printed)")
    parser.add_argument("--after", type=version_or_current, metavar="VERSION|current",
                        help="wait: return once the key's version is above this; `current`: the version read first")
    parser.add_argument("--queue", metavar="NAME", help="qput/qget: the queue's name (queues are not keys)")
    parser.add_argument("--until-empty", action="store_true", default=None,
                        help="qget: take items until the queue stays empty for --timeout; print every item")
    parser.add_argument("--repeat", type=lambda text: positive_int(text, MAX_REPEAT), default=None,
                        help="run the operation this many times over one connection; print the last result")
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help=f"the server, HOST:PORT or a socket path (default {DEFAULT_ADDRESS})")
    parser.add_argument("--authkey-file", type=Path, help="read the authkey from this file")
    parser.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT,
                        help="seconds to wait for a reply; lock, wait and qget also wait this long (default %(default)s)")
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


def message_for(op: str, key: str | None, result: Any, version: int | None = None) -> tuple[str, int]:
    """The seed's response text for a successful call (new operations: their own line, results in repr), and the exit status.

    `key` is what the operation acts on (a lock's or a queue's name for those); `version` is wait's.
    """
    if op == "wait":
        now = f"to {result!r}" if result is not None else "(deleted or expired)"
        return f"Changed key:{key} {now} (version {version})", EXIT_OK
    if op == "qget" and isinstance(result, list):
        items = ", ".join(map(repr, result))
        return f"Got {len(result)} item{'s' * (len(result) != 1)} from queue:{key}: {items}", EXIT_OK
    if op == "qget":
        return f"Got from queue:{key} value:{result!r}", EXIT_OK
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


def prepared(client: Operations, op: str, args: argparse.Namespace) -> Callable[[], Any]:
    """One run of a store operation (or unsafe_increment), its flags checked first."""
    return caller(client, op, operation_arguments(op, args))


Held = dict[str, Lock]
"""The locks an actor holds, by name: kept across the steps of a session, from its lock step to its unlock step."""
NEGATIVE_ERRORS = (KeyNotFound, LockTimeout, LockLost, WaitTimeout, QueueEmpty)
"""Errors that mean the operation found nothing to act on (exit status 1), not that something went wrong."""


def coordination_call(client: Operations, op: str, args: argparse.Namespace, held: Held | None) -> Callable[[], Any]:
    """One run of a coordination step, its flags checked first; wait's `--after current` is read here, before any barrier.

    `held` is the session's locks (None for a one-shot run, whose lock ends with its process).
    """
    _check_options(op, args)
    for parameter in ("key", "value"):
        if getattr(args, parameter, None) is not None and parameter not in COORDINATION_OPERATIONS[op]:
            named = next((f" (it has a name: --{name})" for name in ("lock", "queue") if name in COORDINATION_OPERATIONS[op]), "")
            raise ConfigError(f"--{parameter} does not apply to {op}{named}")
    for parameter in COORDINATION_OPERATIONS[op]:
        if parameter not in OPTIONAL_PARAMETERS and getattr(args, parameter, None) is None:
            raise ConfigError(f"{op} needs --{parameter}")
    if op in NOT_REPEATED and (getattr(args, "repeat", None) or 1) > 1:
        raise ConfigError(f"--repeat does not apply to {op}")
    if op == "lock":
        return partial(acquire, client, args.lock, args.lease or DEFAULT_LEASE, args.timeout, {} if held is None else held)
    if op == "unlock":
        if args.token is None and held is None:
            raise ConfigError(
                "unlock needs --token N: a one-shot process holds no lock (a lock taken by an earlier alice ended "
                "with it on kvmgr's server, or lasts its lease on Redis)"
            )
        return partial(release, client, args.lock, args.token, held or {})
    if op == "wait":
        if args.after == CURRENT:
            args.after = client.get_versioned(args.key)[1]
        return partial(client.wait, args.key, args.after, args.timeout)
    if op == "qput":
        return partial(client.queue_put, args.queue, args.value)
    return partial(take, client, args.queue, args.timeout, bool(args.until_empty))


def acquire(client: Operations, name: str, lease: float, timeout: float, held: Held) -> int:
    """Take lock `name` and keep its Lock in `held`; the fencing token. LockTimeout after timeout seconds."""
    if name in held:
        raise ConfigError(f"this actor already holds lock {name!r} (token {held[name].token}): unlock it first")
    lock = client.lock(name, lease)
    token = lock.acquire(timeout)
    held[name] = lock
    return token


def release(client: Operations, name: str, token: int | None, held: Held) -> bool:
    """Release lock `name`: the one held with `token` if given, else the one this actor holds. LockLost if it is not held."""
    if token is not None:
        held.pop(name, None)
        return client.lock_release(name, token)
    lock = held.pop(name, None)
    if lock is None:
        raise LockLost(f"lock {name!r} is not held by this actor: nothing was freed")
    lock.release()
    return True


def take(client: Operations, name: str, timeout: float, until_empty: bool) -> Any:
    """One item from the queue; with until_empty, the list of items taken until a get found none within timeout."""
    if not until_empty:
        return client.queue_get(name, timeout)
    items = []
    while True:
        try:
            items.append(client.queue_get(name, timeout))
        except QueueEmpty:
            return items


def subject_of(op: str, args: argparse.Namespace) -> str | None:
    """What the operation acts on, as its messages name it: the lock, the queue or the key."""
    if op in OPTION_OPERATIONS["lock"]:
        return cast("str | None", args.lock)
    if op in OPTION_OPERATIONS["queue"]:
        return cast("str | None", args.queue)
    return cast("str | None", args.key)


def negative_message(op: str, subject: str | None, args: argparse.Namespace, error: Exception) -> str:
    """The line for an operation that found nothing to act on (exit status 1)."""
    if isinstance(error, LockTimeout):
        return f"Not acquired lock:{subject} within {args.timeout:g}s"
    if isinstance(error, LockLost):
        return f"Not held lock:{subject} ({error})"
    if isinstance(error, WaitTimeout):
        return f"No change to key:{subject} after version {args.after} within {args.timeout:g}s"
    if isinstance(error, QueueEmpty) or (op == "qget" and args.until_empty):
        return f"Queue empty:{subject} (no item within {args.timeout:g}s)"
    return str(error)


def perform(client: Operations, name: str, args: argparse.Namespace, held: Held | None = None) -> tuple[dict[str, Any], int]:
    """Meet at the barrier if asked, run the operation (--repeat times); return the outcome and exit status.

    `held` carries the locks a session's actor holds from step to step (None: a one-shot run).
    """
    op = infer_operation(args)
    run = coordination_call(client, op, args, held) if op in COORDINATION_OPERATIONS else prepared(client, op, args)
    if args.barrier:
        client.rendezvous(args.barrier, args.parties)
    subject = subject_of(op, args)
    value = None if args.value is None else to_json(args.value)
    outcome: dict[str, Any] = {"client": name, "op": op, "key": args.key, "value": value, "start": time.monotonic_ns()}
    outcome.update({field: getattr(args, field) for field in ("lock", "queue", "after") if getattr(args, field, None) is not None})
    try:
        for _ in range(getattr(args, "repeat", None) or 1):
            result = run()
    except NEGATIVE_ERRORS as exc:
        message = negative_message(op, subject, args, exc)
        outcome.update(end=time.monotonic_ns(), status="error", error=type(exc).__name__, result=None, message=message)
        return outcome, EXIT_NEGATIVE
    outcome["end"] = time.monotonic_ns()
    if op == "wait":
        result, outcome["version"] = result
    message, status = message_for(op, subject, result, outcome.get("version"))
    if op == "qget" and result == []:  # --until-empty that found none
        message, status = negative_message(op, subject, args, QueueEmpty(subject or "")), EXIT_NEGATIVE
    outcome.update(status="ok", result=None if result is None else to_json(result), message=message)
    return outcome, status


@contextlib.contextmanager
def connected(name: str, args: argparse.Namespace) -> Iterator[Operations]:
    """A client for the actor, recording to --history when given."""
    with contextlib.ExitStack() as stack:
        history = stack.enter_context(history_writer(args.history)) if args.history else None
        yield stack.enter_context(
            connect(args.address, timeout=args.timeout, name=name, authkey_file=args.authkey_file, history=history)
        )


def run_session(name: str, args: argparse.Namespace) -> int:
    """--session: one connection, then one step per JSON line on stdin, one JSON outcome per line on stdout.

    A step is an object of the one-shot flags (op, key, value, expected, absent, pairs, by, ttl, repeat, barrier,
    parties, lock, lease, timeout, after, queue, until_empty), value and expected in JSON form (any value,
    $bytes/$tuple tagged). The driver keeps each actor alive this way for a whole scenario instead of starting a
    process per step; a lock taken in one step is held until the actor's unlock step (or the end of its input).
    """
    held: Held = {}
    with connected(name, args) as client:
        for line in sys.stdin:
            try:
                outcome, _ = perform(client, name, argparse.Namespace(**{**vars(args), **session_step(line)}), held)
            except KvmgrError as exc:
                outcome = _error_outcome(name, exc)
            print(json.dumps(outcome), flush=True)
        release_all(held)
    return EXIT_OK


def release_all(held: Held) -> None:
    """Release the locks a session still holds when its input ends (one already lost is skipped)."""
    for lock in held.values():
        with contextlib.suppress(KvmgrError):
            lock.release()
    held.clear()


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



def history_writer(path: Path) -> Any:
    """A HistoryWriter for --history (the history module is loaded only by an actor that records)."""
    from kvmgr.verify.history import HistoryWriter

    return HistoryWriter(path)


def alice() -> int:
    """The `alice` console script."""
    return main(name="alice")


def bob() -> int:
    """The `bob` console script."""
    return main(name="bob")


if __name__ == "__main__":
    raise SystemExit(main())
