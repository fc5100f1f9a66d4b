"""The asyncio client (kvmgr.aio) on both backends: the sync suite's semantics, concurrency, cancellation, blocking
calls, timeouts and histories, against real servers."""

from __future__ import annotations

import asyncio
import inspect
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import kvmgr.aio
from kvmgr.client.aio_manager import AsyncClient
from kvmgr.client.aio_operations import AsyncOperations
from kvmgr.client.operations import Operations
from kvmgr.config import SEND_PIECE
from kvmgr.errors import AuthenticationFailed, KeyNotFound, LockTimeout, OutcomeUnknown, QueueEmpty, ServerUnavailable
from kvmgr.protocol.operations import OPERATIONS
from kvmgr.tools.processes import ProcessGroup
from kvmgr.verify.history import HistoryWriter, read_history

# The sync suite, re-run through the async client: pytest collects these here with this module's `any_client`.
from tests.test_semantics import *  # noqa: F403
from tests.test_values import (  # noqa: F401
    test_a_key_stored_with_a_ttl_expires,
    test_a_ttl_must_be_a_positive_number,
    test_add_stores_only_when_absent,
    test_add_with_a_ttl_expires_and_then_adds_again,
    test_an_expired_key_is_gone_at_once_for_every_operation,
    test_an_incr_that_would_overflow_a_float_changes_nothing,
    test_any_float_makes_the_result_a_float,
    test_any_plain_value_round_trips_with_its_types,
    test_cas_ignores_dict_order_at_any_depth,
    test_cas_matches_a_float_whatever_digits_incr_wrote,
    test_cas_tells_apart_what_python_calls_equal,
    test_each_value_comes_back_exactly_as_stored,
    test_expire_and_persist,
    test_incr_and_decr_start_an_absent_key_at_zero,
    test_incr_keeps_the_expiry_and_plain_writes_clear_it,
    test_incr_on_a_value_that_is_not_a_number_is_wrong_type_and_changes_nothing,
    test_incr_refuses_a_delta_that_is_not_a_finite_number,
    test_ints_near_the_64_bit_edges_stay_exact,
    test_pop_returns_the_value_and_removes_it,
    test_store_with_a_ttl_replaces_the_expiry,
    test_subclasses_are_stored_as_their_plain_type,
    test_the_size_limit_counts_the_encoded_value,
    test_ttl_is_none_without_expiry_and_key_not_found_when_absent,
    test_what_is_not_plain_data_is_refused_naming_it,
)

Connect = Callable[..., Any]


class SyncView:
    """An async client seen through sync calls (each run to completion on one event loop), so sync tests can drive it."""

    def __init__(self, client: AsyncOperations, runner: asyncio.Runner) -> None:
        self._client, self._runner = client, runner

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if inspect.isasyncgenfunction(attribute):
            return lambda *args, **kwargs: iter(self._runner.run(_collect(attribute(*args, **kwargs))))
        if inspect.iscoroutinefunction(attribute):
            return lambda *args, **kwargs: self._runner.run(attribute(*args, **kwargs))
        return attribute


async def _collect(items: Any) -> list:
    return [item async for item in items]


@pytest.fixture(params=["manager", "redis"])
def backend(request: pytest.FixtureRequest) -> tuple[str, bytes | None]:
    """(address, authkey) of a fresh kvmgr server, or of the session's Redis (emptied)."""
    if request.param == "manager":
        server = request.getfixturevalue("server")
        return server.address_text, server.authkey.encode()
    from kvmgr.client.redis_transport import connect_redis

    url = request.getfixturevalue("redis_url")
    with connect_redis(url, timeout=5.0) as sync:
        sync.flush()
    return url, None


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as loop:
        yield loop


@pytest.fixture
def any_client(backend: tuple[str, bytes | None], runner: asyncio.Runner) -> Iterator[Operations]:
    """The async client of each backend, driven through sync calls (the sync suite's fixture name)."""
    client = runner.run(kvmgr.aio.connect(backend[0], authkey=backend[1], timeout=5.0))
    yield SyncView(client, runner)  # type: ignore[misc]
    runner.run(client.close())


def run(backend: tuple[str, bytes | None], test: Callable[[AsyncOperations], Any], **options: Any) -> Any:
    """Run `test(client)` on a fresh event loop with an async client of the backend, closed after."""
    async def main() -> Any:
        async with await kvmgr.aio.connect(backend[0], authkey=backend[1], **{"timeout": 5.0, **options}) as client:
            return await test(client)
    return asyncio.run(main())


# --- the method set ---


def test_the_async_client_has_every_operation_with_the_sync_signature() -> None:
    for spec in OPERATIONS:
        method = getattr(AsyncOperations, spec.name)
        assert inspect.iscoroutinefunction(method), spec.name
        assert inspect.signature(method) == inspect.signature(getattr(Operations, spec.name)), spec.name


def test_the_async_redis_client_implements_what_the_sync_one_does() -> None:
    from kvmgr.client.aio_redis import AsyncRedisClient
    from kvmgr.client.redis_transport import RedisClient

    for name in (name for name in dir(RedisClient) if name.startswith("_do_")):
        assert inspect.iscoroutinefunction(getattr(AsyncRedisClient, name, None)), name
        ours, theirs = inspect.signature(getattr(AsyncRedisClient, name)), inspect.signature(getattr(RedisClient, name))
        assert ours.parameters.keys() == theirs.parameters.keys(), name


def test_import_kvmgr_loads_no_asyncio_client() -> None:
    probe = "import sys, kvmgr; print(sorted(m for m in sys.modules if 'aio' in m or m.startswith('redis')))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.strip() == "[]"


# --- many tasks, one client ---


def test_a_thousand_concurrent_gets_each_get_their_own_answer(backend: tuple[str, bytes | None]) -> None:
    async def test(client: AsyncOperations) -> None:
        await client.store_many({f"key-{number}": f"value-{number}" for number in range(1000)})
        answers = await asyncio.gather(*(client.get(f"key-{number}") for number in range(1000)))
        assert answers == [f"value-{number}" for number in range(1000)]
        calls = [client.incr(f"n-{number % 10}") if number % 2 else client.get(f"key-{number}") for number in range(1000)]
        mixed = await asyncio.gather(*calls)
        assert [mixed[number] for number in range(0, 1000, 2)] == [f"value-{number}" for number in range(0, 1000, 2)]
        assert await asyncio.gather(*(client.get(f"n-{number}") for number in (1, 3, 5, 7, 9))) == [100] * 5
    run(backend, test)


def test_the_manager_client_pipelines_every_task_on_one_connection(server: Any) -> None:
    async def test(client: AsyncOperations) -> None:
        assert isinstance(client, AsyncClient)
        shared = client._shared
        await asyncio.gather(*(client.store(f"k{number}", number) for number in range(500)))
        assert client._shared is shared and not client._spares
        assert len(psutil.Process().net_connections(kind="tcp")) <= 3
    run((server.address_text, server.authkey.encode()), test)


def test_errors_reach_their_own_task_only(backend: tuple[str, bytes | None]) -> None:
    async def test(client: AsyncOperations) -> None:
        await client.store("present", "yes")
        calls = [client.get("present" if number % 3 else "absent") for number in range(300)]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        for number, answer in enumerate(answers):
            assert answer == "yes" if number % 3 else isinstance(answer, KeyNotFound), (number, answer)
    run(backend, test)


# --- cancellation ---


def test_tasks_cancelled_at_random_points_never_shift_answers(backend: tuple[str, bytes | None]) -> None:
    generator = random.Random(14)

    async def round_of_gets(client: AsyncOperations, count: int) -> None:
        tasks = [asyncio.create_task(client.get(f"key-{number}")) for number in range(count)]
        for _ in range(generator.randrange(4)):
            await asyncio.sleep(0)
        for task in generator.sample(tasks, count // 3):
            task.cancel()
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        for number, answer in enumerate(answers):
            assert isinstance(answer, asyncio.CancelledError) or answer == f"value-{number}", (number, answer)

    async def test(client: AsyncOperations) -> None:
        await client.store_many({f"key-{number}": f"value-{number}" for number in range(200)})
        for _ in range(30):
            await round_of_gets(client, 200)
        answers = await asyncio.gather(*(client.get(f"key-{number}") for number in range(200)))
        assert answers == [f"value-{number}" for number in range(200)]
    run(backend, test)


def test_cancelled_large_writes_cost_at_most_their_connection(backend: tuple[str, bytes | None]) -> None:
    big = "x" * (3 * SEND_PIECE)  # written in pieces: a cancellation may cut it mid-write
    generator = random.Random(7)

    async def test(client: AsyncOperations) -> None:
        await client.store_many({f"key-{number}": f"value-{number}" for number in range(50)})
        for _ in range(20):
            writes = [asyncio.create_task(client.store(f"big-{number}", big)) for number in range(3)]
            reads = [asyncio.create_task(client.get(f"key-{number}")) for number in range(50)]
            await asyncio.sleep(generator.uniform(0, 0.003))
            for task in writes:
                task.cancel()
            answers = await asyncio.gather(*reads, return_exceptions=True)
            for number, answer in enumerate(answers):  # a read on a connection closed by a cut write: outcome unknown, never wrong
                assert answer == f"value-{number}" or isinstance(answer, OutcomeUnknown), (number, answer)
            await asyncio.gather(*writes, return_exceptions=True)
            assert await client.get("key-7") == "value-7"
    run(backend, test, retry=kvmgr.aio.NO_RETRY)


def test_a_request_cut_mid_write_closes_its_connection_and_the_next_call_opens_another(group: ProcessGroup) -> None:
    server = group.start_server()
    process = psutil.Process(server.process.pid)

    async def test(client: AsyncOperations) -> None:
        assert isinstance(client, AsyncClient)
        await client.store("k", "v")
        first = client._shared
        assert first is not None
        process.suspend()  # the server reads nothing: the large write stops between pieces
        try:
            writer = asyncio.create_task(client.store("big", "x" * (64 * SEND_PIECE)))
            deadline = time.monotonic() + 5
            while not first._piecewise.locked() or first.writer.transport.get_write_buffer_size() == 0:
                assert time.monotonic() < deadline, "the large write never started"
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.05)
            assert not writer.done()
            writer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await writer
        finally:
            process.resume()
        assert first.closed_reason == "a store request was cut mid-write"
        assert await client.get("k") == "v"
        assert client._shared is not first
        with pytest.raises(KeyNotFound):
            await client.get("big")
    run((server.address_text, server.authkey.encode()), test)


def test_a_call_cancelled_after_its_request_was_written_keeps_the_connection(server: Any) -> None:
    async def test(client: AsyncOperations) -> None:
        assert isinstance(client, AsyncClient)
        await client.store("k", "v")
        shared = client._shared
        assert shared is not None
        tasks = [asyncio.create_task(client.get("k")) for _ in range(10)]
        await asyncio.sleep(0)  # every request is written
        assert len(shared.pending) == 10
        for task in tasks[::2]:
            task.cancel()
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        assert answers[1::2] == ["v"] * 5
        assert await client.incr("n") == 1 and client._shared is shared and not shared.pending
    run((server.address_text, server.authkey.encode()), test)


# --- blocking calls ---


def test_a_blocking_call_does_not_hold_up_other_calls(backend: tuple[str, bytes | None]) -> None:
    async def test(client: AsyncOperations) -> None:
        await client.store("k", "v")
        getter = asyncio.create_task(client.queue_get("jobs", timeout=10))
        waiter = asyncio.create_task(client.wait("k", (await client.get_versioned("k"))[1], timeout=10))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        assert await asyncio.gather(*(client.get("k") for _ in range(200))) == ["v"] * 200
        assert time.monotonic() - started < 2 and not getter.done() and not waiter.done()
        assert await client.queue_put("jobs", "job-1") == 1 or getter.done()
        assert await asyncio.wait_for(getter, 5) == "job-1"
        await client.store("k", "changed")
        assert (await asyncio.wait_for(waiter, 5))[0] == "changed"
    run(backend, test)


def test_blocking_calls_time_out_with_their_own_errors(backend: tuple[str, bytes | None]) -> None:
    async def test(client: AsyncOperations) -> None:
        holder = client.lock("shared", lease=10)
        await holder.acquire()
        with pytest.raises(LockTimeout):
            await client.lock("shared").acquire(timeout=0.2)
        with pytest.raises(QueueEmpty):
            await client.queue("empty").get(timeout=0.2)
        await holder.release()
        async with client.lock("shared") as lock:
            assert lock.token is not None and await lock.locked()
        assert not await client.lock_locked("shared")
    run(backend, test)


def test_cancelling_a_lock_acquire_leaves_the_lock_free(server: Any) -> None:
    async def test(client: AsyncOperations) -> None:
        holder = client.lock("L", lease=30)
        await holder.acquire()
        waiting = asyncio.create_task(client.lock("L", lease=30).acquire(timeout=30))
        await asyncio.sleep(0.1)
        waiting.cancel()
        await holder.release()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        deadline = time.monotonic() + 5
        while await client.lock_locked("L"):  # the cancelled waiter's connection is closed: no grant outlives it
            assert time.monotonic() < deadline, "the lock stayed held after its waiter was cancelled"
            await asyncio.sleep(0.01)
        assert await client.lock("L").acquire(timeout=1) > 0
    run((server.address_text, server.authkey.encode()), test)


# --- timeouts, connecting, retries ---


def test_every_call_on_a_stopped_server_is_bounded_by_the_timeout(dedicated_backend: tuple[psutil.Popen, Any]) -> None:
    process, connect_sync = dedicated_backend
    sync = connect_sync(timeout=5.0)
    address = sync.address if isinstance(sync.address, str) else f"{sync.address[0]}:{sync.address[1]}"
    authkey = getattr(sync, "_authkey", None)
    sync.close()

    async def test() -> None:
        client = await kvmgr.aio.connect(address, authkey=authkey, timeout=0.5)
        await client.store("k", "v")
        process.suspend()
        try:
            for call in (lambda: client.get("k"), lambda: client.store("k", "w"), lambda: client.queue_get("q", 0.1)):
                started = time.monotonic()
                with pytest.raises(ServerUnavailable) as caught:
                    await call()
                assert time.monotonic() - started < 1.5, caught.value
            started = time.monotonic()
            with pytest.raises(ServerUnavailable):
                await kvmgr.aio.connect(address, authkey=authkey, timeout=0.5)
            assert time.monotonic() - started < 1.5
        finally:
            process.resume()
        assert await client.get("k") in ("v", "w")
        await client.close()
    asyncio.run(test())


def test_connect_refuses_a_wrong_key_and_an_unreachable_address(server: Any) -> None:
    with pytest.raises(AuthenticationFailed, match="rejected the authkey"):
        asyncio.run(kvmgr.aio.connect(server.address_text, authkey=b"wrong", timeout=2))
    with pytest.raises(ServerUnavailable, match="cannot reach"):
        asyncio.run(kvmgr.aio.connect("127.0.0.1:1", authkey=b"k", timeout=2))


def test_a_call_safe_to_repeat_survives_a_server_restart(group: ProcessGroup) -> None:
    server = group.start_server()

    async def test() -> None:
        client = await kvmgr.aio.connect(server.address_text, authkey=server.authkey.encode(), timeout=5)
        await client.store("k", "v")
        shared = client._shared  # type: ignore[attr-defined]
        shared.close("cut by the test")  # as if the server had dropped it: the next calls reconnect
        assert await client.store("k", "w") == "updated"
        assert await client.get("k") == "w"
        await client.close()
    asyncio.run(test())


# --- histories ---


def test_calls_are_recorded_as_the_sync_client_records_them(backend: tuple[str, bytes | None], tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    with HistoryWriter(path) as history:
        async def test(client: AsyncOperations) -> None:
            await client.store("a", "1")
            await asyncio.gather(client.get("a"), client.incr("n", 2), client.get("missing"), return_exceptions=True)
            await client.get_many(["a", "n"])
            await client.size()  # not a history operation
        run(backend, test, history=history, name="async-alice")
    recorded = [(op.op, op.key, op.status) for op in read_history(path)]
    assert recorded[0] == ("store", "a", "ok") and recorded[4:] == [("get", "a", "ok"), ("get", "n", "ok")]
    # the three gathered calls run at once (on Redis, each on a connection of its own): recorded in the order they ended
    assert sorted(recorded[1:4]) == [("get", "a", "ok"), ("get", "missing", "ok"), ("incr", "n", "ok")]
    operations = read_history(path)
    assert {op.client for op in operations} == {"async-alice"}
    assert all(op.end is not None and op.end >= op.start for op in operations)
