"""python -m kvmgr.client --name NAME ...: the earlier name of python -m kvmgr.tools.actor, kept so scripts that use it work.

An entry point, not part of the client layer: nothing imports it.
"""

from kvmgr.tools.actor import main

raise SystemExit(main())
