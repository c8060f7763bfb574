# PYTHON_ARGCOMPLETE_OK  (argcomplete: this command line completes itself in bash and zsh)
"""The ``cnnas`` command line.

Exit status: 0 on success, 2 on bad input (config, dataset, architecture, study name, a file)
with one ``error: ...`` line naming what is wrong, 1 when a study stops because its trials keep
failing, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import signal
import sys
from collections.abc import Callable, Sequence

from ._parser import build_parser

__all__ = ["build_parser", "command_of", "main"]

# A full disk, a quota, a read-only file system: said in a line, never a traceback.
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
# An error message is one line a person reads; a value echoed into it (a YAML alias expanded to
# megabytes, say) must not flood the terminal.
MAX_MESSAGE = 2000


def _complete(parser: object) -> None:
    """Shell completion through argcomplete, when the shell asks for it (and only then, so a
    normal start pays nothing for it)."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)


def _bounded(message: str) -> str:
    text = str(message)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 16] + " ... (cut short)"


def command_of(args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    """The function that runs the parsed command (its module imported now, not before)."""
    module, function = args.command
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)


def run() -> None:
    """The ``cnnas`` executable and ``python -m cnnas``: :func:`main`, then exit with its status.

    After a Ctrl-C that :func:`main` has handled, the process leaves with ``os._exit(130)``:
    an interrupt that lands inside a C extension's import can leave CPython marked as killed by
    SIGINT however it was handled, and it would then end with signal 2 instead of exit status
    130 (seen 1 run in about 10 at 0.5 s after start). Nothing is left to finalise by then:
    the study has recorded the interrupt and closed its runs."""
    code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    _complete(parser)
    args = parser.parse_args(argv)
    try:
        # Imported only now: --help and --version need none of it.
        from .._quiet import quiet_libraries
        from ..errors import CnnasError

        quiet_libraries()
        try:
            return command_of(args)(args)
        except CnnasError as e:
            print(f"error: {_bounded(e)}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        return _interrupted()
    except BrokenPipeError:
        # `cnnas ... | head`: the reader has gone; nothing more to say, and no traceback. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        if e.errno not in _DISK_ERRORS:
            raise
        # A full or read-only disk: what could not be written, as for bad input (a study
        # resumes once there is room).
        where = f" {e.filename}" if e.filename else ""
        print(f"error: cannot write{where}: {e.strerror}", file=sys.stderr)
        return 2


def _interrupted() -> int:
    """Ctrl-C anywhere (importing the libraries, loading data, between trials): one line and
    exit status 130, never a traceback. A command that was interrupted while it trained has
    said more already (the study start command says how to resume)."""
    # A second Ctrl-C while the process winds down must not print a traceback either.
    with contextlib.suppress(ValueError):  # not the main thread: nothing to hold back
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("interrupted", file=sys.stderr)
    return 130
