#!/usr/bin/env python3
"""Run kvmgr's scenarios end to end: python run_driver.py [--scenario FILE|NAME] [--json]. See --help."""

from kvmgr.tools.driver import main

if __name__ == "__main__":
    raise SystemExit(main())
