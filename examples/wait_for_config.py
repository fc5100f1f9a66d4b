"""Waiting for a configuration change: a worker process reloads its settings the moment they change.

`get_versioned(key)` gives the value and its version (the revision of its last change); `wait(key, after=v)`
blocks on the server, without polling, until the version is above v, and then returns the new value and
version. A change made before the wait started is not missed: wait returns at once. A deleted key comes back
as None, which here tells the worker to stop. (To keep the output in order, the worker reports each
configuration it applied on the "applied" queue, and the main program waits for that before changing it again.)

    python examples/wait_for_config.py
"""

from __future__ import annotations

import multiprocessing

from servers import kvmgr_server

import kvmgr


def worker(address: str) -> None:
    """Apply the configuration, then wait for each change and apply it, until the configuration is deleted."""
    with kvmgr.connect(address) as client:
        config, version = client.get_versioned("config")
        while config is not None:
            print(f"worker: applying {config!r} (version {version})", flush=True)
            client.queue("applied").put(version)
            config, version = client.wait("config", after=version, timeout=60)  # WaitTimeout if nothing changes in 60 s
        print(f"worker: configuration deleted (version {version}), stopping", flush=True)


def main(address: str) -> None:
    """Change the configuration twice, then delete it, while the worker follows along."""
    with kvmgr.connect(address) as client:
        client.store("config", {"log_level": "info", "workers": 2})
        process = multiprocessing.Process(target=worker, args=(address,))
        process.start()
        try:
            applied = client.queue("applied")
            applied.get(timeout=10)
            for workers in (4, 8):
                print(f"main: setting workers to {workers}", flush=True)
                client.store("config", {"log_level": "info", "workers": workers})
                applied.get(timeout=10)
            print("main: deleting the configuration", flush=True)
            client.delete("config")
            process.join(timeout=10)
        finally:
            process.kill()  # nothing to do if it has exited; stops it if something went wrong
            process.join()
        print(f"worker exited with status {process.exitcode}")
        if process.exitcode != 0:
            raise SystemExit("the worker did not follow the configuration to its end")


if __name__ == "__main__":
    with kvmgr_server() as address:
        main(address)
