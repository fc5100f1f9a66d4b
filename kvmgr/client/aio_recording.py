"""AsyncRecordingClient: any async client, wrapped so that every attempt of every call is written to a history.

What is recorded is exactly what RecordingClient records for a sync client (kvmgr/client/recording.py): the
same entries, built by the same function. A task cancelled mid-call is recorded as "info" (outcome unknown).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Generic

from kvmgr.client.aio_operations import AsyncAttempt, AsyncOperations, AsyncTransport, observe_async
from kvmgr.client.operations import Call
from kvmgr.client.recording import history_operations
from kvmgr.protocol.operations import RECORDED
from kvmgr.verify.history import HistoryWriter


class AsyncRecordingClient(AsyncOperations, Generic[AsyncTransport]):
    """`inner`, with every attempt of every call recorded in `history` under `name` (the inner client's by default).

    The same methods, retry policy and timeout as `inner`; closing it closes `inner` (not the history).
    """

    def __init__(self, inner: AsyncTransport, history: HistoryWriter, name: str | None = None) -> None:
        self.inner = inner
        self.history = history
        self.name = inner.name if name is None else name
        self.timeout = inner.timeout
        self.retry = inner.retry

    async def _call(self, method: str, args: tuple, timeout: float | None) -> Any:
        """One attempt on the inner client, recorded whatever its outcome."""
        return await observe_async(self.inner._call, self.record, method, args, timeout)

    async def _run_pipeline(self, calls: list[Call], attempt: AsyncAttempt | None = None) -> list[Any]:
        """The inner client's pipeline, every attempt recorded."""
        return await self.inner._run_pipeline(calls, partial(observe_async, attempt or self.inner._call, self.record))

    def record(self, method: str, args: tuple, status: str, result: Any, start: int, end: int | None) -> None:
        """Write one attempt's outcome to the history (only the operations the table records)."""
        if method not in RECORDED:
            return
        for operation in history_operations(self.name, method, args, status, result, start, end):
            self.history.record(operation)

    def session(self) -> AsyncOperations:
        """The inner client's session (locks are outside the history model: not recorded)."""
        return self.inner.session()

    async def close(self) -> None:
        """Close the inner client."""
        await self.inner.close()
