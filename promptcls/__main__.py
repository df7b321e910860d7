"""``python -m promptcls``: the command line (see promptcls.cli)."""

from .cli import main

raise SystemExit(main())
