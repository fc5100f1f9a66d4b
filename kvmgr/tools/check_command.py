"""`kvmgr check FILE [FILE ...]`: is each recorded history linearizable?

Each file is read (a kvmgr JSON-lines history, or with --format jepsen the log of a Jepsen single-register
test) and checked on its own, with its own --timeout. Each is reported as it is done: the verdict block of
`describe`, prefixed by the file's name when there are several; with --json, one list of objects at the end.
A file that cannot be read or is malformed is reported as one line on stderr and the others are still
checked. A key whose history uses expiry (a store or add with a ttl, an expire, a persist) is left out of the
check and named, with why, after the verdict ("skipped_keys" in --json). Exit status: 2 if any file was
unreadable or malformed, else 1 if any is not linearizable, else 3 if any is unknown (its time limit came
first), else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from kvmgr.errors import EXIT_NEGATIVE, EXIT_OK, EXIT_UNKNOWN, EXIT_USAGE, HistoryError
from kvmgr.tools.arguments import positive_float
from kvmgr.verify.check import CheckProgress, CheckResult, check_operations, describe
from kvmgr.verify.history import Operation, read_history
from kvmgr.verify.jepsen import read_jepsen

READERS: dict[str, Callable[[str | os.PathLike[str]], list[Operation]]] = {"kvmgr": read_history, "jepsen": read_jepsen}
"""The history formats --format reads."""
DEFAULT_INITIAL = {"kvmgr": "unknown", "jepsen": "empty"}
"""--initial when not given: a kvmgr history may start on a store that held data; a Jepsen register starts empty."""
EXIT_BY_VERDICT = {True: EXIT_OK, False: EXIT_NEGATIVE, None: EXIT_UNKNOWN}
SEVERITY = (EXIT_USAGE, EXIT_NEGATIVE, EXIT_UNKNOWN, EXIT_OK)
"""Several files: the exit status is the first of these that some file has."""


def _result_json(path: Path, result: CheckResult | None, error: str = "") -> dict[str, object]:
    """One file's report for --json (an unreadable or malformed file has outcome 'error')."""
    if result is None:
        return {"file": str(path), "outcome": "error", "linearizable": None, "detail": error}
    return {
        "file": str(path), "outcome": result.outcome, "linearizable": result.linearizable, "operations": result.operation_count,
        "keys": result.checked_keys, "key": result.key, "detail": result.detail or describe(result),
        "skipped_keys": result.skipped_keys,
    }


def _check_one(path: Path, args: argparse.Namespace, label: str) -> CheckResult:
    """Read and check one file, with progress on stderr, and write its page if --html (HistoryError if unreadable or
    malformed, or if the page cannot be written)."""

    def show(progress: CheckProgress) -> None:
        print(label + progress.line(), file=sys.stderr, flush=True)

    ops = READERS[args.format](path)
    result = check_operations(ops, args.initial or DEFAULT_INITIAL[args.format], args.timeout, show, orders=args.html is not None)
    if args.html is not None:
        from kvmgr.verify.html import write_history_page  # only for --html: the CLI starts without it

        write_history_page(args.html, ops, result, title=f"kvmgr check {path}")
        print(f"kvmgr check: wrote {args.html}", file=sys.stderr, flush=True)
    return result


def command_check(args: argparse.Namespace) -> int:
    """Check each history file in turn; report each; exit with the most severe status."""
    if args.html is not None and len(args.histories) > 1:
        args.parser.error(f"--html writes the page of one history (got {len(args.histories)} files)")
    statuses, reports = [], []
    for path in args.histories:
        label = f"{path}: " if len(args.histories) > 1 else ""
        try:
            result = _check_one(path, args, label)
        except HistoryError as exc:
            print(f"kvmgr check: error: {exc}", file=sys.stderr, flush=True)
            statuses.append(EXIT_USAGE)
            reports.append(_result_json(path, None, str(exc)))
            continue
        statuses.append(EXIT_BY_VERDICT[result.linearizable])
        reports.append(_result_json(path, result))
        if not args.json:
            print(label + describe(result), flush=True)
    if args.json:
        print(json.dumps(reports))
    return next(status for status in SEVERITY if status in statuses)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `kvmgr check`."""
    parser = subparsers.add_parser(
        "check", help="are recorded histories linearizable?",
        description="Check histories of store/get/delete/cas/incr/decr/add/pop operations for linearizability, key by key: "
        "kvmgr's JSON lines, or the logs of Jepsen single-register tests. Keys whose history uses expiry are left out and named.",
        epilog="Exit status: 0 every file linearizable, 1 some file not (its first offending key and operations are printed), "
        "2 some file unreadable or malformed (reported, the others still checked), 3 some file unknown (its time limit came first).",
    )
    parser.add_argument("histories", type=Path, nargs="+", metavar="FILE", help="a history file; several are checked one by one")
    parser.add_argument(
        "--format", choices=tuple(READERS), default="kvmgr",
        help="kvmgr: JSON lines as --history writes them (the default); jepsen: the log of a Jepsen single-register test "
        "(lines like 'INFO  jepsen.util - 3 :invoke :cas [3 0]')",
    )
    parser.add_argument(
        "--initial", choices=("empty", "unknown"),
        help="what every key held before the history: nothing (empty), or anything at all (unknown: right for a store that "
        "already held data); default unknown, and empty for --format jepsen",
    )
    parser.add_argument(
        "--timeout", type=positive_float, metavar="SECONDS",
        help="give up on a file after this long and answer unknown for it (default: no limit)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON list, an object per file, instead of the verdicts")
    parser.add_argument(
        "--html", type=Path, metavar="PAGE.html",
        help="also write the history as one self-contained HTML page: a lane per client, the order found and each "
        "operation's linearization point, or for a failure the longest prefix ordered and the operations that cannot be "
        "placed (one history file only)",
    )
    parser.set_defaults(handler=command_check, parser=parser)
