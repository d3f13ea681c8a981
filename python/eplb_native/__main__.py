"""``python -m eplb_native``: the same command line as the ``eplb-native`` script."""

from __future__ import annotations

from eplb_native.cli import main

raise SystemExit(main())
