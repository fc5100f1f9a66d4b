"""Recorded histories of key-value operations: one JSON object per line (JSON lines).

Values are written in the one JSON form of kvmgr.protocol.values (`to_json`/`from_json`): str, int, float,
bool, list and dict stay plain JSON, so other tools can write histories too; bytes are {"$bytes": "<hex>"},
tuples {"$tuple": [...]}, and a dict that looks like a tag (one member whose name starts with "$") is
escaped as {"$dict": {...}}. Per operation (the table's recorded_as):

    op               value                     result                                  also
    store            the value                 "saved", "updated" or null (not known)  ttl (seconds) if given
    get              null                      the value, or null when absent
    delete           null                      true or false
    cas              the value                 true or false                           expected (null: absent)
    incr, decr       the delta as given (by)   the new number
    add              the value                 true or false                           ttl (seconds) if given
    pop              null                      the removed value, or null when absent
    expire           null                      true or false                           ttl (required)
    persist          null                      true or false

"ttl" is written only when there is one; a key whose history holds one, or an expire or persist, is left
out of the linearizability check (expiry is outside the model, see kvmgr/verify/check.py).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, BinaryIO

from kvmgr.errors import HistoryError
from kvmgr.protocol.operations import EXPIRY_OPERATIONS, HISTORY_OPERATIONS
from kvmgr.protocol.values import Value, ValueRuleError, from_json, is_number, plain, to_json

OPS = HISTORY_OPERATIONS  # the per-key operations a history holds
STATUSES = ("ok", "fail", "info")
STORE_RESULTS = ("saved", "updated")
FIELDS = ("client", "op", "key", "expected", "value", "ttl", "result", "status", "start", "end")
REQUIRED_FIELDS = ("client", "op", "key", "value", "result", "status", "start", "end")
MAX_LINE_BYTES = 256 * 1024 * 1024
"""The longest history line read: two hex-encoded 64 MiB values and room to spare."""
WRITES_VALUE = ("store", "cas", "add")
"""Operations whose 'value' is a value they write."""
COUNTS = ("incr", "decr")
"""Operations whose 'value' is a delta (a number) and whose result is the new number."""
RETURNS_VALUE = ("get", "pop")
"""Operations whose result is a value (or null: the key was absent)."""
TAKES_TTL = ("store", "add", "expire")
"""Operations that may carry a ttl (expire must)."""
VALUE_RULE = "a value (str, int, float, bool, list, dict, or a tagged $bytes/$tuple/$dict form)"
NUMBER_RULE = "a number (an int or a finite float, not a bool)"

Result = Value | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    """One client call: what was asked, what came back, and when (monotonic ns); built with keywords only.

    A completed store whose `result` is None did not record whether it saved or updated (as with systems
    that do not report it): the checker does not constrain that answer. `value` is the value written
    (store, cas, add) or the delta (incr, decr); `ttl` the seconds a store or add was given to live, or
    expire's argument (None: none).
    """

    client: str
    op: str
    key: str
    value: Value | None
    expected: Value | None
    result: Result
    status: str
    start: int
    end: int | None
    ttl: float | None = None

    @property
    def uses_expiry(self) -> bool:
        """True for a store or add given a ttl, an expire and a persist: what the model leaves out."""
        return self.ttl is not None or self.op in EXPIRY_OPERATIONS


def encode_value(value: object) -> Value | None:
    """A value as an Operation records it, in plain form; None stays None (TypeError for anything that is no value)."""
    if value is None:
        return None
    try:
        return plain(value)
    except ValueRuleError as exc:
        raise TypeError(f"not a value: {exc}") from None


def value_to_json(value: Value | None) -> object:
    """A value as a history line holds it (kvmgr.protocol.values.to_json); None stays null."""
    return None if value is None else to_json(value)


def value_from_json(data: object, name: str, where: str) -> Value:
    """Decode field `name` holding a value (HistoryError naming file:line and the field if it is not one)."""
    try:
        return from_json(data)
    except ValueRuleError as exc:
        raise _fail(where, f"'{name}' is not {VALUE_RULE}: {exc} (got {_shown(data)})") from None
    except RecursionError:
        raise _fail(where, f"'{name}' is nested too deeply") from None


def operation_to_dict(op: Operation) -> dict[str, Any]:
    """Return the JSON object for an operation ('expected' only for cas, 'ttl' only when set), values encoded."""
    data = {name: getattr(op, name) for name in FIELDS}
    for name in ("value", "expected"):
        data[name] = value_to_json(data[name])
    if op.op in RETURNS_VALUE:
        data["result"] = value_to_json(op.result)
    if op.op != "cas":
        del data["expected"]
    if op.ttl is None:
        del data["ttl"]
    return data


def operation_to_json(op: Operation) -> str:
    """Return an operation as one line of JSON (no trailing newline)."""
    return json.dumps(operation_to_dict(op), allow_nan=False)


SHOWN_CHARS = 80


def _shown(value: object) -> str:
    """Render an offending value the way it appeared in the JSON, cut to SHOWN_CHARS."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


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


def _check_str(d: dict[str, Any], name: str, where: str) -> None:
    """Require field `name` to be a string."""
    if not isinstance(d[name], str):
        raise _fail(where, f"'{name}' must be a string (got {_shown(d[name])})")


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


def _decode_arguments(d: dict[str, Any], where: str) -> tuple[Value | None, Value | None]:
    """Check value and expected against the op; return them decoded."""
    op, value, expected = d["op"], None, None
    if op in WRITES_VALUE:
        value = value_from_json(d["value"], "value", where)
    elif op in COUNTS:
        value = _number(d["value"], "value", where)
    elif d["value"] is not None:
        raise _fail(where, f"'value' must be null for {op} (got {_shown(d['value'])})")
    if op == "cas":
        expected = None if d["expected"] is None else value_from_json(d["expected"], "expected", where)
    elif d.get("expected") is not None:
        raise _fail(where, f"'expected' is only for cas (got {_shown(d['expected'])} on {op})")
    return value, expected


def _number(data: object, name: str, where: str) -> int | float:
    """Require field `name` to hold a number: an int or a finite float, not a bool."""
    if not is_number(data) or not math.isfinite(data):  # type: ignore[arg-type]
        raise _fail(where, f"'{name}' must be {NUMBER_RULE} (got {_shown(data)})")
    return data  # type: ignore[return-value]


def _decode_ttl(d: dict[str, Any], where: str) -> float | None:
    """Check the ttl: seconds above 0 for store and add (or null), required for expire, absent otherwise."""
    op, ttl = d["op"], d.get("ttl")
    if ttl is None:
        if op == "expire":
            raise _fail(where, "missing field 'ttl' (required for expire)")
        return None
    if op not in TAKES_TTL:
        raise _fail(where, f"'ttl' is only for {', '.join(TAKES_TTL)} (got {_shown(ttl)} on {op})")
    if not is_number(ttl) or not 0 < ttl < math.inf:
        raise _fail(where, f"'ttl' must be a number of seconds above 0 (got {_shown(ttl)})")
    return float(ttl)


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


RESULT_RULES = {
    "store": '"saved", "updated" or null (not recorded)',
    "get": "a value or null",
    "pop": "a value or null",
    "incr": NUMBER_RULE,
    "decr": NUMBER_RULE,
}
"""What a completed operation's result must be; every other operation's is true or false."""


def _decode_result(d: dict[str, Any], where: str) -> Result:
    """Check the result against op and status (null for info, optional for fail); return it decoded."""
    op, status, result = d["op"], d["status"], d["result"]
    if status == "info":
        if result is not None:
            raise _fail(where, f"'result' must be null when status is info (got {_shown(result)})")
        return None
    if result is None and (status == "fail" or op in ("store", *RETURNS_VALUE)):
        return None
    if op in RETURNS_VALUE:
        return value_from_json(result, "result", where)
    if op in COUNTS:
        return _number(result, "result", where)
    if (op == "store" and not (isinstance(result, str) and result in STORE_RESULTS)) or (
        op != "store" and not isinstance(result, bool)
    ):
        raise _fail(where, f"'result' of {op} must be {RESULT_RULES.get(op, 'true or false')} (got {_shown(result)})")
    return result  # type: ignore[no-any-return]


def operation_from_dict(d: object, where: str) -> Operation:
    """Validate one decoded JSON object and build its Operation; `where` is 'file:line'."""
    if not isinstance(d, dict):
        raise _fail(where, f"expected a JSON object (got {_shown(d)})")
    _check_fields(d, where)
    _check_identity(d, where)
    value, expected = _decode_arguments(d, where)
    ttl = _decode_ttl(d, where)
    _check_times(d, where)
    return Operation(
        client=d["client"], op=d["op"], key=d["key"], value=value, expected=expected,
        result=_decode_result(d, where), status=d["status"], start=d["start"], end=d["end"], ttl=ttl,
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
    except RecursionError:
        raise _fail(where, "invalid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise _fail(where, f"invalid JSON: {exc}") from None
    return operation_from_dict(data, where)


def _lines(handle: BinaryIO, name: str) -> Iterator[tuple[int, bytes]]:
    """Yield (number, line) from a binary file, refusing a line over MAX_LINE_BYTES."""
    for number in itertools.count(1):
        raw = handle.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES:
            raise HistoryError(f"{name}:{number}: line longer than {MAX_LINE_BYTES} bytes")
        yield number, raw


def read_history(path: str | os.PathLike[str]) -> list[Operation]:
    """Read and validate a JSON-lines history; blank lines are skipped."""
    name = os.fspath(path)
    ops = []
    try:
        with open(name, "rb") as handle:
            for number, raw in _lines(handle, name):
                op = _parse_line(raw, f"{name}:{number}")
                if op is not None:
                    ops.append(op)
    except FileNotFoundError:
        raise HistoryError(f"{name}: no such history file") from None
    except OSError as exc:
        raise HistoryError(f"{name}: cannot read history ({exc.strerror or exc})") from None
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
        line = json.dumps(data, allow_nan=False)
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
