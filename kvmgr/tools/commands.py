"""One-shot commands against a running server: kvmgr get, set, del, keys, incr, and dump/load for backups.

Each takes the same --address/--target, --authkey-file and --timeout flags as every command that talks to a
server (an address may be a redis:// URL), and --json. Plain output shows a value with repr(), so its type is
visible ('1' is a str, 1 an int, b'1' bytes); --json prints the JSON form of kvmgr.protocol.values.

Exit status: 0 success, 1 the key was not found (get, del) or stdout closed early (`kvmgr dump | head`),
2 usage error or bad input (a malformed VALUE or dump file, incr on a value that is not a number), 3 the server
could not be reached or refused the authkey.

The dump file (`kvmgr dump > FILE.jsonl`, read back by `kvmgr load FILE.jsonl`) is JSON lines, one object per
key, in key order: {"key": "k", "value": <the value's JSON form>} plus "ttl": <seconds left> when the key
expires. The JSON form keeps every type (bytes as {"$bytes": hex}, tuples as {"$tuple": [...]}), so a dump
loaded into either backend gives back the same values; a ttl restarts from the load. A dump is not a snapshot:
each key is read on its own, so quiesce writers for an exact copy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvmgr.errors import EXIT_NEGATIVE, EXIT_OK, EXIT_USAGE, ConfigError, InvalidKey, InvalidValue, KeyNotFound, WrongType
from kvmgr.tools.arguments import add_server_arguments, number, seconds_to_live

if TYPE_CHECKING:
    from kvmgr.client.operations import Operations
    from kvmgr.protocol.values import Value

Body = Callable[[argparse.Namespace, "Operations"], int]
BATCH = 1000
"""Keys read (dump) or written (load) per pipeline."""
DUMP_FIELDS = frozenset({"key", "value", "ttl"})


def connect_from(args: argparse.Namespace, name: str = "kvmgr-cli") -> Operations:
    """A client of the server the command's --address/--target, --authkey-file and --timeout name."""
    from kvmgr.client import connect

    return connect(args.address, timeout=args.timeout, name=name, authkey_file=args.authkey_file)


def fail(args: argparse.Namespace, message: str, status: int) -> int:
    """Print `kvmgr COMMAND: error: message` on stderr and return status."""
    print(f"kvmgr {args.command}: error: {message}", file=sys.stderr, flush=True)
    return status


def with_client(body: Body) -> Callable[[argparse.Namespace], int]:
    """A handler that connects, runs body, and turns a missing key into exit 1 and a wrong type into exit 2."""

    def handler(args: argparse.Namespace) -> int:
        try:
            with connect_from(args) as client:
                return body(args, client)
        except KeyNotFound as exc:
            if args.debug:
                raise
            return fail(args, f"key not found: {exc.key}", EXIT_NEGATIVE)
        except WrongType as exc:
            if args.debug:
                raise
            return fail(args, str(exc), EXIT_USAGE)
        except BrokenPipeError:  # the reader went away (`kvmgr dump | head`): stop quietly, as the stdlib's recipe does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_NEGATIVE

    return handler


def shown(value: Any, as_json: bool) -> str:
    """A value as a command prints it: repr() (types visible), or its JSON form."""
    from kvmgr.protocol.values import to_json

    return json.dumps(to_json(value)) if as_json else repr(value)


def json_value(text: str, what: str = "VALUE") -> Value:
    """The value a JSON form stands for (numbers, lists, dicts, {"$bytes": hex}, ...); ConfigError if it is none."""
    from kvmgr.protocol.values import from_json

    try:
        return from_json(json.loads(text))
    except ValueError as exc:  # json.JSONDecodeError and ValueRuleError both
        kind = "not JSON" if isinstance(exc, json.JSONDecodeError) else "not a kvmgr value"
        raise ConfigError(f"{what} is {kind}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{what} nests too deeply") from None


# --- get, set, del, keys, incr ---


def command_get(args: argparse.Namespace, client: Operations) -> int:
    """kvmgr get KEY: print the value."""
    print(shown(client.get(args.key), args.json))
    return EXIT_OK


def command_set(args: argparse.Namespace, client: Operations) -> int:
    """kvmgr set KEY VALUE [--ttl S]: store; print saved (new key) or updated."""
    value = args.parsed_value
    result = client.store(args.key, value, args.ttl)
    print(json.dumps(result) if args.json else result)
    return EXIT_OK


def command_del(args: argparse.Namespace, client: Operations) -> int:
    """kvmgr del KEY: remove the key; exit 1 if it was absent."""
    if not client.delete(args.key):
        raise KeyNotFound(args.key)
    print("true" if args.json else "deleted")
    return EXIT_OK


def command_keys(args: argparse.Namespace, client: Operations) -> int:
    """kvmgr keys [--prefix P]: the keys in sorted order, one a line (or a JSON list)."""
    keys = client.iter_keys(args.prefix)
    if args.json:
        print(json.dumps(list(keys)))
    else:
        for key in keys:
            print(key)
    return EXIT_OK


def command_incr(args: argparse.Namespace, client: Operations) -> int:
    """kvmgr incr KEY [BY]: add BY (default 1) to the number at KEY; print the new number."""
    print(shown(client.incr(args.key, args.by), args.json))
    return EXIT_OK


def parse_set_value(args: argparse.Namespace) -> int:
    """Check set's VALUE before connecting, then run the command."""
    args.parsed_value = json_value(args.value) if args.json else args.value
    return with_client(command_set)(args)


# --- dump and load ---


@dataclass(kw_only=True, frozen=True)
class DumpEntry:
    """One line of a dump file: a key, its value, the seconds it had left (None: no expiry), and where it was read."""

    key: str
    value: Value
    ttl: float | None
    line: int = 0


def dump_line(key: str, value: Value, ttl: float | None) -> str:
    """The dump file's line for one key (ASCII: non-ASCII text is escaped, so any str survives)."""
    from kvmgr.protocol.values import to_json

    record: dict[str, Any] = {"key": key, "value": to_json(value)}
    if ttl is not None:
        record["ttl"] = ttl
    return json.dumps(record)


def batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """Consecutive lists of at most size items."""
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def dump_entries(client: Operations, prefix: str | None) -> Iterator[DumpEntry]:
    """Every key (starting with prefix) with its value and ttl, read BATCH keys per pipeline; keys gone meanwhile are left out."""
    for keys in batches(client.iter_keys(prefix), BATCH):
        answers = client.pipeline([call for key in keys for call in (("get", key), ("ttl", key))], raise_on_error=False)
        for key, value, ttl in zip(keys, answers[0::2], answers[1::2], strict=True):
            if isinstance(value, KeyNotFound) or isinstance(ttl, KeyNotFound):
                continue  # deleted or expired since it was listed
            for answer in (value, ttl):
                if isinstance(answer, Exception):
                    raise answer
            yield DumpEntry(key=key, value=value, ttl=ttl)


def command_dump(args: argparse.Namespace, client: Operations) -> int:
    """kvmgr dump [--prefix P]: every key as a line of the dump file, on stdout; a count on stderr."""
    count = expiring = 0
    for entry in dump_entries(client, args.prefix):
        sys.stdout.write(dump_line(entry.key, entry.value, entry.ttl) + "\n")
        count += 1
        expiring += entry.ttl is not None
    sys.stdout.flush()
    print(f"kvmgr dump: {count} {plural(count, 'key')} ({expiring} with a ttl)", file=sys.stderr)
    return EXIT_OK


def plural(count: int, word: str) -> str:
    """word, with an s unless count is 1."""
    return word if count == 1 else word + "s"


def parse_dump_line(text: str) -> DumpEntry:
    """One dump file line as an entry; ConfigError saying what is wrong with it."""
    from kvmgr.protocol.values import ValueRuleError, from_json

    try:
        record = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"not JSON: {exc}") from None
    if not isinstance(record, dict) or not {"key", "value"} <= record.keys() or not record.keys() <= DUMP_FIELDS:
        raise ConfigError('expected an object with "key", "value" and optionally "ttl"')
    key, ttl = record["key"], record.get("ttl")
    if not isinstance(key, str) or not key:
        raise ConfigError('"key" must be a non-empty string')
    if ttl is not None and (type(ttl) not in (int, float) or not 0 < ttl < float("inf")):
        raise ConfigError(f'"ttl" must be a number of seconds above 0, not {ttl!r}')
    try:
        value = from_json(record["value"])
    except (ValueRuleError, RecursionError) as exc:
        raise ConfigError(f'"value" is not a kvmgr value: {exc}') from None
    return DumpEntry(key=key, value=value, ttl=ttl)


def read_dump(path: str) -> list[DumpEntry]:
    """Every entry of a dump file ('-': stdin), checked before anything is loaded; ConfigError naming FILE:LINE."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    entries: list[DumpEntry] = []
    seen: dict[str, int] = {}
    for number_, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            entry = parse_dump_line(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"{path}:{number_}: not UTF-8") from None
        except ConfigError as exc:
            raise ConfigError(f"{path}:{number_}: {exc}") from None
        if entry.key in seen:
            raise ConfigError(f"{path}:{number_}: key {entry.key!r} is also on line {seen[entry.key]}")
        seen[entry.key] = number_
        entries.append(DumpEntry(key=entry.key, value=entry.value, ttl=entry.ttl, line=number_))
    return entries


def load_entries(client: Operations, entries: list[DumpEntry], path: str) -> None:
    """Store every entry (with its ttl), BATCH per pipeline; ConfigError naming FILE:LINE if the server refuses one."""
    for start in range(0, len(entries), BATCH):
        batch = entries[start:start + BATCH]
        calls = [("store", e.key, e.value) if e.ttl is None else ("store", e.key, e.value, e.ttl) for e in batch]
        for done, (entry, answer) in enumerate(zip(batch, client.pipeline(calls, raise_on_error=False), strict=True)):
            if isinstance(answer, InvalidKey | InvalidValue):
                loaded = start + done
                raise ConfigError(f"{path}:{entry.line}: refused: {answer} ({loaded} {plural(loaded, 'key')} before it loaded)")
            if isinstance(answer, Exception):
                raise answer


def command_load(args: argparse.Namespace) -> int:
    """kvmgr load FILE: check the whole file, then store every key in it (overwriting), with its ttl."""
    entries = read_dump(args.file)
    with connect_from(args) as client:
        load_entries(client, entries, args.file)
    expiring = sum(entry.ttl is not None for entry in entries)
    if args.json:
        print(json.dumps({"loaded": len(entries), "expiring": expiring}))
    else:
        print(f"loaded {len(entries)} {plural(len(entries), 'key')} ({expiring} with a ttl) from {args.file}")
    return EXIT_OK


# --- the parsers ---


def one_shot_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    """A subcommand parser with the server flags and --json."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help_text, description=description,
        epilog="Exit status: 0 success, 1 key not found, 2 usage error or bad input, 3 server unreachable or authkey refused.",
    )
    add_server_arguments(parser)
    return parser


def add_json_flag(parser: argparse.ArgumentParser, text: str = "print the result in JSON form (bytes as {\"$bytes\": hex}, ...)") -> None:
    """--json, with what it does for this command."""
    parser.add_argument("--json", action="store_true", help=text)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register get, set, del, keys, incr, dump and load."""
    parser = one_shot_parser(subparsers, "get", "print a key's value", "Print KEY's value, with repr() (its type visible).")
    parser.add_argument("key", metavar="KEY")
    add_json_flag(parser)
    parser.set_defaults(handler=with_client(command_get))

    parser = one_shot_parser(subparsers, "set", "store a value", "Store VALUE at KEY (without --ttl, clearing any expiry); "
                             "print saved (a new key) or updated.")
    parser.add_argument("key", metavar="KEY")
    parser.add_argument(
        "value", metavar="VALUE", help='a str; with --json, a JSON value: 3, 1.5, true, [1, 2], {"a": 1}, {"$bytes": "00ff"}',
    )
    parser.add_argument("--ttl", type=seconds_to_live, metavar="SECONDS", help="expire the key after this many seconds")
    add_json_flag(parser, "parse VALUE as JSON (the JSON form: numbers, lists, dicts, tagged bytes and tuples) and print JSON")
    parser.set_defaults(handler=parse_set_value)

    parser = one_shot_parser(subparsers, "del", "delete a key", "Delete KEY; exit 1 if it was absent.")
    parser.add_argument("key", metavar="KEY")
    add_json_flag(parser, "print true when deleted")
    parser.set_defaults(handler=with_client(command_del))

    parser = one_shot_parser(subparsers, "keys", "list keys", "List the keys (those starting with --prefix), sorted, one a line.")
    parser.add_argument("--prefix", help="only keys starting with this")
    add_json_flag(parser, "print one JSON list")
    parser.set_defaults(handler=with_client(command_keys))

    parser = one_shot_parser(subparsers, "incr", "add to a number", "Add BY (default 1) to the int or float at KEY in one atomic "
                             "step (an absent key counts as 0); print the new number.")
    parser.add_argument("key", metavar="KEY")
    parser.add_argument("by", metavar="BY", type=number, nargs="?", default=1, help="an int or a finite float, may be negative")
    add_json_flag(parser)
    parser.set_defaults(handler=with_client(command_incr))
    add_dump_load(subparsers)


def add_dump_load(subparsers: argparse._SubParsersAction) -> None:
    """Register dump and load."""
    parser = one_shot_parser(subparsers, "dump", "write every key to stdout as JSON lines",
                             "Write every key (starting with --prefix) to stdout, one JSON object a line: "
                             '{"key": K, "value": V} plus "ttl": SECONDS when it expires. Values are in the JSON form, '
                             "so every type survives; `kvmgr load` reads the file back into either backend.")
    parser.add_argument("--prefix", help="only keys starting with this")
    parser.set_defaults(handler=with_client(command_dump))

    parser = one_shot_parser(subparsers, "load", "store every key of a dump file",
                             "Check FILE (written by `kvmgr dump`) whole, then store every key in it, overwriting, "
                             "each with the ttl it had left. A malformed line stops the load before anything is stored, "
                             "with FILE:LINE and what is wrong.")
    parser.add_argument("file", metavar="FILE", help="the dump file; - reads stdin")
    add_json_flag(parser, 'print {"loaded": N, "expiring": M}')
    parser.set_defaults(handler=command_load)
