"""Ctrl-C while the `loader` command starts: one line and exit status 130, no traceback.

Imported first by loader/__init__.py. Acts only when the process is the
`loader` console script, in its main thread: the handler stays until
loader.cli.main restores Python's own (after which click and LoaderGroup turn
a Ctrl-C into the same line).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

# 128 + SIGINT, as a shell reports a process stopped by it.
EXIT_INTERRUPTED = 130


def _quit(_signum: int, _frame: object) -> None:
    os.write(2, b"loader: interrupted\n")
    os._exit(EXIT_INTERRUPTED)


def is_console_script() -> bool:
    return os.path.basename(sys.argv[0] if sys.argv else "") == "loader"


def guard() -> None:
    if is_console_script() and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _quit)


def release() -> None:
    """Python's own Ctrl-C handling again (KeyboardInterrupt), for the command itself."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is _quit:
        signal.signal(signal.SIGINT, signal.default_int_handler)


guard()
