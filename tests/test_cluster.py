"""Redis Cluster (redis+cluster://) on a real 3-primary, 3-replica cluster: routing, multi-key rules, coordination, failover."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest

import kvmgr
from kvmgr.client.redis_deployments import ClusterRedisClient, by_slot
from kvmgr.client.redis_scripts import hash_slot
from kvmgr.errors import ServerUnavailable
from kvmgr.tools import faults
from kvmgr.tools.redis_server import Cluster


@pytest.fixture
def client(redis_cluster: Cluster) -> Iterator[kvmgr.Operations]:
    with kvmgr.connect(redis_cluster.url, timeout=10.0, namespace=f"t-{uuid.uuid4().hex[:8]}") as connected:
        yield connected


def test_single_key_operations_work_on_every_primary(redis_cluster: Cluster) -> None:
    with kvmgr.connect(redis_cluster.url, timeout=10.0) as raw:
        assert isinstance(raw, ClusterRedisClient)
        keys = [f"t-{uuid.uuid4().hex[:6]}-{n}" for n in range(60)]
        served_by = {id(raw._endpoint_of_slot(hash_slot(key.encode()))) for key in keys}
        assert len(served_by) == 3  # the keys span every primary's slot ranges
        for key in keys:
            assert raw.store(key, key) == "saved" and raw.get(key) == key
            assert raw.incr(key + "#n", 2) == 2 and raw.cas(key, key, "x") and raw.pop(key) == "x"
            assert raw.add(key, 1, ttl=30) and 0 < (raw.ttl(key) or 0) <= 30 and raw.persist(key)
            assert raw.delete(key) and raw.delete(key + "#n")


def test_multi_key_calls_are_split_per_slot_and_atomic_within_a_tag(client: kvmgr.Operations) -> None:
    spread = {f"k{n}": n for n in range(30)}
    assert len(by_slot(list(spread))) > 1
    assert set(client.store_many(spread).values()) == {"saved"}
    assert client.get_many([*spread, "missing"]) == spread
    assert client.size() == 30 and client.keys(limit=3) == ["k0", "k1", "k10"]
    tagged = ["{user}a", "{user}b"]
    stop, torn = threading.Event(), []

    def writer() -> None:
        number = 0
        while not stop.is_set():
            number += 1
            client.store_many(dict.fromkeys(tagged, number))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(200):
            seen = client.get_many(tagged)
            if len(set(seen.values())) > 1:
                torn.append(seen)
    finally:
        stop.set()
        thread.join()
    assert not torn  # keys sharing a {tag} are read and written in one step


def test_locks_queues_wait_and_rendezvous_work_on_a_cluster(client: kvmgr.Operations) -> None:
    for name in ("alpha", "beta", "gamma", "{t}x"):
        with client.lock(name, lease=5.0):
            assert client.lock_locked(name)
        client.queue_put(name, name)
        assert client.queue_size(name) == 1 and client.queue_get(name, timeout=1.0) == name
        assert client.rendezvous(name, 1) == 0
    client.store("w", 1)
    _, version = client.get_versioned("w")
    thread = threading.Thread(target=client.store, args=("w", 2))
    thread.start()
    assert client.wait("w", version, timeout=5.0) == (2, version + 1)
    thread.join()


def test_stress_runs_on_a_cluster_and_leaves_nothing_behind(redis_cluster: Cluster) -> None:
    done = subprocess.run([sys.executable, "-m", "kvmgr", "stress", "--target", redis_cluster.url, "--ops", "200"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_quick_cluster_failover_audit(redis_cluster: Cluster) -> None:
    result = faults.failover_audit(redis_cluster, replicated=False, rounds=1, label="cluster")
    assert result.rounds == 1 and result.acknowledged >= faults.WRITERS * faults.ACKS_BEFORE_KILL
    with kvmgr.connect(redis_cluster.url, timeout=10.0) as after:
        assert after.store("after-failover", 1) == "saved"  # the promoted replica serves its slots
        assert not list(after.iter_keys("audit-"))


def test_a_cluster_nobody_serves_is_unavailable_within_the_timeout() -> None:
    with pytest.raises(ServerUnavailable):
        kvmgr.connect("redis+cluster://127.0.0.1:1", timeout=0.5)
