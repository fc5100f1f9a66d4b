"""A history as one self-contained HTML page, in the manner of Porcupine's visualizer.

One lane per client, each operation a bar from its call to its return; for every key checked, the order the
checker found and each operation's linearization point (a mark on its bar); for a history that is not
linearizable, the longest prefix the checker could order on the offending key and the operations that cannot be
placed, highlighted. Zoom, pan, and a filter by key and by client keep 10,000 operations usable. The page carries
its style, script and data inline and fetches nothing (its Content-Security-Policy forbids it).

The page is made from a CheckResult computed with orders=True (check_operations(..., orders=True)); without
orders it still shows the bars and the verdict, only no order.
"""

from __future__ import annotations

import html
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from kvmgr.errors import HistoryError
from kvmgr.verify.check import CheckResult, KeyOrder, describe
from kvmgr.verify.history import COUNTS, Operation
from kvmgr.verify.register import ABSENT, Unknown

SHOWN_CHARS = 160
"""The longest argument, result or state text the page holds (longer ones are cut, with '...')."""
PAGE_FILES = ("history.html", "history.css", "history.js")
"""The page's template, style and script, in kvmgr/verify/page/."""
FLAG_PLAIN, FLAG_UNPLACED, FLAG_CONTEXT = 0, 1, 2
"""Per operation: nothing special; cannot be placed (highlighted); one of the operations describe lists for a failure."""


@dataclass(frozen=True, kw_only=True)
class _Columns:
    """The operations as the page's columns, one list per field, indexed by the operation's position in the history."""

    client: list[int]
    key: list[int]
    name: list[str]
    args: list[str]
    result: list[str]
    status: list[str]
    start: list[int]
    end: list[int | None]
    flag: list[int]


def _cut(text: str) -> str:
    """Cut a text to SHOWN_CHARS."""
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def show_arguments(op: Operation) -> str:
    """An operation's arguments as `kvmgr check` prints them ('' for none)."""
    parts = []
    if op.op == "cas":
        parts.append(f"expected={op.expected!r}")
    if op.op in ("store", "add", "cas"):
        parts.append(f"value={op.value!r}")
    elif op.op in COUNTS:
        parts.append(f"by={op.value!r}")
    if op.ttl is not None:
        parts.append(f"ttl={op.ttl:g}")
    return _cut(" ".join(parts))


def show_result(op: Operation) -> str:
    """An operation's result as `kvmgr check` prints it ('?' when not known)."""
    if op.status == "info" or (op.op == "store" and op.result is None and op.status == "ok"):
        return "?"
    return _cut(repr(op.result))


def show_state(state: object) -> str:
    """A key's state (plain: ABSENT, an Unknown, or a value) for people."""
    if state is ABSENT:
        return "absent"
    if isinstance(state, Unknown):
        excluded = ", ".join(sorted("absent" if s is ABSENT else repr(s) for s in state.excluded))
        return "as before the history (unknown" + (f", not {excluded})" if excluded else ")")
    return _cut(repr(state))


def _index(names: list[str]) -> dict[str, int]:
    """Each name's position."""
    return {name: n for n, name in enumerate(names)}


def _columns(ops: list[Operation], result: CheckResult, origin: int) -> tuple[_Columns, list[str], list[str]]:
    """The operations as columns (times relative to `origin`), and the clients and keys, sorted."""
    clients, keys = sorted({op.client for op in ops}), sorted({op.key for op in ops})
    client_index, key_index = _index(clients), _index(keys)
    unplaced, context = {id(op) for op in result.unplaced}, {id(op) for op in result.operations}
    columns = _Columns(
        client=[client_index[op.client] for op in ops], key=[key_index[op.key] for op in ops], name=[op.op for op in ops],
        args=[show_arguments(op) for op in ops], result=[show_result(op) for op in ops], status=[op.status for op in ops],
        start=[op.start - origin for op in ops], end=[None if op.end is None else op.end - origin for op in ops],
        flag=[FLAG_UNPLACED if id(op) in unplaced else FLAG_CONTEXT if id(op) in context else FLAG_PLAIN for op in ops],
    )
    return columns, clients, keys


def linearization_points(order: tuple[Operation, ...]) -> list[int]:
    """A point for each operation of an order, within its call and return: the latest of its call and the previous point.

    The search places an operation only when it was called before every operation not yet placed returned, so each
    point falls before the operation's return.
    """
    points, last = [], None
    for op in order:
        last = op.start if last is None else max(last, op.start)
        points.append(last)
    return points


def _order_json(order: KeyOrder, positions: dict[int, int], origin: int) -> dict[str, Any]:
    """One key's order for the page: operation ids, points, the state after each, and how it ends."""
    return {
        "ids": [positions[id(op)] for op in order.order],
        "points": [point - origin for point in linearization_points(order.order)],
        "states": [show_state(state) for state in order.states],
        "initial": show_state(order.initial),
        "complete": order.complete,
    }


def _key_status(key: str, result: CheckResult) -> tuple[str, str]:
    """A key's status on the page ('ok', 'illegal', 'unknown', 'skipped' or 'unchecked') and a note."""
    if key in result.skipped_keys:
        return "skipped", f"not checked: {result.skipped_keys[key]}"
    if key == result.key:
        return ("illegal", result.detail) if result.linearizable is False else ("unknown", result.detail)
    if key in result.orders or result.linearizable:
        return "ok", "linearizable"
    return "unchecked", "not checked: the check stops at the first key that fails"


def page_data(ops: list[Operation], result: CheckResult, title: str) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data."""
    origin = min((op.start for op in ops), default=0)
    columns, clients, keys = _columns(ops, result, origin)
    positions = {id(op): n for n, op in enumerate(ops)}
    key_index = _index(keys)
    statuses = [_key_status(key, result) for key in keys]
    return {
        "title": title,
        "outcome": result.outcome,
        "headline": describe(result).splitlines()[0] if ops else "an empty history",
        "detail": result.detail,
        "skippedNote": result.skipped_note,
        "badKey": key_index.get(result.key) if result.key is not None else None,
        "clients": clients,
        "keys": keys,
        "keyStatus": [status for status, _ in statuses],
        "keyNote": [note for _, note in statuses],
        "ops": columns.__dict__,
        "orders": {
            str(key_index[key]): _order_json(order, positions, origin) for key, order in result.orders.items() if key in key_index
        },
    }


def _script_json(data: object) -> str:
    """JSON safe inside a <script> element."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").replace("\u2028", "\\u2028").replace(
        "\u2029", "\\u2029"
    )


def _page_file(name: str) -> str:
    """One of the page's files (PAGE_FILES)."""
    return resources.files("kvmgr.verify").joinpath("page", name).read_text(encoding="utf-8")


def history_page(ops: list[Operation], result: CheckResult, title: str = "kvmgr history") -> str:
    """The whole page for a history and its CheckResult (computed with orders=True to show the orders found)."""
    template, style, script = (_page_file(name) for name in PAGE_FILES)
    replacements = {
        "title": html.escape(title), "style": style, "script": script, "data": _script_json(page_data(ops, result, title)),
    }
    return re.sub(r"\{\{(title|style|script|data)\}\}", lambda match: replacements[match[1]], template)


def write_history_page(
    path: str | os.PathLike[str], ops: list[Operation], result: CheckResult, title: str = "kvmgr history"
) -> None:
    """Write history_page to `path` (HistoryError, one line, if it cannot be written)."""
    name = os.fspath(path)
    text = history_page(ops, result, title)
    try:
        with open(name, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise HistoryError(f"cannot write the history page {name}: {exc.strerror or exc}") from None
