"""The Python API under bad conditions: unreachable, wrong key, a hung server. Nothing ever hangs."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

import kvmgr
from kvmgr.errors import AuthenticationFailed, ConfigError, OutcomeUnknown, ServerUnavailable
from kvmgr.tools.processes import ProcessGroup, ServerProcess, suspend


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_server_raises_server_unavailable() -> None:
    with pytest.raises(ServerUnavailable, match="cannot reach kvmgr server"):
        kvmgr.connect(f"127.0.0.1:{free_port()}", authkey=b"k", timeout=1.0)


def test_wrong_authkey_raises_authentication_failed(server: ServerProcess) -> None:
    with pytest.raises(AuthenticationFailed, match="rejected the authkey"):
        kvmgr.connect(server.address_text, authkey=b"not-the-key", timeout=2.0)


def test_bad_address_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="bad address"):
        kvmgr.connect("no-port-here", authkey=b"k")


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "redis://127.0.0.1:{port}/0"])
def test_silent_peer_times_out_instead_of_hanging(address: str) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        with pytest.raises(ServerUnavailable, match="timed out"):
            kvmgr.connect(address.format(port=silent.getsockname()[1]), authkey=b"k", timeout=0.5)
        assert time.monotonic() - started < 5


def test_hung_server_mid_session_gives_outcome_unknown(dedicated_backend: tuple) -> None:
    process, connect = dedicated_backend
    client = connect(timeout=0.5)
    client.store("k", "v")
    suspend(process)
    try:
        started = time.monotonic()
        with pytest.raises(OutcomeUnknown, match="may or may not have taken effect"):
            client.cas("k", "v", "v2")  # never retried: the outcome stays unknown
        assert time.monotonic() - started < 5
    finally:
        process.resume()
    assert client.get("k") in ("v", "v2")
    client.close()


def test_client_reconnects_by_itself_after_a_server_restart(group: ProcessGroup, tmp_path: Path) -> None:
    path = str(tmp_path / "kvmgr.sock")
    server = group.start_server(path)
    client = kvmgr.connect(path, authkey=server.authkey.encode(), timeout=2.0)
    client.store("k", "v")
    server.process.terminate()
    assert server.process.wait(timeout=2) == 0
    group.start_server(path, server.authkey)
    assert client.cas("k", None, "after restart") is True  # a call that is never retried: the reconnect came first
    client.close()
