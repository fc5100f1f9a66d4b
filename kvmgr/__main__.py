"""python -m kvmgr: the kvmgr command."""

from kvmgr.tools.cli import main

raise SystemExit(main())
