"""Namespaces: a client that sees only its own keys, locks, queues and rendezvous, on both backends, and cleans up after itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import kvmgr
from kvmgr.client.namespace import NamespacedClient, check_namespace
from kvmgr.client.operations import Operations
from kvmgr.errors import ConfigError, KeyNotFound
from kvmgr.tools.processes import ServerProcess


@pytest.fixture(params=["manager", "redis"])
def target(request: pytest.FixtureRequest) -> tuple[str, bytes | None]:
    """Where to connect: a kvmgr server, or a Redis database shared with other tests' data."""
    if request.param == "manager":
        server: ServerProcess = request.getfixturevalue("server")
        return server.address_text, server.authkey.encode()
    return request.getfixturevalue("redis_url"), None


@pytest.fixture
def shared(target: tuple[str, bytes | None]) -> Iterator[Operations]:
    """A client of the whole database, holding data that is not the namespaces'."""
    with kvmgr.connect(target[0], authkey=target[1]) as client:
        client.store_many({"other": "theirs", "run-1:looks-like-mine": "but was stored outside"})
        yield client
        client.delete("other")
        client.delete("run-1:looks-like-mine")


def test_a_namespace_sees_only_its_own_keys(target: tuple[str, bytes | None], shared: Operations) -> None:
    with kvmgr.connect(target[0], authkey=target[1], namespace="run-2") as mine:
        assert mine.size() == 0 and mine.keys() == []
        assert mine.store("a", 1) == "saved" and mine.store_many({"b": "2", "c": (3,)}) == {"b": "saved", "c": "saved"}
        assert mine.get("a") == 1 and mine.get_many(["a", "b", "zz"]) == {"a": 1, "b": "2"}
        assert mine.keys() == ["a", "b", "c"] and mine.keys(prefix="b") == ["b"] and mine.keys(after="a", limit=1) == ["b"]
        assert mine.size() == 3 and mine.incr("n") == 1 and mine.pop("n") == 1
        with pytest.raises(KeyNotFound) as missing:
            mine.get("other")
        assert missing.value.key == "other"  # the caller's key, not the stored one
        assert mine.pipeline([("get", "a"), ("get", "nope"), ("keys",)], raise_on_error=False)[::2] == [1, ["a", "b", "c"]]
        listed = mine.keys()
        assert shared.get("run-2:a") == 1 and "other" not in listed
        with mine.lock("L") as lock:
            assert shared.lock_locked("run-2:L") and not shared.lock_locked("L") and lock.token
        mine.queue("q").put("job")
        assert shared.queue_size("run-2:q") == 1 and mine.queue("q").get(timeout=1) == "job"
        assert mine.delete_namespace() == 3
        assert mine.size() == 0 and shared.get("other") == "theirs" and shared.get("run-1:looks-like-mine")


def test_a_redis_url_names_its_namespace(redis_url: str) -> None:
    with kvmgr.connect(f"{redis_url}?namespace=tenant", timeout=5.0) as client:
        assert isinstance(client, NamespacedClient) and client.namespace == "tenant"
        client.store("k", "v")
        assert client.keys() == ["k"]
        client.delete_namespace()
    with pytest.raises(ConfigError, match="two namespaces"):
        kvmgr.connect(f"{redis_url}?namespace=a", namespace="b")


@pytest.mark.parametrize("bad", ["", "{tag}", "a}b", 5])
def test_a_namespace_is_a_plain_name_without_braces(bad: object) -> None:
    with pytest.raises(ConfigError):
        check_namespace(bad)
