"""python -m kvmgr.tools.bench: the benchmark itself, or (hidden) one of its client (--worker) or server (--serve) processes."""

from kvmgr.tools.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
