"""Read the log of a Jepsen single-register test (as Porcupine's test data has them) into Operations.

A history line looks like `INFO  jepsen.util - 3	:invoke	:cas	[3 0]` (tabs or spaces; a timestamped
`... jepsen.util: 3 :ok :read 1` too): a process, `:invoke`, `:ok`, `:fail` or `:info`, and `:read`, `:write`
or `:cas` with its value. Other lines (and the nemesis's) are ignored. Each invocation is completed by the
next line of the same process. The operations are on one key, JEPSEN_KEY, made by client "p<process>"; line
numbers are the times:

- :read -> get (nil: absent); :write V -> store of "V" whose saved/updated answer is not recorded (null);
  :cas [A B] -> cas expecting "A" to write "B";
- :ok as recorded; a :fail cas did not swap (result false); a :fail read or write never happened (dropped);
- :info, or an invocation never completed: the outcome is unknown (status info); a read of unknown outcome,
  such as one that timed out, constrains nothing (dropped).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from kvmgr.errors import HistoryError
from kvmgr.verify.history import Operation

JEPSEN_KEY = "register"
"""The key every operation of a single-register test is on."""
_LINE = re.compile(r"\bjepsen\.util(?:\s+-|:)\s+(?P<process>\S+)\s+:(?P<type>invoke|ok|fail|info)\s+(?P<rest>.*?)\s*$")
_OPERATION = re.compile(r":(?P<f>\S+)\s+(?P<value>.*)")
_INTEGER = r"-?\d+"
_CAS = re.compile(rf"\[\s*({_INTEGER})\s*,?\s+({_INTEGER})\s*\]")
JEPSEN_OPS = {"read": "get", "write": "store", "cas": "cas"}


@dataclass(slots=True)
class _Invocation:
    """An operation invoked and not completed yet."""

    kind: str
    value: str | None
    expected: str | None
    start: int


def _integer(text: str, where: str) -> str:
    """A register value as an Operation holds it: the integer's decimal text."""
    if not re.fullmatch(_INTEGER, text):
        raise HistoryError(f"{where}: expected an integer (got {text!r})")
    return str(int(text))


def _read_value(text: str, where: str) -> str | None:
    """What a read returned: None for nil."""
    return None if text == "nil" else _integer(text, where)


def _invocation(f: str, value: str, line: int, where: str) -> _Invocation:
    """Parse what an :invoke line asks."""
    if f == "read":
        return _Invocation("get", None, None, line)
    if f == "write":
        return _Invocation("store", _integer(value, where), None, line)
    pair = _CAS.fullmatch(value)
    if pair is None:
        raise HistoryError(f"{where}: a cas takes [EXPECTED NEW] (got {value!r})")
    return _Invocation("cas", _integer(pair[2], where), _integer(pair[1], where), line)


def _completed(call: _Invocation, client: str, kind: str, value: str, line: int, where: str) -> Operation | None:
    """The Operation an invocation becomes on its completion line (None: it constrains nothing)."""
    status: str = "ok"
    result: object = None
    if kind == "info" or (kind == "fail" and call.kind != "cas"):
        if kind == "fail" or call.kind == "get":
            return None
        status = "info"
    elif call.kind == "get":
        result = _read_value(value, where)
    elif call.kind == "cas":
        result = kind == "ok"
    return _operation(call, client, status, result, None if status == "info" else line)


def _operation(call: _Invocation, client: str, status: str, result: object, end: int | None) -> Operation:
    """Build the Operation of a call."""
    return Operation(
        client=client, op=call.kind, key=JEPSEN_KEY, value=call.value, expected=call.expected,
        result=result, status=status, start=call.start, end=end,  # type: ignore[arg-type]
    )


class _Reader:
    """The invocations in flight, per process, while a log is read line by line."""

    def __init__(self, name: str) -> None:
        """Start with nothing in flight."""
        self.name = name
        self.open: dict[str, _Invocation] = {}
        self.ops: list[Operation] = []

    def line(self, number: int, text: str) -> None:
        """Take one line of the log."""
        head = _LINE.search(text)
        if head is None or not head["process"].isdigit():
            return  # not a history line, or the nemesis
        where = f"{self.name}:{number}"
        operation = _OPERATION.fullmatch(head["rest"])
        if operation is None or operation["f"] not in JEPSEN_OPS:
            raise HistoryError(f"{where}: expected :read, :write or :cas and a value (got {head['rest']!r})")
        process, kind, f, value = head["process"], head["type"], operation["f"], operation["value"].strip()
        if kind == "invoke":
            if process in self.open:
                raise HistoryError(f"{where}: process {process} invokes again before its last call completed")
            self.open[process] = _invocation(f, value, number, where)
            return
        call = self.open.pop(process, None)
        if call is None or call.kind != JEPSEN_OPS[f]:
            raise HistoryError(f"{where}: process {process} completes :{f} without invoking it")
        op = _completed(call, f"p{process}", kind, value, number, where)
        if op is not None:
            self.ops.append(op)

    def finish(self) -> list[Operation]:
        """The operations, with those never completed as unknown outcomes (reads dropped)."""
        for process, call in self.open.items():
            if call.kind != "get":
                self.ops.append(_operation(call, f"p{process}", "info", None, None))
        return self.ops


def read_jepsen(path: str | os.PathLike[str]) -> list[Operation]:
    """Read a Jepsen single-register log (HistoryError naming the file and line if malformed)."""
    name = os.fspath(path)
    reader = _Reader(name)
    try:
        with open(name, encoding="utf-8", errors="replace") as handle:
            for number, text in enumerate(handle, start=1):
                reader.line(number, text)
    except FileNotFoundError:
        raise HistoryError(f"{name}: no such history file") from None
    except OSError as exc:
        raise HistoryError(f"{name}: cannot read history ({exc.strerror or exc})") from None
    return reader.finish()
