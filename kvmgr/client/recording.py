"""RecordingClient: any client, wrapped so that every attempt of every call is written to a history.

What is recorded, per attempt: a completed call (a get of an absent key included) as "ok" with its result
and end; a call that certainly did not take effect (nothing was sent, the server refused it) as "fail"; a
call that ended without its reply (a broken connection, a timeout, an exception such as KeyboardInterrupt
raised while it waited) as "info", with result and end None. A call refused as an invalid key or value is
not recorded. A batch (get_many, store_many) becomes one entry per key, sharing start and end. An attempt
repeated after a broken connection is recorded as two entries. Only the operations the table gives a
`recorded_as` are written (store, get, delete, cas, incr, decr, add, pop, expire, persist). A pop of an absent
key (KeyNotFound, whatever default the caller gave) is "ok" with result None, as a get is; an incr that met a
value that is not a number (WrongType) certainly changed nothing: "fail". incr/decr record their `by` as the
value; a store or add given a ttl, and an expire, record it in `ttl`.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Generic, cast

from kvmgr.client.operations import AnswerObserver, Call, Operations, Transport, observe
from kvmgr.protocol.operations import BY_NAME, RECORDED
from kvmgr.verify.history import HistoryWriter, Operation, encode_value


class RecordingClient(Operations, Generic[Transport]):
    """`inner`, with every attempt of every call recorded in `history` under `name` (the inner client's by default).

    It is a client itself: the same methods, the same retry policy and timeout as `inner`. Closing it closes
    `inner` (not the history: that belongs to whoever opened it).
    """

    def __init__(self, inner: Transport, history: HistoryWriter, name: str | None = None) -> None:
        self.inner = inner
        self.history = history
        self.name = inner.name if name is None else name
        self.timeout = inner.timeout
        self.retry = inner.retry

    def _call(self, method: str, args: tuple, timeout: float | None) -> Any:
        """One attempt on the inner client, recorded whatever its outcome."""
        return observe(self.inner._call, self.record, method, args, timeout)

    def _run_pipeline(self, calls: list[Call], on_answer: AnswerObserver | None = None) -> list[Any]:
        """The inner client's pipeline, every attempt and every answer (or call left unanswered) recorded."""
        observer = self.record if on_answer is None else partial(_tell_both, self.record, on_answer)
        return self.inner._run_pipeline(calls, observer)

    def record(self, method: str, args: tuple, status: str, result: Any, start: int, end: int | None) -> None:
        """Write one attempt's outcome to the history (only the operations the table records)."""
        if method not in RECORDED:
            return
        for operation in history_operations(self.name, method, args, status, result, start, end):
            self.history.record(operation)

    def session(self) -> Operations:
        """The inner client's session (what a lock holds is not recorded: locks are outside the history model)."""
        return self.inner.session()

    def close(self) -> None:
        """Close the inner client."""
        self.inner.close()


def _tell_both(first: AnswerObserver, second: AnswerObserver, *answer: Any) -> None:
    """Tell two observers of one answer (a recorded client wrapped again)."""
    first(*answer)
    second(*answer)


def history_operations(client: str, method: str, args: tuple, status: str, result: Any, start: int, end: int | None) -> list[Operation]:
    """The history entries for one attempt, as the table's recorded_as names them; a batch (a `keys` or
    `mapping` parameter) becomes one entry per key, sharing start and end."""
    spec = BY_NAME[method]
    op, known = cast("str", spec.recorded_as), status == "ok"
    defaults = dict(zip(spec.params[spec.least_args:], spec.optional_defaults, strict=True))
    named = {**defaults, **dict(zip(spec.params, args, strict=False))}

    def entry(key: str, value: Any = None, outcome: Any = None) -> Operation:
        if op in ("get", "pop"):
            outcome = encode_value(outcome)
        return Operation(
            client=client, op=op, key=key, value=encode_value(value), expected=encode_value(named.get("expected")),
            result=outcome if known else None, status=status, start=start, end=end, ttl=named.get("ttl"),
        )

    if "keys" in named:
        return [entry(key, outcome=(result or {}).get(key)) for key in named["keys"]]
    if "mapping" in named:
        return [entry(key, value, outcome=(result or {}).get(key)) for key, value in named["mapping"].items()]
    return [entry(named["key"], named.get("value", named.get("by")), result)]
