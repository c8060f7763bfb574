"""``python -m cnnas``: the same command line as ``cnnas``."""

from __future__ import annotations

import os
import sys

try:
    from cnnas.search.cli import run
except KeyboardInterrupt:
    # Ctrl-C in the first fraction of a second, while Python imports the CLI itself: the same
    # one line and exit status as later, no traceback.
    print("interrupted", file=sys.stderr, flush=True)
    os._exit(130)

run()
