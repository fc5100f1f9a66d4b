"""--max-connections: the connection over the cap gets one clear refusal and one log line; the others keep working."""

from __future__ import annotations

from pathlib import Path

import pytest

import kvmgr
from kvmgr.errors import ServerUnavailable
from kvmgr.tools.processes import ProcessGroup
from tests.commit_failure import until
from tests.conftest import run_actor

REFUSAL = "too many connections: the server serves at most 2 at once (--max-connections)"


def test_a_connection_over_the_cap_is_refused_and_the_clients_connected_keep_working(group: ProcessGroup, tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        server = group.start_server(extra_args=["--max-connections", "2"], log=log)
    key = server.authkey.encode()
    first = kvmgr.connect(server.address_text, authkey=key)
    second = kvmgr.connect(server.address_text, authkey=key)
    try:
        assert first.store("k", "v") == "saved" and second.get("k") == "v"  # each holds one connection now
        with pytest.raises(ServerUnavailable) as refused:
            kvmgr.connect(server.address_text, authkey=key).get("k")
        assert str(refused.value) == f"kvmgr server at {server.address_text} refused to open the store: {REFUSAL}"
        actor = run_actor(server, "--key", "k")
        assert actor.returncode == 3 and actor.stdout == ""
        assert actor.stderr.count("\n") == 1 and REFUSAL in actor.stderr, actor.stderr
        assert first.get("k") == "v" and second.store("k", "w") == "updated"  # the clients connected keep working
        refusals = [line for line in log_path.read_text().splitlines() if "refused peer" in line]
        assert len(refusals) == 2, refusals  # one line per refused connection
        assert "2 connections are open, the most --max-connections allows" in refusals[0]
        second.close()
        until(lambda: _can_connect(server.address_text, key), "a connection being served once one of the two closed")
    finally:
        first.close()
        second.close()


def _can_connect(address: str, key: bytes) -> bool:
    try:
        with kvmgr.connect(address, authkey=key) as client:
            return client.get("k") == "w"
    except ServerUnavailable:
        return False
