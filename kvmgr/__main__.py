"""python -m kvmgr: the kvmgr command."""

from kvmgr.cli import main

raise SystemExit(main())
