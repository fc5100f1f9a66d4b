"""Many client processes at once: no lost and no torn values."""

from __future__ import annotations

import sys

import kvmgr
from kvmgr.tools.processes import ProcessGroup, ServerProcess, child_environment

WRITERS = 8
KEYS_EACH = 150
WORKER = """
import sys, kvmgr
name, address = sys.argv[1], sys.argv[2]
with kvmgr.connect(address, name=name) as client:
    client.rendezvous("go", int(sys.argv[3]), timeout=20)
    for i in range(int(sys.argv[4])):
        client.store(f"{name}-{i}", f"{name}:{i}")
        client.store("shared", name * 20_000)
"""


def test_many_writers_lose_nothing_and_tear_nothing(group: ProcessGroup, server: ServerProcess) -> None:
    env = child_environment(server.authkey)
    writers = [
        group.launch([sys.executable, "-c", WORKER, f"w{n}", server.address_text, str(WRITERS), str(KEYS_EACH)], env)
        for n in range(WRITERS)
    ]
    for writer in writers:
        _, stderr = writer.communicate(timeout=60)
        assert writer.returncode == 0, stderr.decode()
    with kvmgr.connect(server.address_text, authkey=server.authkey.encode()) as client:
        assert client.size() == WRITERS * KEYS_EACH + 1
        values = client.get_many([f"w{n}-{i}" for n in range(WRITERS) for i in range(KEYS_EACH)])
        assert values == {f"w{n}-{i}": f"w{n}:{i}" for n in range(WRITERS) for i in range(KEYS_EACH)}
        assert client.get("shared") in {f"w{n}" * 20_000 for n in range(WRITERS)}
