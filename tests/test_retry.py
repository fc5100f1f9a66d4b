"""The retry policy: derived from the operation table, and what a client repeats after its connection is cut mid-call."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import kvmgr
from kvmgr.client.retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy
from kvmgr.errors import KvmgrError, OutcomeUnknown
from kvmgr.protocol.operations import OPERATIONS

MARK = "cut-me"  # a key whose requests get their reply dropped and their connection cut, while cuts remain


class CuttingRelay:
    """A loopback TCP relay in front of a real server that cuts a connection mid-call, on demand.

    While cuts remain, a connection that carries a request containing MARK gets the server's next reply
    dropped and is closed instead: the call reached the server, but its client never hears the answer.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.cuts = 0
        self.cut_made = 0
        self.refuse_after_cut = False  # once a cut is made, stop listening: a repeat cannot even connect
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def cut(self, count: int = 1) -> None:
        """Cut the next `count` calls on MARK."""
        with self.lock:
            self.cuts = count

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                downstream, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed: refusing from now on
            upstream = socket.create_connection(self.target, timeout=5)
            thread = threading.Thread(target=self._relay, args=(downstream, upstream), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _relay(self, downstream: socket.socket, upstream: socket.socket) -> None:
        """Copy bytes both ways until either side closes, or the connection is cut."""
        marked = False
        with downstream, upstream:
            while not self.stopped.is_set():
                for source in select.select([downstream, upstream], [], [], 0.05)[0]:
                    data = source.recv(1 << 16)
                    if not data:
                        return
                    if source is downstream:
                        marked = marked or (MARK.encode() in data and self._take_cut())
                        upstream.sendall(data)
                    elif marked:
                        if self.refuse_after_cut:
                            self.listener.close()
                        return  # the reply is dropped; closing both ends tells the client the connection broke
                    else:
                        downstream.sendall(data)

    def _take_cut(self) -> bool:
        with self.lock:
            if self.cuts == 0:
                return False
            self.cuts -= 1
            self.cut_made += 1
            return True

    def close(self) -> None:
        """Stop relaying and wait for every relay thread."""
        self.stopped.set()
        for thread in self.threads:
            thread.join(5)
        self.listener.close()
        assert not any(thread.is_alive() for thread in self.threads), "a relay thread did not stop"


@pytest.fixture(params=["manager", "redis"])
def relayed(request: pytest.FixtureRequest) -> Iterator[tuple[CuttingRelay, Callable[..., Any]]]:
    """A relay in front of a real server of each backend, and connect(**options) to reach the server through it."""
    if request.param == "manager":
        server = request.getfixturevalue("thread_server")
        relay = CuttingRelay(server.address)
        address, authkey = f"127.0.0.1:{relay.port}", bytes(server.authkey)
    else:
        from kvmgr.client.redis_transport import connect_redis

        url = request.getfixturevalue("redis_url")
        with connect_redis(url, timeout=5.0) as direct:
            direct.flush()
        host_port = url.split("//", 1)[1].split("/", 1)[0]
        relay = CuttingRelay((host_port.rsplit(":", 1)[0], int(host_port.rsplit(":", 1)[1])))
        address, authkey = f"redis://127.0.0.1:{relay.port}/0", None
    try:
        yield relay, lambda **options: kvmgr.connect(address, authkey=authkey, timeout=5.0, **options)
    finally:
        relay.close()


def warmed(client: kvmgr.client.Operations) -> kvmgr.client.Operations:
    """The client after one store and get (Redis loads its scripts), so a cut hits the call under test."""
    client.store("warm", "up")
    assert client.get("warm") == "up"
    return client


# --- the policy by itself ---


def test_the_default_policy_repeats_what_the_table_marks_safe() -> None:
    assert RetryPolicy.from_table() == DEFAULT_RETRY
    assert DEFAULT_RETRY.safe_to_repeat == {spec.name for spec in OPERATIONS if spec.safe_to_repeat}
    assert DEFAULT_RETRY.safe_to_repeat == {
        "store", "get", "exists", "keys", "size", "get_many", "store_many", "expire", "ttl", "get_versioned", "lock_locked",
        "queue_size", "info",
    }
    assert DEFAULT_RETRY.attempts == 2


def test_may_repeat_only_a_safe_call_after_a_broken_connection_and_only_as_often_as_allowed() -> None:
    broken, timed_out = OutcomeUnknown("broken"), OutcomeUnknown("timed out", timed_out=True)
    assert DEFAULT_RETRY.may_repeat("store", broken, 1)
    assert not DEFAULT_RETRY.may_repeat("store", broken, 2)  # one repeat, not two
    assert not DEFAULT_RETRY.may_repeat("store", timed_out, 1)  # a slow server is not made busier
    assert not DEFAULT_RETRY.may_repeat("cas", broken, 1)  # not safe: its second answer could lie
    assert not DEFAULT_RETRY.may_repeat("store", KvmgrError("refused"), 1)  # the server answered
    assert not NO_RETRY.may_repeat("get", broken, 1)


def test_run_makes_up_to_the_allowed_attempts_then_raises_the_last_error() -> None:
    made: list[str] = []

    def always_broken(method: str, args: tuple, timeout: float | None) -> Any:
        made.append(method)
        raise OutcomeUnknown(f"attempt {len(made)}")

    with pytest.raises(OutcomeUnknown, match="attempt 3"):
        RetryPolicy(safe_to_repeat=frozenset({"get"}), attempts=3).run(always_broken, "get", ("k",), None)
    assert len(made) == 3
    with pytest.raises(OutcomeUnknown, match="attempt 4"):
        RetryPolicy(safe_to_repeat=frozenset({"get"}), attempts=3).run(always_broken, "cas", ("k", None, "v"), None)
    assert len(made) == 4


@pytest.mark.parametrize("attempts", [0, -1, True, 1.5])
def test_a_policy_needs_at_least_one_attempt(attempts: Any) -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(safe_to_repeat=frozenset(), attempts=attempts)


# --- against real servers whose connection is cut mid-call ---


def test_the_default_policy_repeats_a_store_whose_reply_was_cut(relayed: tuple[CuttingRelay, Callable[..., Any]]) -> None:
    relay, connect = relayed
    with warmed(connect()) as client:
        relay.cut()
        assert client.store(MARK, "v") == "updated"  # the first attempt did reach the server; the repeat answers
        assert relay.cut_made == 1
        assert client.get(MARK) == "v"


def test_with_no_retries_the_same_cut_reaches_the_caller(relayed: tuple[CuttingRelay, Callable[..., Any]]) -> None:
    relay, connect = relayed
    with warmed(connect(retry=NO_RETRY)) as client:
        relay.cut()
        with pytest.raises(OutcomeUnknown, match="may or may not have taken effect") as caught:
            client.store(MARK, "v")
        assert not caught.value.timed_out
        assert client.get(MARK) == "v"  # it did take effect: only its answer was lost


def test_a_repeat_that_cannot_even_connect_leaves_the_outcome_unknown(relayed: tuple[CuttingRelay, Callable[..., Any]]) -> None:
    """The first attempt reached the server; its repeat finds nobody listening. "Not made" (ServerUnavailable) would be a lie."""
    relay, connect = relayed
    with warmed(connect()) as client:
        relay.refuse_after_cut = True
        relay.cut()
        with pytest.raises(OutcomeUnknown, match="may or may not have taken effect") as caught:
            client.store(MARK, "v")
        assert isinstance(caught.value.__cause__, kvmgr.ServerUnavailable), "the repeat did not run, or did connect"
        assert relay.cut_made == 1


def test_a_policy_with_more_attempts_survives_more_cuts(relayed: tuple[CuttingRelay, Callable[..., Any]]) -> None:
    relay, connect = relayed
    with warmed(connect()) as default, warmed(connect(retry=RetryPolicy.from_table(attempts=3))) as patient:
        relay.cut(2)
        with pytest.raises(OutcomeUnknown):
            default.get(MARK)  # two attempts, both cut
        relay.cut(2)
        with pytest.raises(kvmgr.KeyNotFound):
            patient.get(MARK)  # the third attempt answers
        assert relay.cut_made == 4


def test_a_policy_decides_per_operation_not_the_transport(relayed: tuple[CuttingRelay, Callable[..., Any]]) -> None:
    relay, connect = relayed
    only_delete = RetryPolicy(safe_to_repeat=frozenset({"delete"}))
    with warmed(connect(retry=only_delete)) as client:
        client.store(MARK, "v")
        client.delete("never-stored")  # Redis: the delete script is loaded, so the cut reply is the delete's own
        relay.cut()
        assert client.delete(MARK) is False  # repeated: the first attempt deleted it, the second found nothing
        relay.cut()
        with pytest.raises(OutcomeUnknown):
            client.store(MARK, "w")  # safe by the table, but not by this policy


def test_the_relay_reaches_the_server_untouched_when_no_cut_is_asked(relayed: tuple[CuttingRelay, Callable[..., Any]]) -> None:
    relay, connect = relayed
    with connect(retry=NO_RETRY) as client:
        assert client.pipeline([("store", MARK, "1"), ("get", MARK), ("size",)]) == ["saved", "1", 1]
    assert relay.cut_made == 0

