"""RedisClient against a real redis-server: the same API, semantics and errors as the manager client."""

from __future__ import annotations

import pickle
import re
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from kvmgr.client.redis_scripts import EXPIRING_INDEX, INTERNAL_INDEX, QUEUE_PREFIX
from kvmgr.client.redis_transport import RedisClient, connect_redis, processing_list, redact_url
from kvmgr.errors import (
    AuthenticationFailed,
    ConfigError,
    InvalidValue,
    KeyNotFound,
    KvmgrError,
    LockTimeout,
    OutcomeUnknown,
    ProtocolError,
    ServerUnavailable,
    WaitTimeout,
    WrongType,
)
from kvmgr.protocol.values import same_value
from kvmgr.tools.processes import ProcessGroup, reap
from kvmgr.tools.redis_server import RedisServer, find_redis_server, free_loopback_port, start_redis_server

if TYPE_CHECKING:
    import redis

if find_redis_server() is None:
    pytest.skip("redis-server not found: apt-get install redis-server", allow_module_level=True)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the module, reaped at its end."""
    with ProcessGroup() as processes:
        yield start_redis_server(processes)


@pytest.fixture(autouse=True)
def empty_database(redis_server: RedisServer) -> None:
    """Every test starts with an empty database."""
    with admin(redis_server) as connection:
        connection.flushdb()


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[RedisClient]:
    """A RedisClient connected to the module's server."""
    with connect_redis(redis_server.url, timeout=5.0) as connected:
        yield connected


def admin(server: RedisServer) -> redis.Redis:
    """A plain redis-py connection, for what the kvmgr API cannot do (FLUSHDB, CLIENT KILL, raw values)."""
    import redis

    return redis.Redis.from_url(server.url, socket_timeout=5.0)


def run_in_processes(group: ProcessGroup, code: str, count: int) -> list[str]:
    """Run the same `python -c` program in `count` processes at once; return each one's stdout."""
    processes = [group.launch([sys.executable, "-c", textwrap.dedent(code), f"p{number}"]) for number in range(count)]
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err.decode()
        outputs.append(out.decode().strip())
    return outputs


# --- the operations, mirroring tests/test_store.py ---


def test_quit_is_refused_and_redis_keeps_running(client: RedisClient) -> None:
    with pytest.raises(KvmgrError, match="quit is not supported on a Redis target"):
        client.quit()
    assert client.store("alive", "yes") == "saved"


@pytest.mark.parametrize("raw", [b"no type tag", b"j{not json", b"jnull", b'j{"$set": []}', b"fnot-a-float", b"0012",
                                 pickle.dumps(ValueError("x"))], ids=repr)
def test_a_value_kvmgr_did_not_write_is_a_protocol_error_naming_the_key(client: RedisClient, redis_server: RedisServer, raw: bytes) -> None:
    with admin(redis_server) as connection:
        connection.set("foreign", raw)
    for attempt in (lambda: client.get("foreign"), lambda: client.get_many(["foreign"]), lambda: client.cas("foreign", "x", "y"),
                    lambda: client.pop("foreign")):
        with pytest.raises(ProtocolError, match="key 'foreign' holds a value kvmgr did not write"):
            attempt()
    assert not client.exists("foreign")  # pop (GETDEL) removed it before it could be read


@pytest.mark.parametrize(("value", "raw"), [
    ("h\u00e9", "sh\u00e9".encode()), (b"\x00\xff", b"b\x00\xff"), (42, b"42"), (-7, b"-7"), (2**70, str(2**70).encode()),
    (1.5, b"f1.5"), (-0.0, b"f-0.0"), (True, b"jtrue"), ([1, "a"], b'j[1,"a"]'), ((1, b"\x01"), b'j{"$tuple":[1,{"$bytes":"01"}]}'),
    ({"$tuple": 1}, b'j{"$dict":{"$tuple":1}}'), ({"k": "\u00e9"}, 'j{"k":"\u00e9"}'.encode()),
], ids=repr)
def test_values_are_kept_in_the_documented_encoding(client: RedisClient, redis_server: RedisServer, value: object, raw: bytes) -> None:
    client.store("k", value)  # type: ignore[arg-type]
    with admin(redis_server) as connection:
        assert connection.get("k") == raw
        connection.delete("k")
        connection.set("k", raw)  # written by another tool in the same encoding: read back alike
    assert same_value(client.get("k"), value)


def test_values_written_by_earlier_versions_read_back(client: RedisClient, redis_server: RedisServer) -> None:
    with admin(redis_server) as connection:
        connection.mset({"text": b"sold", "blob": b"b\x00", "empty": b"s", "surrogate": b"s\xed\xb3\xbf"})
    assert client.get_many(["text", "blob", "empty"]) == {"text": "old", "blob": b"\x00", "empty": ""}
    assert client.get("surrogate") == "\udcff"
    assert client.cas("text", "old", "new") is True


def test_incr_is_native_incrby_on_kvmgr_ints_and_other_tools_counters(client: RedisClient, redis_server: RedisServer) -> None:
    with admin(redis_server) as connection:
        connection.set("hits", 41)  # a counter another program keeps with INCR
        assert client.incr("hits") == 42
        connection.incrby("hits", 8)
        assert client.get("hits") == 50
        client.store("ratio", 0.5)
        assert client.incr("ratio", 2) == 2.5 and connection.get("ratio") == b"f2.5"
        client.store("gauge", 1, ttl=60)
        client.incr("gauge", 0.25)
        assert 0 < connection.pttl("gauge") <= 60_000  # the script's SET keeps the expiry


def test_a_ttl_is_whole_milliseconds_rounded_up(client: RedisClient, redis_server: RedisServer) -> None:
    with admin(redis_server) as connection:
        for ttl, most in [(0.0001, 1), (0.05, 50), (1.0005, 1001), (30, 30_000)]:
            client.store("k", "v", ttl=ttl)
            assert most - 10 < connection.pttl("k") <= most, ttl
        client.add("added", 1, ttl=2.5)
        client.expire("k", 0.25)
        assert 2400 < connection.pttl("added") <= 2500 and 150 < connection.pttl("k") <= 250


def test_the_expiring_index_is_invisible_and_shrinks_as_keys_expire(client: RedisClient, redis_server: RedisServer) -> None:
    client.pipeline([("store", f"k{number}", number, 0.3) for number in range(100)])
    client.store("stays", 1, ttl=60)
    assert client.size() == 101 and len(client.keys()) == 101
    with admin(redis_server) as connection:
        assert connection.zcard(EXPIRING_INDEX) == 101
        deadline = time.monotonic() + 5
        while client.size() > 1:
            assert time.monotonic() < deadline, "the keys with a 0.3 s ttl never expired"
            time.sleep(0.01)
        assert connection.zcard(EXPIRING_INDEX) == 1  # size() reclaimed what expired
        client.store("stays", 2)  # no expiry any more: its entry leaves when it comes due
        assert client.keys() == ["stays"] and client.size() == 1


def test_client_attributes_match_the_manager_client(redis_server: RedisServer) -> None:
    with connect_redis(redis_server.url, timeout=2.5, name="alice") as connected:
        assert (connected.address, connected.timeout, connected.name) == (redis_server.url, 2.5, "alice")


# --- connecting and failing ---


def test_unreachable_url_raises_server_unavailable_within_the_timeout() -> None:
    url = f"redis://127.0.0.1:{free_loopback_port()}/0"
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match=re.escape(f"cannot reach Redis at {url}")):
        connect_redis(url, timeout=1.0)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379/0", "redis://127.0.0.1:99999/0", "redis://127.0.0.1:6379/zero",
                                 "redis://[::1", "redis://127.0.0.1:6379/0?foo=bar"])
def test_bad_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="bad Redis URL"):
        connect_redis(url)


def test_missing_redis_py_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ConfigError, match=r"pip install 'kvmgr\[redis\]'"):
        connect_redis("redis://127.0.0.1:6379/0")


def test_wrong_password_raises_authentication_failed(group: ProcessGroup) -> None:
    secured = start_redis_server(group, extra_args=["--requirepass", "right-password"])
    wrong = secured.url.replace("redis://", "redis://:wrong-password@")
    with pytest.raises(AuthenticationFailed, match="rejected the credentials"):
        connect_redis(wrong, timeout=2.0)
    with pytest.raises(AuthenticationFailed):
        connect_redis(secured.url, timeout=2.0)  # no password at all: NOAUTH
    with connect_redis(secured.url.replace("redis://", "redis://:right-password@"), timeout=2.0) as connected:
        assert connected.store("k", "v") == "saved"


def test_password_never_appears_in_messages() -> None:
    assert redact_url("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"


def test_client_reconnects_after_redis_drops_the_connection(client: RedisClient, redis_server: RedisServer) -> None:
    client.store("k", "v")
    with admin(redis_server) as connection:
        connection.client_kill_filter(_type="normal", skipme=True)
    time.sleep(0.1)
    assert client.delete("k") is True  # not OutcomeUnknown: the dead idle connection is noticed before sending
    client.close()
    assert client.exists("k") is False


def test_a_stopped_server_gives_server_unavailable_not_outcome_unknown(group: ProcessGroup) -> None:
    server = start_redis_server(group)
    client = connect_redis(server.url, timeout=1.0)
    client.store("k", "v")
    reap(server.process)
    time.sleep(0.1)
    with pytest.raises(ServerUnavailable, match="cannot reach Redis") as caught:
        client.delete("k")
    assert not isinstance(caught.value, OutcomeUnknown)
    client.close()


# --- rendezvous and concurrency across real processes ---


def test_rendezvous_releases_three_processes_together(redis_server: RedisServer, group: ProcessGroup) -> None:
    code = f"""
        import sys, time
        from kvmgr.client.redis_transport import connect_redis
        with connect_redis({redis_server.url!r}, name=sys.argv[1]) as client:
            arrived = time.time()
            index = client.rendezvous("start", 3, timeout=20)
            print(index, arrived, time.time())
    """
    lines = [line.split() for line in run_in_processes(group, code, 3)]
    assert sorted(int(index) for index, _, _ in lines) == [0, 1, 2]
    last_arrival = max(float(arrived) for _, arrived, _ in lines)
    assert all(float(released) >= last_arrival for _, _, released in lines)  # nobody left before everyone came


def test_rendezvous_times_out_when_parties_are_missing(client: RedisClient) -> None:
    started = time.monotonic()
    with pytest.raises(KvmgrError, match=r"not all 2 parties arrived within 0\.3s"):
        client.rendezvous("alone", 2, timeout=0.3)
    assert time.monotonic() - started < 3
    assert client.keys() == []  # a broken rendezvous leaves nothing behind


def test_rendezvous_of_one_returns_at_once_and_can_be_reused(client: RedisClient) -> None:
    assert client.rendezvous("solo", 1) == 0
    assert client.rendezvous("solo", 1) == 0
    assert client.size() == 0


def test_rendezvous_refuses_a_different_number_of_parties(client: RedisClient, redis_server: RedisServer) -> None:
    outcome: list[BaseException] = []
    waiting = threading.Thread(target=wait_alone, args=(redis_server, "mixed", 2, outcome))
    waiting.start()
    wait_until_keys(redis_server, 1)
    with pytest.raises(InvalidValue, match="opened for 2 parties, not 3"):
        client.rendezvous("mixed", 3, timeout=1.0)
    waiting.join()
    assert isinstance(outcome[0], KvmgrError)


def wait_until_keys(server: RedisServer, count: int) -> None:
    """Return once Redis holds more than count keys (a rendezvous has opened and keeps its state there)."""
    deadline = time.monotonic() + 5
    with admin(server) as connection:
        while connection.dbsize() <= count:
            assert time.monotonic() < deadline, "the rendezvous never opened"
            time.sleep(0.01)


def test_kvmgr_internal_keys_are_never_visible_through_the_api(client: RedisClient, redis_server: RedisServer) -> None:
    client.store("mine", "1")
    outcome: list[BaseException] = []
    waiting = threading.Thread(target=wait_alone, args=(redis_server, "hidden", 2, outcome))
    waiting.start()
    wait_until_keys(redis_server, 1)  # the rendezvous state is there...
    assert client.size() == 1  # ...but only the user's key counts
    assert client.keys() == ["mine"]
    waiting.join()
    with admin(redis_server) as connection:
        for key in connection.scan_iter():  # let kvmgr's own leftovers expire now
            if key != b"mine":
                connection.pexpire(key, 1)
    assert client.size() == 1 and client.keys() == ["mine"]


def wait_alone(server: RedisServer, name: str, parties: int, outcome: list[BaseException]) -> None:
    """Wait at a rendezvous nobody else completes; record the error it ends with."""
    with connect_redis(server.url) as lonely:
        try:
            lonely.rendezvous(name, parties, timeout=1.0)
        except KvmgrError as exc:
            outcome.append(exc)


@pytest.mark.parametrize("arguments", [("", 0), (5, 2), ("name", "2")])
def test_rendezvous_validates_its_arguments(client: RedisClient, arguments: tuple) -> None:
    with pytest.raises(InvalidValue, match="rendezvous takes a name"):
        client.rendezvous(*arguments)


def test_concurrent_cas_from_several_processes_has_exactly_one_winner(redis_server: RedisServer, group: ProcessGroup) -> None:
    code = f"""
        import sys
        from kvmgr.client.redis_transport import connect_redis
        with connect_redis({redis_server.url!r}, name=sys.argv[1]) as client:
            client.rendezvous("race", 5, timeout=20)
            print(sys.argv[1], client.cas("winner", None, sys.argv[1]))
    """
    results = dict(line.split() for line in run_in_processes(group, code, 5))
    winners = [name for name, won in results.items() if won == "True"]
    assert len(winners) == 1
    with connect_redis(redis_server.url) as checker:
        assert checker.get("winner") == winners[0]


# --- the same driver, stress and checker against Redis ---


def test_kvmgr_connect_dispatches_redis_urls(redis_server: RedisServer) -> None:
    import kvmgr

    with kvmgr.connect(redis_server.url, timeout=5.0) as client:
        assert isinstance(client, RedisClient)
        assert client.store("k", "v") == "saved"


def test_driver_runs_the_seed_scenario_on_redis_and_skips_what_is_ours(redis_server: RedisServer) -> None:
    import json
    import subprocess

    from tests.conftest import ROOT

    result = subprocess.run([sys.executable, str(ROOT / "run_driver.py"), "--target", redis_server.url, "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(result.stdout)["rows"]
    verdicts = {(row["operation"], row["result"]) for row in rows}
    assert ("quit", "SKIP") in verdicts and ("linearizable", "PASS") in verdicts
    assert [row["result"] for row in rows if row["step"] == "shutdown"] == ["SKIP"] * 3
    assert [row["actual"] for row in rows if row["step"] == "3"] == ['"updated"', '"updated"']
    again = subprocess.run([sys.executable, str(ROOT / "run_driver.py"), "--target", redis_server.url],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr  # each run has a namespace of its own: no empty database needed


def test_stress_on_redis_is_checked_for_linearizability(redis_server: RedisServer) -> None:
    import json
    import subprocess

    result = subprocess.run([sys.executable, "-m", "kvmgr", "stress", "--target", redis_server.url, "--clients", "3",
                             "--ops", "200", "--keys", "3", "--mix", "store=3,get=3,cas=2,delete=1,store_many=1,get_many=1", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["linearizable"] is True and report["errors"] == 0


def test_the_readme_acl_user_can_run_every_operation_in_database_15(redis_server: RedisServer) -> None:
    from .test_readme import readme_block

    command = readme_block("redis-acl").strip().split()
    assert command[:3] == ["ACL", "SETUSER", "kvmgr"]
    with admin(redis_server) as connection:
        connection.execute_command(*[word.replace(">PASSWORD", ">s3cret") for word in command])
    url = redis_server.url.replace("redis://", "redis://kvmgr:s3cret@").rsplit("/", 1)[0] + "/15"
    try:
        with connect_redis(url, timeout=5.0) as client:
            assert client.store("k", "v") == "saved"
            assert client.get("k") == "v" and client.exists("k") is True
            assert client.cas("k", "v", "w") is True
            assert client.store_many({"a": "1", "b": b"2"}) == {"a": "saved", "b": "saved"}
            assert client.get_many(["a", "b", "c"]) == {"a": "1", "b": b"2"}
            assert client.keys() == ["a", "b", "k"] and client.size() == 3
            assert client.delete("a") is True
            assert client.incr("n") == 1 and client.incr("n", 0.5) == 1.5 and client.decr("n", 2) == -0.5
            assert client.add("t", 1, ttl=30) is True and client.add("u", 1) is True and client.pop("u") == 1
            assert client.expire("t", 60) is True and client.ttl("t") is not None and client.persist("t") is True
            client.store("t", 2, ttl=30)
            assert client.size() == 4
            assert client.delete("n") and client.delete("t")
            with pytest.raises(KvmgrError, match="not all 2 parties"):
                client.rendezvous("alone", 2, timeout=0.2)
            assert client.size() == 2
            with client.lock("l") as lock:
                assert client.lock_locked("l") and lock.token == 1
                lock.extend(10)
            _, version = client.get_versioned("k")
            client.store("k", "x")
            value, changed = client.wait("k", version, timeout=5)
            assert value == "x" and changed > version
            assert client.queue("q").put(1) == 1 and client.queue("q").get(timeout=1) == 1 and client.queue("q").qsize() == 0
            assert client.requeue_lost("q") == 0 and client.size() == 2
    finally:
        with admin(redis_server) as connection:
            connection.execute_command("ACL", "DELUSER", "kvmgr")
            connection.execute_command("SELECT", "15")
            connection.flushdb()


def test_keys_gives_up_when_its_timeout_runs_out(redis_server: RedisServer) -> None:
    with admin(redis_server) as connection:
        for start in range(0, 200_000, 20_000):
            connection.mset({f"k{n}": b"s" for n in range(start, start + 20_000)})
    with connect_redis(redis_server.url, timeout=0.1) as client:
        started = time.monotonic()
        with pytest.raises(OutcomeUnknown, match=r"keys: SCAN .* did not finish within 0.1s"):
            client.keys()
        assert time.monotonic() - started < 2.0
    with connect_redis(redis_server.url, timeout=10.0) as client:
        assert client.keys(prefix="k1999", limit=3) == ["k1999", "k19990", "k199900"]


def test_a_missing_key_or_a_refused_command_keeps_the_connection(client: RedisClient, redis_server: RedisServer) -> None:
    client.store("here", "v")
    with admin(redis_server) as connection:
        before = connection.info("stats")["total_connections_received"]
        for _ in range(50):
            with pytest.raises(KeyNotFound):
                client.get("missing")
        connection.set("foreign", "no type tag")
        with pytest.raises(ProtocolError):
            client.get("foreign")
        assert client.get("here") == "v"
        assert connection.info("stats")["total_connections_received"] - before <= 1


# --- coordination: versions, wait, locks, queues ---


def version_of(client: RedisClient, key: str) -> int:
    return client.get_versioned(key)[1]


def test_every_change_takes_the_next_revision_and_no_op_writes_take_none(client: RedisClient) -> None:
    assert client.get_versioned("k") == (None, 0)  # never written
    changes = [
        lambda: client.store("k", 1), lambda: client.incr("k"), lambda: client.decr("k", 0.5), lambda: client.cas("k", 1.5, "s"),
        lambda: client.expire("k", 60), lambda: client.persist("k"), lambda: client.delete("k"), lambda: client.add("k", 2),
        lambda: client.pop("k"), lambda: client.store("k", 3, ttl=60),
    ]
    seen = [0]
    for change in changes:
        change()
        seen.append(version_of(client, "k"))
    assert seen == sorted(seen) and len(set(seen)) == len(seen), seen
    assert client.get_versioned("k") == (3, seen[-1])
    no_ops = [
        lambda: client.delete("absent"), lambda: client.add("k", 4), lambda: client.cas("k", 99, 5),
        lambda: client.expire("absent", 1), lambda: client.persist("absent"), lambda: client.pop("absent", None),
    ]
    client.store("text", "t")
    revision = version_of(client, "text")
    for no_op in no_ops:
        no_op()
    with pytest.raises(WrongType):
        client.incr("text")
    client.store("probe", 0)
    assert version_of(client, "probe") == revision + 1  # nothing above took a revision
    assert version_of(client, "k") == seen[-1] and version_of(client, "absent") == 0


def test_a_batch_is_one_revision_and_a_deleted_key_keeps_its_version(client: RedisClient) -> None:
    client.store_many({"a": 1, "b": 2})
    assert version_of(client, "a") == version_of(client, "b") > 0
    client.delete("a")
    deleted = version_of(client, "a")
    assert deleted > version_of(client, "b") and client.get_versioned("a") == (None, deleted)
    client.store("c", 1)
    assert version_of(client, "a") == deleted  # a tombstone: not 0, not moving


def test_an_int_increment_stays_exact_at_the_edge_of_64_bits(client: RedisClient) -> None:
    client.store("n", 2**63 - 2)
    before = version_of(client, "n")
    assert client.incr("n") == 2**63 - 1 and client.get("n") == 2**63 - 1
    assert client.decr("n", 2**63 - 1) == 0 and version_of(client, "n") == before + 2
    client.store("n", 2**63 - 1)
    with pytest.raises(InvalidValue):
        client.incr("n")
    assert client.get("n") == 2**63 - 1


def test_an_expiry_nobody_saw_is_recorded_as_a_change_when_read(client: RedisClient, redis_server: RedisServer) -> None:
    client.store("brief", "v", ttl=0.05)
    stored = version_of(client, "brief")
    deadline = time.monotonic() + 5
    with admin(redis_server) as connection:
        while connection.exists("brief"):
            assert time.monotonic() < deadline, "the key never expired"
            time.sleep(0.01)
    expired = version_of(client, "brief")
    assert expired > stored and version_of(client, "brief") == expired  # recorded once


def test_wait_needs_no_keyspace_notifications_and_does_not_poll(client: RedisClient, redis_server: RedisServer) -> None:
    with admin(redis_server) as connection:
        assert connection.config_get("notify-keyspace-events")["notify-keyspace-events"] == ""
        commands = connection.info("stats")["total_commands_processed"]
        started = time.monotonic()
        with pytest.raises(WaitTimeout, match=r"did not change within 1\.5s"):
            client.wait("quiet", 0, timeout=1.5)
        assert 1.4 < time.monotonic() - started < 4
        assert connection.info("stats")["total_commands_processed"] - commands < 20


def change_later(url: str, key: str, delay: float) -> None:
    time.sleep(delay)
    with connect_redis(url) as other:
        other.incr(key)


def test_wait_wakes_on_an_incr_and_on_an_expiry_set_meanwhile(client: RedisClient, redis_server: RedisServer) -> None:
    client.store("count", 1)
    version = version_of(client, "count")
    writer = threading.Thread(target=change_later, args=(redis_server.url, "count", 0.2))
    writer.start()
    started = time.monotonic()
    assert client.wait("count", version, timeout=10)[0] == 2
    writer.join()
    assert time.monotonic() - started < 5
    version = version_of(client, "count")
    client.expire("count", 0.3)  # a change itself; the expiry after it is another
    expiring = version_of(client, "count")
    assert expiring > version
    value, expired = client.wait("count", expiring, timeout=10)
    assert value is None and expired > expiring and time.monotonic() - started < 8


def test_a_release_wakes_a_waiter_at_once_not_at_the_end_of_the_lease(client: RedisClient) -> None:
    holder = client.lock("handoff", lease=60)
    holder.acquire()
    granted: list[float] = []

    def wait_for_it() -> None:
        with client.session() as other:
            other.lock("handoff", lease=60).acquire(timeout=30)
            granted.append(time.monotonic())

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    time.sleep(0.3)  # the waiter is blocked in BLPOP; if it were not, it would be granted late, not early
    released = time.monotonic()
    holder.release()
    waiter.join(30)
    assert granted and granted[0] - released < 2, "the waiter slept on instead of being woken by the release"


def test_acquire_with_timeout_zero_tries_once(client: RedisClient) -> None:
    holder = client.lock("once", lease=60)
    assert holder.acquire(timeout=0) > 0
    started = time.monotonic()
    with pytest.raises(LockTimeout, match="within 0s"):
        client.lock("once").acquire(timeout=0)
    assert time.monotonic() - started < 1
    holder.release()


def test_a_get_whose_reply_was_lost_leaves_its_item_in_a_processing_list_to_requeue(
    client: RedisClient, redis_server: RedisServer,
) -> None:
    queue = client.queue("jobs")
    for item in ("first", "second", "third"):
        queue.put(item)
    with admin(redis_server) as lost, admin(redis_server) as busy:  # two consumers that received an item, and no more
        lost_list = processing_list("jobs", int(lost.client_id()))
        busy_list = processing_list("jobs", int(busy.client_id()))
        for connection, moved in ((lost, lost_list), (busy, busy_list)):
            client._script(connection, "queue_take", [QUEUE_PREFIX + b"jobs", moved, INTERNAL_INDEX], [])
        lost.close()  # its reply never arrived: the item sits in its processing list
        assert queue.qsize() == 1 and client.size() == 0 and client.keys() == []
        deadline = time.monotonic() + 5
        while client.requeue_lost("jobs") == 0:  # Redis sees the close a moment later
            assert time.monotonic() < deadline, "the lost item was never requeued"
            time.sleep(0.01)
        assert queue.qsize() == 2 and queue.get(timeout=1) == "first"  # back at the head
        assert busy.llen(busy_list) == 1 and client.requeue_lost("jobs") == 0  # a connected consumer's item stays
        assert not busy.exists(lost_list)


def test_coordination_keys_stay_hidden(client: RedisClient) -> None:
    client.store("mine", 1)
    with client.lock("l"):
        client.queue("q").put("job")
        client.get_versioned("mine")
        with pytest.raises(WaitTimeout):
            client.wait("mine", version_of(client, "mine"), timeout=0.05)
        assert client.keys() == ["mine"] and client.size() == 1
    assert client.queue("q").get(timeout=1) == "job"
    assert client.keys() == ["mine"] and client.size() == 1
