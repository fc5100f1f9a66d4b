"""The server process: the stdlib client contract, quit and signals, addresses and authkeys."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from multiprocessing.managers import BaseManager
from pathlib import Path

import pytest

import kvmgr
from kvmgr.errors import KeyNotFound, ServerUnavailable
from kvmgr.tools.driver import is_listening
from kvmgr.tools.processes import ProcessGroup, ServerProcess, child_environment, python_module


def stdlib_store(server: ServerProcess):
    """The wire contract: a client written with nothing but the standard library."""

    class M(BaseManager):
        pass

    M.register("get_store")
    manager = M(address=server.address, authkey=server.authkey.encode())
    manager.connect()
    return manager.get_store()


def test_stdlib_base_manager_client_works(server: ServerProcess) -> None:
    store = stdlib_store(server)
    assert store.store("foo", "bar") == "saved"
    assert store.store("foo", "baz") == "updated"
    assert store.get("foo") == "baz"
    with pytest.raises(KeyNotFound):
        store.get("nope")


def test_stdlib_client_and_kvmgr_client_share_one_store(server: ServerProcess, client: kvmgr.Client) -> None:
    stdlib_store(server).store("shared", "from-stdlib")
    assert client.get("shared") == "from-stdlib"


def test_quit_exits_zero_within_two_seconds_and_stops_listening(server: ServerProcess, client: kvmgr.Client) -> None:
    assert client.quit() == "Server Quitting..!"
    assert server.process.wait(timeout=2) == 0
    assert not is_listening(server.address)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_shut_down_gracefully(server: ServerProcess, client: kvmgr.Client, signum: int) -> None:
    client.store("k", "v")
    server.process.send_signal(signum)
    assert server.process.wait(timeout=2) == 0
    assert not is_listening(server.address)


def test_unix_socket_address(group: ProcessGroup, tmp_path: Path) -> None:
    path = str(tmp_path / "kvmgr.sock")
    server = group.start_server(path)
    assert server.address_text == path
    with kvmgr.connect(path, authkey=server.authkey.encode()) as client:
        assert client.store("k", "v") == "saved"
        client.quit()
    assert server.process.wait(timeout=2) == 0
    assert not os.path.exists(path)


def test_port_zero_prints_the_real_port(server: ServerProcess) -> None:
    host, port = server.address
    assert host == "127.0.0.1" and port > 0
    assert is_listening(server.address)


def test_refuses_non_loopback_without_an_explicit_key(tmp_path: Path) -> None:
    env = child_environment(None, {"XDG_CONFIG_HOME": str(tmp_path)})
    env.pop("KVMGR_AUTHKEY", None)
    result = subprocess.run(python_module("kvmgr", "serve", "--address", "0.0.0.0:0"), env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "refusing to listen on non-loopback" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_generated_authkey_is_private_and_used_by_clients(group: ProcessGroup, tmp_path: Path) -> None:
    env = child_environment(None, {"XDG_CONFIG_HOME": str(tmp_path)})
    env.pop("KVMGR_AUTHKEY", None)
    process = group.launch(python_module("kvmgr", "serve", "--address", "127.0.0.1:0"), env)
    ready = process.stdout.readline().decode()
    assert ready.startswith("kvmgr listening on ")
    key_file = tmp_path / "kvmgr" / "authkey"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert str(key_file) in process.stderr.readline().decode()
    address = ready.removeprefix("kvmgr listening on ").strip()
    result = subprocess.run(python_module("kvmgr.tools.actor", "--name", "alice", "--address", address, "--key=k", "--value=v"),
                            env=env, capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "Saved Successfully for key:k"


def test_authkey_file_option(group: ProcessGroup, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("file-secret\n")
    env = child_environment(None)
    env.pop("KVMGR_AUTHKEY", None)
    process = group.launch(python_module("kvmgr", "serve", "--address", "127.0.0.1:0", "--authkey-file", str(key_file)), env)
    address = process.stdout.readline().decode().removeprefix("kvmgr listening on ").strip()
    with kvmgr.connect(address, authkey_file=key_file) as client:
        assert client.store("k", "v") == "saved"


def test_address_in_use_is_one_clear_line(server: ServerProcess) -> None:
    result = subprocess.run(python_module("kvmgr", "serve", "--address", server.address_text),
                            env=child_environment(server.authkey), capture_output=True, text=True, timeout=30)
    assert result.returncode == 3
    assert result.stderr.strip().startswith("kvmgr serve: error: cannot listen on")
    assert "Traceback" not in result.stderr


def test_other_clients_get_a_clear_error_after_quit(server: ServerProcess, client: kvmgr.Client) -> None:
    other = kvmgr.connect(server.address_text, authkey=server.authkey.encode(), timeout=2.0)
    assert client.quit() == "Server Quitting..!"
    assert server.process.wait(timeout=2) == 0
    with pytest.raises(ServerUnavailable):
        other.get("k")
    other.close()


class Gadget:
    """A class the server must never unpickle."""

    def __reduce__(self):
        return (print, ("the server ran code",))


def test_server_unpickles_plain_data_only(server: ServerProcess, client: kvmgr.Client) -> None:
    import pickle

    from kvmgr.client.manager import open_connection
    from kvmgr.protocol import wire

    conn = open_connection(server.address, server.authkey.encode(), 2.0)
    conn.send_bytes(wire.dump((None, wire.OPEN_STORE, (), {})))
    _, ident = wire.load_reply(conn.recv_bytes())
    conn.send_bytes(pickle.dumps((ident, "store", ("k", Gadget()), {})))
    kind, error = wire.load_reply(conn.recv_bytes())
    assert kind == wire.ERROR and "refused to unpickle builtins.print" in str(error)
    conn.close()
    assert client.store("k", "still serving") == "saved"


def test_a_peer_trickling_bytes_is_cut_off_at_the_handshake_deadline(group: ProcessGroup) -> None:
    import socket
    import time

    server = group.start_server(extra_args=["--handshake-timeout", "1"])
    with socket.create_connection(server.address, timeout=10) as peer:
        peer.recv(4096)  # the server's challenge
        started = time.monotonic()
        peer.sendall(b"\x00\x00\x00\x40")  # an answer of 64 bytes is coming...
        try:
            for _ in range(64):  # ...one byte every 0.2 s: each read is quick, the whole would take 12.8 s
                peer.sendall(b"x")
                time.sleep(0.2)
        except OSError:
            pass  # the server cut the connection
        cut_after = time.monotonic() - started
    assert cut_after < 6, f"a trickling peer kept its handshake open for {cut_after:.1f}s"
    with kvmgr.connect(server.address_text, authkey=server.authkey.encode()) as client:
        assert client.store("k", "v") == "saved"


def test_a_socket_path_that_is_a_regular_file_is_never_replaced(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    result = subprocess.run(python_module("kvmgr", "serve", "--address", str(precious)),
                            env=child_environment("key"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == f"kvmgr serve: error: {precious} exists and is not a socket: refusing to replace it"
    assert precious.read_text() == "keep me"
