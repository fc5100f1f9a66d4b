"""kvmgr info: what a server is doing (uptime, keys, clients, operations per second, ...), once or redrawn every N seconds.

The fields are those of the server's `info` operation (README lists them); --json prints them as they come.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from kvmgr.errors import EXIT_OK, OutcomeUnknown, ServerUnavailable
from kvmgr.tools.arguments import add_server_arguments, positive_float

if TYPE_CHECKING:
    from kvmgr.client.operations import Operations

PER_OPERATION = ("operations", "errors")
"""Fields that count per operation: shown together as one table."""
CLEAR_SCREEN = "\x1b[H\x1b[2J"
UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def fetch_info(client: Operations) -> dict[str, Any]:
    """The server's info dict (UnknownOperation from a server that predates it)."""
    return client.info()


def duration(seconds: float) -> str:
    """Seconds as 1d 2h 3m 4s (the larger units only when needed)."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if days or hours else []
    parts += [f"{minutes}m"] if days or hours or minutes else []
    return " ".join([*parts, f"{secs}s"])


def byte_size(count: int) -> str:
    """A byte count as the largest unit that keeps it at 1 or more (45.6 MiB)."""
    size = float(count)
    for unit in UNITS:
        if size < 1024 or unit == UNITS[-1]:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def cell(field: str, value: Any) -> str:
    """A field's value as the table shows it."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if field == "uptime_seconds" and isinstance(value, int | float):
        return f"{value:,.1f} ({duration(value)})"
    if field.endswith("_bytes") and isinstance(value, int):
        return f"{value:,} ({byte_size(value)})"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{key} {cell(key, item)}" for key, item in value.items()) or "-"
    return str(value)


def operation_rows(info: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(operation, count, errors) for every operation counted in either field, by name."""
    counts, errors = info.get("operations") or {}, info.get("errors") or {}
    return [(name, cell(name, counts.get(name, 0)), cell(name, errors.get(name, 0))) for name in sorted({*counts, *errors})]


def render(info: dict[str, Any]) -> str:
    """The info as a table of fields, then one of operations with their counts and errors."""
    from tabulate import tabulate

    fields = [(field, cell(field, value)) for field, value in info.items() if field not in PER_OPERATION]
    text = tabulate(fields, tablefmt="plain")
    rows = operation_rows(info)
    if rows:
        text += "\n\n" + tabulate(rows, headers=["operation", "count", "errors"], tablefmt="simple", colalign=("left", "right", "right"))
    return text


def show(info: dict[str, Any], as_json: bool) -> str:
    """The info as printed: JSON, or the table."""
    return json.dumps(info, sort_keys=False) if as_json else render(info)


def watch(args: argparse.Namespace, client: Operations) -> int:
    """Redraw every --watch seconds until Ctrl-C (exit 0); a server that stops answering is one line until it is back."""
    redraw = CLEAR_SCREEN if sys.stdout.isatty() and not args.json else ""
    try:
        while True:
            try:
                body = show(fetch_info(client), args.json)
            except (ServerUnavailable, OutcomeUnknown) as exc:
                unreachable = f"kvmgr info: server unreachable: {exc} (trying again every {args.watch:g}s)"
                if args.json:  # stdout stays one JSON object a line
                    print(unreachable, file=sys.stderr, flush=True)
                    time.sleep(args.watch)
                    continue
                body = unreachable
            stamp = "" if args.json else time.strftime("%Y-%m-%d %H:%M:%S  ") + f"every {args.watch:g}s, Ctrl-C stops\n"
            print(f"{redraw}{stamp}{body}", end="\n" if redraw or args.json else "\n\n", flush=True)
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return EXIT_OK


def command_info(args: argparse.Namespace) -> int:
    """Run `kvmgr info`."""
    from kvmgr.tools.commands import connect_from

    with connect_from(args, name="kvmgr-info") as client:
        if args.watch is not None:
            return watch(args, client)
        print(show(fetch_info(client), args.json))
    return EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `kvmgr info`."""
    parser = subparsers.add_parser(
        "info", help="what a server is doing", description=__doc__.split("\n\n", 1)[0],
        epilog="Exit status: 0 success (and on Ctrl-C with --watch), 2 usage error, 3 server unreachable or authkey refused.",
    )
    add_server_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the fields as one JSON object (with --watch: one a line)")
    parser.add_argument("--watch", type=positive_float, metavar="SECONDS", help="redraw every SECONDS until Ctrl-C")
    parser.set_defaults(handler=command_info)
