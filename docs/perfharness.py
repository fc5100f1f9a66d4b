"""Instructions per request (callgrind) of a server or a client process: kvmgr against the selectors floor.

.venv/bin/python docs/perfharness.py SERVER CLIENTS N1 N2 [unix|tcp]   instructions per request of the server process
.venv/bin/python docs/perfharness.py --strace SERVER CLIENTS N [unix|tcp]   its system calls (strace -c), N requests per client
.venv/bin/python docs/perfharness.py --client get|mix N1 N2              instructions per call of a kvmgr client process
.venv/bin/python docs/perfharness.py --wall SERVER CLIENTS N1 N2 [unix|tcp]   the server's CPU time per request (no valgrind)

SERVER is kvmgr or selectors-floor. The server runs under valgrind's callgrind twice (N1 and N2 requests per client, a
store+get mix of 16-byte keys and 100-byte values, one call at a time per client); the difference of the user-space
instructions over the difference of the requests is printed, so start-up and handshakes cancel out. --client does
the same for a process using kvmgr.connect (get, or store and get in turn, on one key) against a kvmgr server that
is not measured. Needs valgrind (and strace for --strace): apt-get install valgrind strace. A development
measurement, not part of the test suite; run it from the tree's root.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import signal
import sys
import tempfile
import time
from multiprocessing import connection

import psutil

from kvmgr.protocol import wire
from kvmgr.tools.processes import ProcessGroup, python_module, wait_until_ready

AUTHKEY = b"perf-harness-key"
VALUE = b"v" * 100
KEYS = [f"p{index:015d}" for index in range(1000)]
ENV = {**os.environ, "KVMGR_AUTHKEY": AUTHKEY.decode(), "PYTHONHASHSEED": "0"}


def client(server: str, address: str, count: int, seed: int) -> None:
    """One raw client of the server measured: preload, say ready, wait for go, then `count` calls one at a time."""
    family_address: object = address
    if ":" in address:
        host, port = address.rsplit(":", 1)
        family_address = (host, int(port))
    conn = connection.Client(family_address, authkey=AUTHKEY)
    sock = wire.FramedSocket(conn.fileno())
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


def kvmgr_client(op: str, address: str, count: int) -> None:
    """A kvmgr.connect client making `count` calls: get, or store and get in turn."""
    import kvmgr

    store = kvmgr.connect(address)
    store.store(KEYS[0], VALUE)
    for index in range(count):
        if op == "get" or index % 2:
            store.get(KEYS[0])
        else:
            store.store(KEYS[0], VALUE)
    store.close()


READY = {"kvmgr": "kvmgr listening on ", "selectors-floor": "ready "}  # each server's ready line, before its address


def start_server(group: ProcessGroup, server: str, transport: str, prefix: list[str]) -> tuple[psutil.Popen, str]:
    """The server (under prefix: valgrind, or nothing) on a fresh Unix socket or a free loopback port; it and its address."""
    address = os.path.join(tempfile.mkdtemp(prefix="perfh-"), "sock") if transport == "unix" else "127.0.0.1:0"
    if server == "kvmgr":
        command = python_module("kvmgr", "serve", "--address", address)
    else:
        command = python_module("kvmgr.tools.bench", "--serve", "selectors-floor", "--address", address)
    proc = group.launch(prefix + command, ENV)
    return proc, wait_until_ready(proc, READY[server], server, timeout=120)  # valgrind starts Python slowly


def stop(proc: psutil.Popen) -> None:
    """SIGTERM, and wait for a clean exit (callgrind writes its profile then); the group reaps it on any other path."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def run_clients(group: ProcessGroup, server: str, address: str, clients: int, count: int) -> None:
    workers = [group.launch([sys.executable, __file__, "--raw-client", server, address, str(count), str(seed)], ENV, stdin=True)
               for seed in range(clients)]
    for worker in workers:
        assert worker.stdout.readline().strip() == b"ready"
    for worker in workers:
        worker.stdin.write(b"go\n")
        worker.stdin.flush()
    for worker in workers:
        assert worker.wait(600) == 0, worker.stderr.read().decode(errors="replace")


def callgrind_total(out: str) -> int:
    with open(out) as profile:
        match = re.search(r"^totals: (\d+)", profile.read(), re.M)
    assert match is not None
    return int(match.group(1))


def measure(server: str, clients: int, count: int, transport: str) -> int:
    """The server process's instructions over a whole run of `count` requests per client."""
    out = os.path.join(tempfile.mkdtemp(prefix="perfh-"), "cg.out")
    with ProcessGroup() as group:
        proc, address = start_server(group, server, transport, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"])
        run_clients(group, server, address, clients, count)
        time.sleep(0.2)
        stop(proc)
    return callgrind_total(out)


def trace(server: str, clients: int, count: int, transport: str) -> str:
    """strace -c's table of the server's system calls while the clients run (attached after start-up)."""
    out = os.path.join(tempfile.mkdtemp(prefix="perfh-"), "strace.txt")
    with ProcessGroup() as group:
        proc, address = start_server(group, server, transport, [])
        tracer = group.launch(["strace", "-c", "-f", "-p", str(proc.pid), "-o", out])
        time.sleep(1)  # attached
        run_clients(group, server, address, clients, count)
        tracer.send_signal(signal.SIGINT)  # strace detaches and writes its table
        tracer.wait(30)
        stop(proc)
    with open(out) as table:
        return table.read()


def cpu_seconds(server: str, clients: int, count: int, transport: str) -> float:
    """The server process's CPU time (user + system, psutil) over a whole run of `count` requests per client."""
    with ProcessGroup() as group:
        proc, address = start_server(group, server, transport, [])
        before = proc.cpu_times()
        run_clients(group, server, address, clients, count)
        after = proc.cpu_times()
        stop(proc)
    return after.user + after.system - before.user - before.system


def measure_client(op: str, count: int) -> int:
    """A kvmgr client process's instructions over `count` calls."""
    out = os.path.join(tempfile.mkdtemp(prefix="perfh-"), "cg.out")
    with ProcessGroup() as group:
        _, address = start_server(group, "kvmgr", "unix", [])
        client = group.launch(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
                               "--kvmgr-client", op, address, str(count)], ENV)
        _, err = client.communicate(timeout=600)
        assert client.returncode == 0, err.decode(errors="replace")
    return callgrind_total(out)


def main(argv: list[str]) -> None:
    if argv[0] == "--raw-client":
        client(argv[1], argv[2], int(argv[3]), int(argv[4]))
    elif argv[0] == "--kvmgr-client":
        kvmgr_client(argv[1], argv[2], int(argv[3]))
    elif argv[0] == "--strace":
        print(trace(argv[1], int(argv[2]), int(argv[3]), argv[4] if len(argv) > 4 else "unix"))
    elif argv[0] == "--wall":
        server, clients, n1, n2 = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
        transport = argv[5] if len(argv) > 5 else "unix"
        spent = cpu_seconds(server, clients, n2, transport) - cpu_seconds(server, clients, n1, transport)
        print(f"{server} clients={clients} {transport}: {spent / (clients * (n2 - n1)) * 1e6:.1f} µs of server CPU/request")
    elif argv[0] == "--client":
        op, n1, n2 = argv[1], int(argv[2]), int(argv[3])
        first, second = measure_client(op, n1), measure_client(op, n2)
        print(f"kvmgr client {op}: {(second - first) / (n2 - n1):,.0f} Ir/call  ({first:,} / {second:,})")
    else:
        server, clients, n1, n2 = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
        transport = argv[4] if len(argv) > 4 else "unix"
        first, second = measure(server, clients, n1, transport), measure(server, clients, n2, transport)
        print(f"{server} clients={clients} {transport}: {(second - first) / (clients * (n2 - n1)):,.0f} Ir/request  "
              f"({first:,} / {second:,})")


if __name__ == "__main__":
    main(sys.argv[1:])
