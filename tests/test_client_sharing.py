"""A client never hands one call's reply to another: shared by threads, inherited by a fork Pool, or interrupted."""

from __future__ import annotations

import json
import multiprocessing
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from kvmgr.client.operations import Operations
from kvmgr.errors import KeyNotFound, ServerUnavailable
from kvmgr.tools.processes import suspend
from kvmgr.verify.history import HistoryWriter

THREADS = 8
CALLS_PER_THREAD = 150
POOL_TASKS = 120
BIG = 16 * 1024 * 1024

SHARED: Operations | None = None  # the module-level client a fork Pool's workers inherit


class Interrupted(Exception):
    """What the test's SIGALRM handler raises inside a call."""


@contextmanager
def alarm_after(seconds: float) -> Iterator[None]:
    """Raise Interrupted in this (the main) thread after `seconds`, as a timeout handler in a program would."""

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted(f"signal {signum}")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def suspended(process: psutil.Process) -> Iterator[None]:
    """The process stopped (SIGSTOP, taken effect) for the with-block, then continued."""
    suspend(process)
    try:
        yield
    finally:
        process.resume()


def wrong_answers_of_one_thread(client: Operations, number: int) -> int:
    """Store, read back and test this thread's own keys; count every answer that is not this call's."""
    wrong = 0
    for i in range(CALLS_PER_THREAD):
        key, value = f"t{number}-{i % 10}", f"v{number}-{i}"
        wrong += client.store(key, value) not in ("saved", "updated")
        wrong += client.get(key) != value
        wrong += client.exists(key) is not True
        wrong += client.get_many([key, "absent"]) != {key: value}
    return wrong


def test_one_client_shared_by_eight_threads_gives_every_thread_its_own_answers(any_client: Operations) -> None:
    results: list[int] = []
    threads = [threading.Thread(target=lambda n=n: results.append(wrong_answers_of_one_thread(any_client, n))) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == THREADS
    assert sum(results) == 0, f"{sum(results)} wrong answers out of {THREADS * CALLS_PER_THREAD * 4}"


def pool_task(number: int) -> int:
    """Run in a forked Pool worker with the inherited module-level client: count wrong answers."""
    assert SHARED is not None
    key, value = f"p{number}", f"from-task-{number}"
    wrong = SHARED.store(key, value) != "saved"
    wrong += SHARED.get(key) != value
    wrong += SHARED.get("parent") != "set before the fork"
    wrong += SHARED.exists(key) is not True
    return wrong


def test_a_client_inherited_by_a_fork_pool_uses_its_own_connections(any_client: Operations) -> None:
    global SHARED
    SHARED = any_client
    any_client.store("parent", "set before the fork")  # the parent holds an open connection when it forks
    try:
        with multiprocessing.get_context("fork").Pool(4) as pool:
            wrong = pool.map_async(pool_task, range(POOL_TASKS), chunksize=5).get(timeout=60)  # never waits forever
    finally:
        SHARED = None
    assert sum(wrong) == 0, f"{sum(wrong)} wrong answers in {POOL_TASKS} tasks"
    assert any_client.get("parent") == "set before the fork"  # and the parent's own connection still works
    assert any_client.size() == POOL_TASKS + 1


def test_an_interrupted_call_never_hands_its_reply_to_the_next_call(any_client: Operations) -> None:
    any_client.store("a", "value of a")
    any_client.store("b", "value of b")
    with pytest.raises(Interrupted), alarm_after(0.3):
        any_client.rendezvous("nobody-else", 2, timeout=1.0)  # its reply (a timeout error) comes at 1 s
    assert any_client.get("b") == "value of b"
    assert any_client.exists("a") is True
    assert any_client.get("a") == "value of a"


def test_an_interrupted_large_write_leaves_nothing_half_sent(dedicated_backend: tuple) -> None:
    process, connect = dedicated_backend
    with connect(timeout=5.0) as client:
        client.store("small", "still here")
        with suspended(process), pytest.raises(Interrupted), alarm_after(0.3):
            client.store("big", b"x" * BIG)  # blocks part way: the stopped server reads nothing
        assert client.get("small") == "still here"
        with pytest.raises(KeyNotFound):
            client.get("big")  # the request never arrived whole, so it never ran
        assert client.store("big", b"y" * 10) == "saved"


def test_an_interrupted_call_is_recorded_as_unknown_outcome(dedicated_backend: tuple, tmp_path: Path) -> None:
    process, connect = dedicated_backend
    path = tmp_path / "history.jsonl"
    with HistoryWriter(path) as history, connect(timeout=5.0, history=history) as client:
        client.store("a", "1")
        with suspended(process), pytest.raises(Interrupted), alarm_after(0.3):
            client.store("a", "2")
        assert client.get("a") in ("1", "2")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    interrupted = [line for line in lines if line["op"] == "store" and line["value"] == "2"]
    assert [(line["status"], line["end"]) for line in interrupted] == [("info", None)]


def test_a_call_to_a_stopped_server_fails_within_its_timeout_even_with_a_large_payload(dedicated_backend: tuple) -> None:
    process, connect = dedicated_backend
    with connect(timeout=2.0) as client:
        client.store("warm", "up")
        with suspended(process):
            started = time.monotonic()
            with pytest.raises(ServerUnavailable):  # the request never arrived whole: not made
                client.store("big", b"x" * BIG)
            elapsed = time.monotonic() - started
    assert elapsed < 3.5, f"a 2 s call took {elapsed:.1f}s"  # it took 2 to 3 times its timeout (4 to 6 s)


def test_a_thread_blocked_in_a_call_does_not_hold_up_other_threads_on_the_same_client(any_client: Operations) -> None:
    outcome: list[object] = []
    waiter = threading.Thread(target=lambda: outcome.append(wait_alone(any_client)))
    waiter.start()
    time.sleep(0.2)  # let the waiter's rendezvous reach the server
    started = time.monotonic()
    assert any_client.store("k", "v") == "saved"
    assert any_client.get("k") == "v"
    answered_after = time.monotonic() - started
    waiter.join(10)
    assert outcome and isinstance(outcome[0], Exception)  # nobody else came: the rendezvous timed out
    assert answered_after < 2.5, f"a call waited {answered_after:.1f}s behind another thread's blocking call (4 s)"


def wait_alone(client: Operations) -> object:
    """A rendezvous nobody else joins: its error after 4 s."""
    try:
        return client.rendezvous("lonely", 2, timeout=4.0)
    except Exception as exc:
        return exc
