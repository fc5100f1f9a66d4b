"""No size cliffs: every call the documented limits allow gets its answer, and limits that cannot work together are refused."""

from __future__ import annotations

import subprocess

import pytest

import kvmgr
from kvmgr.errors import InvalidValue
from kvmgr.tools.processes import ProcessGroup, child_environment, python_module

MiB = 1024 * 1024


def test_keys_answers_even_when_the_reply_is_larger_than_64_mib(client: kvmgr.Client) -> None:
    padding = "k" * 1000
    for batch in range(70):  # 70,000 keys of 1 KB: a 70 MB reply
        client.store_many({f"{padding}{batch:03d}{n:03d}": "" for n in range(1000)})
    keys = client.keys()
    assert len(keys) == 70_000 and keys == sorted(keys)
    assert client.keys(prefix=f"{padding}069", limit=5) == [f"{padding}069{n:03d}" for n in range(5)]
    assert sum(1 for _ in client.iter_keys(page=20_000)) == 70_000


def test_get_many_of_five_values_of_16_mib_is_answered(client: kvmgr.Client) -> None:
    for n in range(5):
        client.store(f"big{n}", bytes([n]) * (16 * MiB))
    values = client.get_many([f"big{n}" for n in range(5)])
    assert [len(values[f"big{n}"]) for n in range(5)] == [16 * MiB] * 5
    assert values["big4"][:3] == b"\x04\x04\x04"


def serve(*options: str) -> subprocess.CompletedProcess:
    return subprocess.run(python_module("kvmgr", "serve", "--address", "127.0.0.1:0", *options),
                          env=child_environment("key"), capture_output=True, text=True, timeout=30)


def test_a_value_limit_the_request_limit_cannot_carry_is_refused_at_start() -> None:
    result = serve("--max-value-bytes", str(100 * MiB), "--max-request-bytes", str(64 * MiB))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"kvmgr serve: error: --max-request-bytes {64 * MiB} is too small for --max-value-bytes {100 * MiB}: "
        f"a cas carries two values and a key, so it needs at least {200 * MiB + 1024 + 64 * 1024}"
    ]


def test_a_value_limit_above_64_mib_raises_the_request_limit_with_it(group: ProcessGroup) -> None:
    server = group.start_server(extra_args=["--max-value-bytes", str(40 * MiB)])
    with kvmgr.connect(server.address_text, authkey=server.authkey.encode(), timeout=30) as client:
        assert client.store("huge", b"h" * (40 * MiB)) == "saved"
        assert client.cas("huge", b"h" * (40 * MiB), b"i" * (40 * MiB)) is True
        assert len(client.get("huge")) == 40 * MiB


def test_a_request_over_the_servers_limit_is_refused_before_it_is_sent(group: ProcessGroup) -> None:
    server = group.start_server(extra_args=["--max-value-bytes", "1000", "--max-request-bytes", "100000"])
    with kvmgr.connect(server.address_text, authkey=server.authkey.encode()) as client:
        with pytest.raises(InvalidValue, match=r"the request is [0-9]+ bytes; the server accepts at most 100000"):
            client.store_many({f"k{n}": f"{n:03d}" + "v" * 897 for n in range(200)})
        assert client.store("k", "still serving") == "saved"
        assert client.size() == 1


def test_a_timeout_under_a_microsecond_still_times_out() -> None:
    import os
    import socket

    from kvmgr.protocol import wire

    ours, theirs = socket.socketpair()
    with ours, theirs:
        wire.bound_blocking_calls(ours, 5e-7)  # the kernel would read (0 s, 0 µs) as "wait forever"
        with pytest.raises(BlockingIOError):
            os.read(ours.fileno(), 1)


def test_a_timeout_option_below_a_millisecond_is_a_usage_error() -> None:
    result = subprocess.run(python_module("kvmgr.tools.actor", "--name=alice", "--key=k", "--timeout", "0.0000001"),
                            env=child_environment("key"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith("expected a number of seconds from 0.001 to 86400, got '0.0000001'")
