"""``python -m cnnas``: the same command line as ``cnnas``."""

from __future__ import annotations

import sys

from cnnas.search.cli import main

sys.exit(main())
