"""Instructions per request of a server process (callgrind), kvmgr vs the selectors floor.

.venv/bin/python docs/perfharness.py SERVER CLIENTS N1 N2 [unix|tcp]      (SERVER: kvmgr or selectors-floor)
Runs the server under valgrind's callgrind twice (N1 and N2 requests per client, a store+get mix) and prints the
difference of the user-space instructions over the difference of the requests: start-up and handshakes cancel out.
Needs valgrind (apt-get install valgrind). A development measurement, not part of the test suite.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing import connection

from kvmgr.protocol import wire

AUTHKEY = b"perf-harness-key"
VALUE = b"v" * 100
KEYS = [f"p{index:015d}" for index in range(1000)]


def client(server: str, address: str, count: int, seed: int) -> None:
    family_address: object = address
    if ":" in address:
        host, port = address.rsplit(":", 1)
        family_address = (host, int(port))
    conn = connection.Client(family_address, authkey=AUTHKEY)
    fd = conn.fileno()
    sock = wire.FramedSocket(fd)
    rng = random.Random(seed)
    if server == "kvmgr":
        sock.send(wire.dump((None, wire.OPEN_STORE, (1,), {})))
        _, info = wire.load_reply(sock.recv())
        ident = info["ident"]
        load = wire.dump((ident, "store_many", ({key: VALUE for key in KEYS},), {}))

        def request(op: str, key: str) -> bytes:
            return wire.frame(wire.dump((ident, op, (key, VALUE) if op == "store" else (key,), {})))
    else:
        load = pickle.dumps(("load", {key: VALUE for key in KEYS}, None), pickle.HIGHEST_PROTOCOL)

        def request(op: str, key: str) -> bytes:
            return wire.frame(pickle.dumps((op, key, VALUE if op == "store" else None), pickle.HIGHEST_PROTOCOL))
    sock.send(load)
    sock.recv()
    requests = [request("store" if rng.random() < 0.5 else "get", rng.choice(KEYS)) for _ in range(count)]
    print("ready", flush=True)
    sys.stdin.readline()
    for data in requests:
        sock.send_raw(data)
        sock.recv()
    print("done", flush=True)


def measure(server: str, clients: int, count: int, transport: str, tool: str = "callgrind") -> float:
    tmp = tempfile.mkdtemp(prefix="perfh-")
    if transport == "unix":
        address = os.path.join(tmp, "sock")
    else:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{probe.getsockname()[1]}"
    out = os.path.join(tmp, "cg.out")
    env = {**os.environ, "KVMGR_AUTHKEY": AUTHKEY.decode(), "PYTHONHASHSEED": "0"}
    if server == "kvmgr":
        command = [sys.executable, "-m", "kvmgr", "serve", "--address", address]
    else:
        command = [sys.executable, "-m", "kvmgr.tools.bench", "--serve", "selectors-floor", "--address", address]
    prefix = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] if tool == "callgrind" else []
    proc = subprocess.Popen(prefix + command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    workers = [subprocess.Popen([sys.executable, __file__, "--client", server, address, str(count), str(seed)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
               for seed in range(clients)]
    for worker in workers:
        assert worker.stdout.readline().strip() == "ready"
    for worker in workers:
        worker.stdin.write("go\n")
        worker.stdin.flush()
    for worker in workers:
        worker.wait()
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    if tool != "callgrind":
        return 0.0
    with open(out) as profile:
        text = profile.read()
    total = int(re.search(r"^totals: (\d+)", text, re.M).group(1))
    os.rename(out, f"/tmp/cg-{server}-{clients}-{count}-{transport}.out")
    return total


if __name__ == "__main__":
    if sys.argv[1] == "--client":
        client(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        sys.exit(0)
    server, clients, n1, n2 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    transport = sys.argv[5] if len(sys.argv) > 5 else "unix"
    first = measure(server, clients, n1, transport)
    second = measure(server, clients, n2, transport)
    per = (second - first) / (clients * (n2 - n1))
    print(f"{server} clients={clients} {transport}: {per:,.0f} Ir/request  ({first:,} / {second:,})")
