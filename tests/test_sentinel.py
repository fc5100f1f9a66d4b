"""Redis behind Sentinel (redis+sentinel://), on a real primary, 2 replicas and 3 Sentinels: operations, a failover, WAIT."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

import kvmgr
from kvmgr.client.redis_urls import parse_target, redact
from kvmgr.client.retry import NO_RETRY
from kvmgr.errors import ConfigError, KvmgrError, OutcomeUnknown
from kvmgr.tools import faults
from kvmgr.tools.redis_server import SentinelDeployment, redis_cli


def fresh_namespace() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(sentinel_deployment: SentinelDeployment) -> Iterator[kvmgr.Operations]:
    with kvmgr.connect(sentinel_deployment.url, timeout=10.0, namespace=fresh_namespace()) as connected:
        yield connected


def test_sentinel_url_parts_and_redaction() -> None:
    target = parse_target("redis+sentinel://u:p%40ss@127.0.0.1:1,[::1]:2/svc/3?sentinel_password=s3&durability=replicated&replica_timeout=0.2")
    assert (target.hosts, target.service, target.database) == ((("127.0.0.1", 1), ("::1", 2)), "svc", 3)
    assert (target.username, target.password, target.sentinel_password) == ("u", "p@ss", "s3")
    assert target.replicated and target.replica_timeout == 0.2
    shown = redact("redis+sentinel://u:secret@h:1/svc/0?sentinel_password=other")
    assert "secret" not in shown and "other" not in shown


@pytest.mark.parametrize("url", ["redis+sentinel://h:1", "redis+sentinel://h:1/svc/x", "redis+sentinel://h/svc/0",
                                 "redis+sentinel://h:1/svc/0?durability=eventual", "redis+sentinel://h:1/svc/0?color=red",
                                 "redis+cluster://h:1/3", "redis://h:1/0?replica_timeout=0"])
def test_a_bad_deployment_url_is_refused_before_any_traffic(url: str) -> None:
    with pytest.raises(ConfigError):
        kvmgr.connect(url, timeout=1.0)


def test_every_kind_of_operation_works_through_sentinel(client: kvmgr.Operations) -> None:
    assert client.store("a", {"x": [1, 2]}) == "saved"
    assert client.get("a") == {"x": [1, 2]}
    assert client.incr("n", 5) == 5 and client.cas("n", 5, 6)
    assert client.store_many({"b": 1, "c": 2}) == {"b": "saved", "c": "saved"}
    assert client.get_many(["a", "b", "c", "missing"]) == {"a": {"x": [1, 2]}, "b": 1, "c": 2}
    assert client.keys() == ["a", "b", "c", "n"] and client.size() == 4
    _, version = client.get_versioned("n")
    waiter = threading.Thread(target=client.store, args=("n", 7))
    waiter.start()
    assert client.wait("n", version, timeout=5.0)[0] in (6, 7)
    waiter.join()
    with client.lock("job", lease=5.0):
        assert client.lock_locked("job")
    client.queue_put("q", "item")
    assert client.queue_get("q", timeout=1.0) == "item"


def write_paused_store(client: kvmgr.Operations, outcome: list[object]) -> threading.Thread:
    """A store, in a thread, that the primary holds (CLIENT PAUSE WRITE): it is in flight until the primary dies."""
    def store() -> None:
        try:
            outcome.append(client.store("in-flight", "v"))
        except KvmgrError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=store)
    thread.start()
    return thread


def blocked_clients(port: int) -> int:
    info = redis_cli(port, "INFO", "clients").stdout
    return sum(int(line.split(":")[1]) for line in info.splitlines() if line.startswith("blocked_clients:"))


def test_failover_gives_the_call_in_flight_an_unknown_outcome_and_later_calls_reach_the_new_primary(
    sentinel_deployment: SentinelDeployment,
) -> None:
    namespace = fresh_namespace()
    replicated = sentinel_deployment.url + "?durability=replicated&replica_timeout=2"
    with kvmgr.connect(replicated, timeout=10.0, namespace=namespace, retry=NO_RETRY) as client:
        client.store("before", 1)  # confirmed by a replica (WAIT): Sentinel promotes the replica furthest ahead
        primary = sentinel_deployment.current_primary()
        assert primary is not None
        assert redis_cli(primary.port, "CLIENT", "PAUSE", "10000", "WRITE").returncode == 0
        outcome: list[object] = []
        thread = write_paused_store(client, outcome)
        deadline = time.monotonic() + 5
        while blocked_clients(primary.port) == 0:  # the store has reached the primary, which holds it
            assert time.monotonic() < deadline, "the store never reached the paused primary"
            time.sleep(0.02)
        killed = sentinel_deployment.kill_primary()
        thread.join(15)
        assert len(outcome) == 1 and isinstance(outcome[0], OutcomeUnknown), outcome
        promoted = sentinel_deployment.wait_for_new_primary(killed)
        try:
            started = time.monotonic()
            assert client.store("after", 2) == "saved"  # finds the new primary by itself
            assert client.get("after") == 2 and time.monotonic() - started < 10.0
            assert client.get("before") == 1  # a replica had it before the primary died: it survived
        finally:
            sentinel_deployment.restart(killed)
    assert promoted is not killed


def test_replicated_durability_acknowledges_after_a_replica_has_the_write(sentinel_deployment: SentinelDeployment) -> None:
    url = sentinel_deployment.url + "?durability=replicated&replica_timeout=1"
    with kvmgr.connect(url, timeout=5.0, namespace=fresh_namespace()) as client:
        assert client.store("k", "v") == "saved"
        primary = sentinel_deployment.current_primary()
        assert primary is not None
        replicas = [node for node in sentinel_deployment.data_nodes if node is not primary]
        for replica in replicas:
            replica.process.suspend()
        try:
            with pytest.raises(OutcomeUnknown, match="no replica confirmed"):
                client.store("k", "unconfirmed")
        finally:
            for replica in replicas:
                replica.process.resume()
        assert client.get("k") == "unconfirmed"  # on the primary: the outcome was unknown, not a failure


def test_replicated_durability_on_a_lone_server_never_acknowledges(redis_url: str) -> None:
    with kvmgr.connect(redis_url + "?durability=replicated&replica_timeout=0.05", timeout=2.0, namespace=fresh_namespace()) as client:
        with pytest.raises(OutcomeUnknown):
            client.store("k", "v")
        assert client.get("k") == "v"  # reads need no replica


def test_quick_failover_audit_counts_lost_writes_and_checks_the_history(sentinel_deployment: SentinelDeployment) -> None:
    result = faults.failover_audit(sentinel_deployment, replicated=False, rounds=1, label="sentinel")
    assert result.rounds == 1 and result.acknowledged >= faults.WRITERS * faults.ACKS_BEFORE_KILL
    assert result.lost >= 0 and len(result.failover_seconds) == 1
    assert result.linearizable_rounds == 1 or result.notes  # a loss shows as a checker failure naming the key
    with kvmgr.connect(sentinel_deployment.url, timeout=5.0) as client:
        assert not [key for key in client.iter_keys("audit-")]  # the audit cleaned up after itself
