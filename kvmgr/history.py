"""Recorded histories of key-value operations: one JSON object per line (JSON lines)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from kvmgr.errors import HistoryError

OPS = ("store", "get", "delete", "cas")
STATUSES = ("ok", "fail", "info")
STORE_RESULTS = ("saved", "updated")
HEX_PREFIX = "hex:"
FIELDS = ("client", "op", "key", "expected", "value", "result", "status", "start", "end")
REQUIRED_FIELDS = ("client", "op", "key", "value", "result", "status", "start", "end")

Result = str | bool | None


@dataclass(frozen=True, slots=True)
class Operation:
    """One client call: what was asked, what came back, and when (monotonic ns)."""

    client: str
    op: str
    key: str
    value: str | None
    expected: str | None
    result: Result
    status: str
    start: int
    end: int | None


def encode_value(value: str | bytes | None) -> str | None:
    """Return a value as recorded in a history: str unchanged, bytes as 'hex:' + hex."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return HEX_PREFIX + bytes(value).hex()
    raise TypeError(f"a value must be str, bytes or None (got {type(value).__name__})")


def operation_to_dict(op: Operation) -> dict[str, Any]:
    """Return the JSON object for an operation ('expected' only for cas)."""
    data = {name: getattr(op, name) for name in FIELDS}
    if op.op != "cas":
        del data["expected"]
    return data


def operation_to_json(op: Operation) -> str:
    """Return an operation as one line of JSON (no trailing newline)."""
    return json.dumps(operation_to_dict(op))


def _shown(value: object) -> str:
    """Render an offending value the way it appeared in the JSON."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _fail(where: str, message: str) -> HistoryError:
    """Build a HistoryError that starts with the file:line it is about."""
    return HistoryError(f"{where}: {message}")


def _check_fields(d: dict[str, Any], where: str) -> None:
    """Reject missing and unknown fields."""
    for name in REQUIRED_FIELDS:
        if name not in d:
            raise _fail(where, f"missing field '{name}'")
    if d["op"] == "cas" and "expected" not in d:
        raise _fail(where, "missing field 'expected' (required for cas)")
    for name in d:
        if name not in FIELDS:
            raise _fail(where, f"unknown field {_shown(name)}")


def _check_str(d: dict[str, Any], name: str, where: str, nullable: bool = False) -> None:
    """Require field `name` to be a string (or null when nullable)."""
    value = d.get(name)
    if value is None and nullable:
        return
    if not isinstance(value, str):
        kind = "a string or null" if nullable else "a string"
        raise _fail(where, f"'{name}' must be {kind} (got {_shown(value)})")


def _check_choice(d: dict[str, Any], name: str, choices: tuple[str, ...], where: str) -> None:
    """Require field `name` to be one of `choices`."""
    if d[name] not in choices or not isinstance(d[name], str):
        raise _fail(where, f"'{name}' must be one of {', '.join(choices)} (got {_shown(d[name])})")


def _check_int(d: dict[str, Any], name: str, where: str) -> None:
    """Require field `name` to be an integer (JSON booleans are not)."""
    value = d[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"'{name}' must be an integer (got {_shown(value)})")


def _check_identity(d: dict[str, Any], where: str) -> None:
    """Check client, op, key and status."""
    for name in ("client", "key"):
        _check_str(d, name, where)
        if not d[name]:
            raise _fail(where, f"'{name}' must not be empty")
    _check_choice(d, "op", OPS, where)
    _check_choice(d, "status", STATUSES, where)


def _check_arguments(d: dict[str, Any], where: str) -> None:
    """Check value and expected against the op."""
    op = d["op"]
    if op in ("store", "cas"):
        _check_str(d, "value", where)
    elif d["value"] is not None:
        raise _fail(where, f"'value' must be null for {op} (got {_shown(d['value'])})")
    if op == "cas":
        _check_str(d, "expected", where, nullable=True)
    elif d.get("expected") is not None:
        raise _fail(where, f"'expected' is only for cas (got {_shown(d['expected'])} on {op})")


def _check_times(d: dict[str, Any], where: str) -> None:
    """Check start and end: end >= start when known, end null for info."""
    _check_int(d, "start", where)
    if d["status"] == "info":
        if d["end"] is not None:
            raise _fail(where, f"'end' must be null when status is info (got {_shown(d['end'])})")
        return
    _check_int(d, "end", where)
    if d["end"] < d["start"]:
        raise _fail(where, f"'end' ({d['end']}) is before 'start' ({d['start']})")


def _result_ok(op: str, result: object) -> bool:
    """Tell whether `result` has the right type and value for a completed `op`."""
    if op == "store":
        return result in STORE_RESULTS and isinstance(result, str)
    if op == "get":
        return result is None or isinstance(result, str)
    return isinstance(result, bool)


RESULT_RULES = {
    "store": '"saved" or "updated"',
    "get": "a string or null",
    "delete": "true or false",
    "cas": "true or false",
}


def _check_result(d: dict[str, Any], where: str) -> None:
    """Check the result against op and status (null for info, optional for fail)."""
    op, status, result = d["op"], d["status"], d["result"]
    if status == "info":
        if result is not None:
            raise _fail(where, f"'result' must be null when status is info (got {_shown(result)})")
        return
    if status == "fail" and result is None:
        return
    if not _result_ok(op, result):
        raise _fail(where, f"'result' of {op} must be {RESULT_RULES[op]} (got {_shown(result)})")


def operation_from_dict(d: object, where: str) -> Operation:
    """Validate one decoded JSON object and build its Operation; `where` is 'file:line'."""
    if not isinstance(d, dict):
        raise _fail(where, f"expected a JSON object (got {_shown(d)})")
    _check_fields(d, where)
    _check_identity(d, where)
    _check_arguments(d, where)
    _check_times(d, where)
    _check_result(d, where)
    return Operation(
        client=d["client"], op=d["op"], key=d["key"], value=d["value"],
        expected=d.get("expected"), result=d["result"], status=d["status"],
        start=d["start"], end=d["end"],
    )


def _parse_line(raw: bytes, where: str) -> Operation | None:
    """Decode and validate one line; None for a blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(where, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(where, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    return operation_from_dict(data, where)


def read_history(path: str | os.PathLike[str]) -> list[Operation]:
    """Read and validate a JSON-lines history; blank lines are skipped."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            lines = handle.read().split(b"\n")
    except FileNotFoundError:
        raise HistoryError(f"{name}: no such history file") from None
    except OSError as exc:
        raise HistoryError(f"{name}: cannot read history ({exc.strerror or exc})") from None
    ops = []
    for number, raw in enumerate(lines, start=1):
        op = _parse_line(raw, f"{name}:{number}")
        if op is not None:
            ops.append(op)
    return ops


class HistoryWriter:
    """Append operations to a history file, one flushed line each; safe across threads."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open `path` for appending (created if missing)."""
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        try:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open until close()
        except OSError as exc:
            raise HistoryError(f"cannot write history file {self.path}: {exc.strerror}") from None

    def record(self, op: Operation) -> None:
        """Validate `op`, then write it as one line and flush."""
        data = operation_to_dict(op)
        operation_from_dict(data, f"{self.path} (record)")
        line = json.dumps(data)
        with self._lock:
            if self._file.closed:
                raise HistoryError(f"{self.path}: history writer is closed")
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        """Close the file; closing twice is harmless."""
        with self._lock:
            self._file.close()

    def __enter__(self) -> HistoryWriter:
        """Return self, to be closed on leaving the with-block."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the file."""
        self.close()


def merge_histories(
    paths: Iterable[str | os.PathLike[str]], out_path: str | os.PathLike[str]
) -> int:
    """Validate several histories and write them as one, ordered by start; return the count."""
    ops = [op for path in paths for op in read_history(path)]
    ops.sort(key=lambda op: op.start)
    with open(out_path, "w", encoding="utf-8") as handle:
        for op in ops:
            handle.write(operation_to_json(op) + "\n")
    return len(ops)
