"""The one-shot commands (get, set, del, keys, incr), dump/load between the backends, and kvmgr info, run as real processes."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import kvmgr
from kvmgr.client.operations import Operations
from kvmgr.protocol.values import Value, same_value, to_json
from kvmgr.tools.info_command import render
from kvmgr.tools.processes import ProcessGroup, ServerProcess, child_environment, python_module, read_line
from kvmgr.tools.redis_server import free_loopback_port

SAMPLES: dict[str, Value] = {
    "empty": "", "text": "hello", "unicode": "ünïcödé ☃", "digits": "1", "newline": "a\nb", "looks-json": '{"$bytes": "00"}',
    "bytes-empty": b"", "bytes": b"\x00\xff\n", "zero": 0, "negative": -1, "int64": 2**63 - 1, "int64-min": -(2**63),
    "bigint": 2**100, "float": 1.5, "negative-zero": -0.0, "huge": 1e308, "tiny": 5e-324, "true": True, "false": False,
    "list-empty": [], "list": [1, "a", b"b", 2.5, [True]], "tuple-empty": (), "tuple": (1, (2, (3, b"x"))),
    "dict-empty": {}, "dict": {"a": 1, "b": [False, (1,)]}, "tag-like": {"$bytes": "not hex"}, "dict-tag": {"$dict": {"x": 1}},
    "nested": [{"$tuple": [1]}, {"k": {"$bytes": b"\x01"}}],
}
TTLS = {"text": 100, "bytes": 50.5, "tuple": 1000}
"""Keys of SAMPLES stored with these ttls (seconds)."""


@dataclass
class Target:
    """A running server of one backend: its address for --address, the environment with its authkey, and a client."""

    address: str
    env: dict[str, str]
    client: Operations


@pytest.fixture
def manager(server: ServerProcess) -> Iterator[Target]:
    """A fresh kvmgr server."""
    with kvmgr.connect(server.address_text, authkey=server.authkey.encode()) as client:
        yield Target(server.address_text, child_environment(server.authkey), client)


@pytest.fixture
def redis(redis_url: str) -> Iterator[Target]:
    """The session's Redis, emptied."""
    from kvmgr.client.redis_transport import connect_redis

    with connect_redis(redis_url, timeout=5.0) as client:
        client.flush()
        yield Target(redis_url, child_environment(None), client)


@pytest.fixture(params=["manager", "redis"])
def target(request: pytest.FixtureRequest) -> Target:
    """A server of each backend."""
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def kvmgr_command(target: Target | None, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run `python -m kvmgr args --address ADDRESS` to its end."""
    where = ["--address", target.address] if target is not None else []
    env = target.env if target is not None else child_environment(None)
    argv = python_module("kvmgr", *args, *where)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, input=stdin)


def json_text(value: Value) -> str:
    """A value's JSON form as set --json takes it."""
    return json.dumps(to_json(value))


# --- get, set, del, keys, incr ---


def test_set_stores_a_str_and_get_shows_its_type(target: Target) -> None:
    assert kvmgr_command(target, "set", "n", "1").stdout == "saved\n"
    assert kvmgr_command(target, "set", "n", "1", "--json").stdout == '"updated"\n'
    assert same_value(target.client.get("n"), 1)
    kvmgr_command(target, "set", "s", "1")
    got = [kvmgr_command(target, "get", key) for key in ("n", "s")]
    assert [(r.stdout, r.returncode) for r in got] == [("1\n", 0), ("'1'\n", 0)]
    assert same_value(target.client.get("s"), "1")


ONE_OF_EACH_TYPE = ("unicode", "bytes", "bigint", "negative-zero", "true", "list", "tuple", "dict", "tag-like", "nested")
"""Samples that cover every value type (the dump/load tests run all of them; each command here is a process)."""


def test_every_value_type_goes_in_and_out_as_json(target: Target) -> None:
    for key in ONE_OF_EACH_TYPE:
        result = kvmgr_command(target, "set", key, json_text(SAMPLES[key]), "--json")
        assert result.returncode == 0, result.stderr
    for key in ONE_OF_EACH_TYPE:
        value = SAMPLES[key]
        assert same_value(target.client.get(key), value), key
        as_json = kvmgr_command(target, "get", key, "--json")
        assert json.loads(as_json.stdout) == to_json(value)
        assert kvmgr_command(target, "get", key).stdout == repr(value) + "\n"


def test_set_with_ttl_expires(target: Target) -> None:
    assert kvmgr_command(target, "set", "cache", "x", "--ttl", "30").returncode == 0
    ttl = target.client.ttl("cache")
    assert ttl is not None and 25 < ttl <= 30
    kvmgr_command(target, "set", "brief", "x", "--ttl", "0.2")
    deadline = time.monotonic() + 10
    while target.client.exists("brief"):
        assert time.monotonic() < deadline, "a key set with --ttl 0.2 was still there after 10 s"
        time.sleep(0.02)
    missing = kvmgr_command(target, "get", "brief")
    assert (missing.returncode, missing.stderr) == (1, "kvmgr get: error: key not found: brief\n")


def test_missing_key_exits_1_with_one_line(target: Target) -> None:
    for command in ("get", "del"):
        result = kvmgr_command(target, command, "nothing-here")
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == f"kvmgr {command}: error: key not found: nothing-here\n"


def test_del_removes_the_key(target: Target) -> None:
    target.client.store("k", b"v")
    assert kvmgr_command(target, "del", "k").stdout == "deleted\n"
    assert not target.client.exists("k")
    target.client.store("k", b"v")
    assert kvmgr_command(target, "del", "k", "--json").stdout == "true\n"


def test_keys_lists_sorted_keys_by_prefix(target: Target) -> None:
    target.client.store_many({"user:2": "b", "user:1": "a", "other": 1, "user:3 x": ()})
    assert kvmgr_command(target, "keys").stdout == "other\nuser:1\nuser:2\nuser:3 x\n"
    assert json.loads(kvmgr_command(target, "keys", "--prefix", "user:", "--json").stdout) == ["user:1", "user:2", "user:3 x"]
    assert kvmgr_command(target, "keys", "--prefix", "none").stdout == ""


def test_incr_adds_ints_and_floats(target: Target) -> None:
    assert kvmgr_command(target, "incr", "hits").stdout == "1\n"
    assert kvmgr_command(target, "incr", "hits", "41").stdout == "42\n"
    assert kvmgr_command(target, "incr", "hits", "-2").stdout == "40\n"
    assert kvmgr_command(target, "incr", "hits", "0.5", "--json").stdout == "40.5\n"
    assert same_value(target.client.get("hits"), 40.5)


def test_incr_on_a_str_exits_2_and_changes_nothing(target: Target) -> None:
    target.client.store("name", "x")
    result = kvmgr_command(target, "incr", "name")
    assert result.returncode == 2
    assert result.stderr.startswith("kvmgr incr: error: ") and result.stderr.count("\n") == 1
    assert "str" in result.stderr
    assert same_value(target.client.get("name"), "x")


@pytest.mark.parametrize(("args", "message"), [
    (("set", "k", "{x", "--json"), "VALUE is not JSON"),
    (("set", "k", "null", "--json"), "VALUE is not a kvmgr value: null is not a value"),
    (("set", "k", '{"$bytes": "zz"}', "--json"), "VALUE is not a kvmgr value"),
    (("set", "k", "NaN", "--json"), "VALUE is not a kvmgr value"),
    (("set", "k", "v", "--ttl", "0"), "expected a number of seconds above 0"),
    (("incr", "k", "one"), "expected an int or a finite float"),
])
def test_bad_input_exits_2_with_one_line(target: Target, args: tuple[str, ...], message: str) -> None:
    result = kvmgr_command(target, *args)
    assert result.returncode == 2
    *usage, error = result.stderr.splitlines()  # argparse's own errors come after the usage, as for every command
    assert error.startswith(f"kvmgr {args[0]}: error: ") and message in error
    assert all(line.startswith(("usage: ", " ")) for line in usage)
    assert not target.client.exists("k")


def test_a_key_the_server_refuses_exits_2(target: Target) -> None:
    result = kvmgr_command(target, "set", "k" * 5000, "v")
    assert result.returncode == 2 and result.stderr.count("\n") == 1


@pytest.mark.parametrize("command", [("get", "k"), ("set", "k", "v"), ("del", "k"), ("keys",), ("incr", "k"), ("dump",)])
def test_unreachable_server_exits_3(command: tuple[str, ...]) -> None:
    port = free_loopback_port()
    for address in (f"127.0.0.1:{port}", f"redis://127.0.0.1:{port}/0"):
        argv = python_module("kvmgr", *command, "--address", address, "--timeout", "2")
        result = subprocess.run(argv, env=child_environment("some-key"), capture_output=True, text=True, timeout=60)
        assert result.returncode == 3, result.stderr
        assert result.stderr.startswith(f"kvmgr {command[0]}: error: cannot reach") and result.stderr.count("\n") == 1


def test_wrong_authkey_exits_3(group: ProcessGroup) -> None:
    server = group.start_server()
    argv = python_module("kvmgr", "get", "k", "--address", server.address_text)
    result = subprocess.run(argv, env=child_environment("not-the-key"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 3 and "rejected the authkey" in result.stderr


def test_target_is_the_same_flag_as_address(redis: Target) -> None:
    argv = python_module("kvmgr", "set", "via-target", "1", "--target", redis.address)
    assert subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout == "saved\n"
    assert same_value(redis.client.get("via-target"), "1")


# --- dump and load ---


def fill(client: Operations) -> None:
    """Every sample value, some with a ttl."""
    for key, value in SAMPLES.items():
        client.store(key, value, TTLS.get(key))


def assert_holds_the_samples(client: Operations) -> None:
    """The client's store holds exactly the samples, with their ttls (less the time since)."""
    assert client.keys() == sorted(SAMPLES)
    for key, value in SAMPLES.items():
        assert same_value(client.get(key), value), key
        ttl = client.ttl(key)
        if key in TTLS:
            assert ttl is not None and TTLS[key] - 30 < ttl <= TTLS[key], (key, ttl)
        else:
            assert ttl is None, key


def without_ttls(dump: str) -> list[dict]:
    """The dump's records with their ttls replaced by True (they count down between dumps)."""
    records = [json.loads(line) for line in dump.splitlines()]
    return [{**record, "ttl": True} if "ttl" in record else record for record in records]


@pytest.mark.parametrize("direction", ["manager to redis", "redis to manager"])
def test_dump_then_load_moves_every_value_type_between_backends(
    direction: str, manager: Target, redis: Target, tmp_path: Path,
) -> None:
    source, destination = (manager, redis) if direction == "manager to redis" else (redis, manager)
    fill(source.client)
    dumped = kvmgr_command(source, "dump")
    assert dumped.returncode == 0, dumped.stderr
    assert dumped.stderr == f"kvmgr dump: {len(SAMPLES)} keys ({len(TTLS)} with a ttl)\n"
    assert dumped.stdout.isascii() and len(dumped.stdout.splitlines()) == len(SAMPLES)
    path = tmp_path / "backup.jsonl"
    path.write_text(dumped.stdout)
    loaded = kvmgr_command(destination, "load", str(path))
    assert loaded.stdout == f"loaded {len(SAMPLES)} keys ({len(TTLS)} with a ttl) from {path}\n"
    assert_holds_the_samples(destination.client)
    assert without_ttls(kvmgr_command(destination, "dump").stdout) == without_ttls(dumped.stdout)


def test_dump_records_are_documented_json(target: Target) -> None:
    target.client.store("b", b"\x00", 10)
    target.client.store("t", (1, "x"))
    lines = kvmgr_command(target, "dump").stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert records[1] == {"key": "t", "value": {"$tuple": [1, "x"]}}
    assert records[0]["key"] == "b" and records[0]["value"] == {"$bytes": "00"} and 0 < records[0]["ttl"] <= 10


def test_dump_prefix_and_load_from_stdin(target: Target) -> None:
    target.client.store_many({"a:1": 1, "a:2": [2], "b:1": "x"})
    dumped = kvmgr_command(target, "dump", "--prefix", "a:").stdout
    assert [json.loads(line)["key"] for line in dumped.splitlines()] == ["a:1", "a:2"]
    target.client.delete("a:1")
    target.client.store("a:2", "changed")
    loaded = kvmgr_command(target, "load", "-", "--json", stdin=dumped)
    assert json.loads(loaded.stdout) == {"loaded": 2, "expiring": 0}
    assert same_value(target.client.get_many(["a:1", "a:2", "b:1"]), {"a:1": 1, "a:2": [2], "b:1": "x"})


def test_dump_into_a_pipe_closed_early_stops_quietly(target: Target, group: ProcessGroup) -> None:
    target.client.store_many({f"key{i:05}": "x" * 100 for i in range(3000)})
    process = group.launch(python_module("kvmgr", "dump", "--address", target.address), target.env)
    assert json.loads(read_line(process, time.monotonic() + 20) or "null")["key"] == "key00000"
    process.stdout.close()
    assert process.wait(20) == 1
    assert process.stderr.read() == b""


GOOD_LINE = '{"key": "good", "value": 1}'


@pytest.mark.parametrize(("bad_line", "problem"), [
    ("{not json", "not JSON"),
    ('["key", "value"]', 'expected an object with "key", "value" and optionally "ttl"'),
    ('{"key": "k"}', 'expected an object with "key", "value"'),
    ('{"key": "k", "value": 1, "extra": 2}', 'expected an object with "key", "value"'),
    ('{"key": 5, "value": 1}', '"key" must be a non-empty string'),
    ('{"key": "", "value": 1}', '"key" must be a non-empty string'),
    ('{"key": "k", "value": null}', '"value" is not a kvmgr value: null is not a value'),
    ('{"key": "k", "value": {"$set": [1]}}', "unknown tag '$set'"),
    ('{"key": "k", "value": 1, "ttl": 0}', '"ttl" must be a number of seconds above 0'),
    ('{"key": "k", "value": 1, "ttl": "5"}', '"ttl" must be a number of seconds above 0'),
    ('{"key": "good", "value": 2}', "key 'good' is also on line 1"),
])
def test_load_names_the_malformed_line_and_stores_nothing(target: Target, tmp_path: Path, bad_line: str, problem: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{GOOD_LINE}\n\n{bad_line}\n{GOOD_LINE.replace('good', 'later')}\n")
    result = kvmgr_command(target, "load", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"kvmgr load: error: {path}:3: ") and problem in result.stderr
    assert result.stderr.count("\n") == 1
    assert target.client.size() == 0


def test_load_of_bytes_that_are_not_utf8_names_the_line(target: Target, tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(GOOD_LINE.encode() + b'\n{"key": "\xe9", "value": 1}\n')
    result = kvmgr_command(target, "load", str(path))
    assert (result.returncode, result.stderr) == (2, f"kvmgr load: error: {path}:2: not UTF-8\n")


def test_load_of_a_missing_file_exits_2(target: Target, tmp_path: Path) -> None:
    result = kvmgr_command(target, "load", str(tmp_path / "absent.jsonl"))
    assert result.returncode == 2 and "cannot read" in result.stderr and "No such file" in result.stderr


def test_load_names_the_line_the_server_refuses(group: ProcessGroup, tmp_path: Path) -> None:
    server = group.start_server(extra_args=("--max-value-bytes", "100"))
    target = Target(server.address_text, child_environment(server.authkey), kvmgr.connect(server.address_text, server.authkey.encode()))
    path = tmp_path / "big.jsonl"
    path.write_text(f'{GOOD_LINE}\n{json.dumps({"key": "big", "value": "x" * 200})}\n')
    result = kvmgr_command(target, "load", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"kvmgr load: error: {path}:2: refused: ") and "(1 key before it loaded)" in result.stderr
    target.client.close()


# --- info ---

SAMPLE_INFO = {
    "uptime_seconds": 3723.5, "version": "0.1.0", "protocol_version": 3, "address": "127.0.0.1:50000", "durable": True,
    "fsync": "batch", "keys": 1234, "expiring_keys": 12, "rss_bytes": 47_812_608, "connected_clients": 3,
    "max_connections": 1024, "operations": {"get": 10, "store": 5}, "errors": {"get": 2, "cas": 1}, "ops_per_second": 1234.5,
    "pending_commits": 0, "locks_held": 1, "lock_waiters": 0, "queues": {"jobs": 3},
}


def test_info_table_shows_every_field_readably() -> None:
    lines = render(SAMPLE_INFO).splitlines()
    assert "uptime_seconds     3,723.5 (1h 2m 3s)" in lines
    assert "rss_bytes          47,812,608 (45.6 MiB)" in lines
    assert "durable            yes" in lines
    assert "queues             jobs 3" in lines
    table = lines[lines.index("") + 1:]
    assert [line.split() for line in table[2:]] == [["cas", "0", "1"], ["get", "10", "2"], ["store", "5", "0"]]
    for field in SAMPLE_INFO.keys() - {"operations", "errors"}:
        assert any(line.startswith(field + " ") for line in lines), field


def test_info_json_has_the_documented_fields(target: Target) -> None:
    target.client.store("k", 1, 60)
    result = kvmgr_command(target, "info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert {"uptime_seconds", "version", "keys", "expiring_keys", "connected_clients", "operations", "errors"} <= info.keys()
    assert info["keys"] == 1 and info["expiring_keys"] == 1
    plain = kvmgr_command(target, "info").stdout
    assert any(line.split()[:2] == ["keys", "1"] for line in plain.splitlines())


def test_info_watch_redraws_until_ctrl_c(target: Target, group: ProcessGroup) -> None:
    process = group.launch(python_module("kvmgr", "info", "--json", "--watch", "0.1", "--address", target.address), target.env)
    deadline = time.monotonic() + 20
    for _ in range(3):
        line = read_line(process, deadline)
        assert line is not None, "kvmgr info --watch printed fewer than three lines"
        assert "uptime_seconds" in json.loads(line)
    process.send_signal(signal.SIGINT)
    assert process.wait(20) == 0


def test_info_of_an_unreachable_server_exits_3() -> None:
    argv = python_module("kvmgr", "info", "--address", f"127.0.0.1:{free_loopback_port()}")
    result = subprocess.run(argv, env=child_environment("k"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 3 and result.stderr.startswith("kvmgr info: error: cannot reach")
    assert result.stderr.count("\n") == 1


def test_info_watch_says_in_one_line_when_the_server_goes(group: ProcessGroup) -> None:
    server = group.start_server()
    argv = python_module("kvmgr", "info", "--watch", "0.1", "--address", server.address_text)
    process = group.launch(argv, child_environment(server.authkey))
    deadline = time.monotonic() + 20
    while (line := read_line(process, deadline)) is not None and not line.startswith("uptime_seconds"):
        pass
    assert line is not None, "no table within 20 s"
    server.process.kill()
    server.process.wait(10)
    while (line := read_line(process, deadline)) is not None and not line.startswith("kvmgr info: server unreachable"):
        pass
    assert line is not None, "no unreachable line within 20 s of the server's death"
    process.send_signal(signal.SIGINT)
    assert process.wait(20) == 0
