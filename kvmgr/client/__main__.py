"""python -m kvmgr.client --name NAME ...: one named actor, like alice and bob."""

from kvmgr.client.actor import main

raise SystemExit(main())
