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
from collections.abc import Callable, Iterator, Sequence

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
    code = main(standalone=True)
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)


def main(argv: Sequence[str] | None = None, *, standalone: bool = False) -> int:
    """Run one command line; return its exit status.

    ``standalone``: this process is the ``cnnas`` command itself (:func:`run`), so a Ctrl-C
    while the libraries are imported may end it on the spot. A caller that runs commands in
    its own process (a notebook, a test) gets a KeyboardInterrupt handled as everywhere else."""
    parser = build_parser()
    _complete(parser)
    args = parser.parse_args(argv)
    try:
        # Imported only now: --help and --version need none of it.
        leave = _leave_at_once_on_interrupt() if standalone else contextlib.nullcontext()
        with leave:
            from .._quiet import quiet_libraries
            from ..errors import CnnasError

            quiet_libraries()
            command = command_of(args)
        try:
            return command(args)
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


@contextlib.contextmanager
def _leave_at_once_on_interrupt() -> Iterator[None]:
    """While the libraries are imported, a Ctrl-C ends the process there and then.

    A KeyboardInterrupt raised inside numpy's first import leaves numpy half-initialised in
    ``sys.modules`` when a library on the way swallows it; the next import of numpy then
    recurses until RecursionError, a traceback (seen 1 run in 6 at 0.3 to 0.5 s after start).
    So no KeyboardInterrupt is raised here at all: the handler says so and leaves. Nothing has
    been read or written yet, and holding the interrupt until the imports end would keep the
    user waiting for them (about 6 s on 2 cores)."""

    def leave(_signum: int, _frame: object) -> None:
        print("interrupted", file=sys.stderr, flush=True)
        os._exit(130)

    previous = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, leave)
        held = True
    except ValueError:  # not the main thread: signals are not delivered here anyway
        held = False
    try:
        yield
    finally:
        if held:
            # None: a handler set outside Python, which signal.signal cannot put back.
            signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def _interrupted() -> int:
    """Ctrl-C anywhere (importing the libraries, loading data, between trials): one line and
    exit status 130, never a traceback. A command that was interrupted while it trained has
    said more already (the study start command says how to resume)."""
    # A second Ctrl-C while the process winds down must not print a traceback either.
    with contextlib.suppress(ValueError):  # not the main thread: nothing to hold back
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("interrupted", file=sys.stderr)
    return 130
