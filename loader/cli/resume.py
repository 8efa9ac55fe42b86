"""Stopping and resuming `loader load`: Ctrl-C / SIGTERM after the chunk in flight, and the
command that continues where it stopped (with the --dsn typed, never its password)."""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from types import FrameType
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from loader.cli.base import Session

# Images per transaction for `loader load`. Each chunk is one save_batch call
# (8 statements): bigger chunks amortise them, smaller ones commit more often and
# hold less client memory while a chunk is judged (docs/benchmarks.md has the
# figures). A resume hint repeats --chunk-size only when it differs.
DEFAULT_CHUNK_SIZE = 5000


def signal_status(signum: int) -> int:
    """128 + the signal number: the exit status a shell reports for a process stopped by it."""
    return 128 + signum


class StopRequest:
    """Ctrl-C (or SIGTERM) asks the load to stop after the chunk in flight; a second one aborts it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            # Second request: abort the chunk in flight (psycopg cancels the
            # query, the transaction rolls back).
            raise KeyboardInterrupt
        self.signum = signum
        sys.stderr.write(
            f"\n{signal.Signals(signum).name}: stopping after the chunk in flight "
            "(press Ctrl-C again to abort it)\n"
        )
        sys.stderr.flush()

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            # After a stop the process is on its way out: a late second signal
            # must neither kill it mid-summary nor change its exit status.
            signal.signal(signum, signal.SIG_IGN if self.requested else handler)

    @property
    def requested(self) -> bool:
        return self.signum is not None


def _without_password(dsn: str) -> tuple[str, bool]:
    """The DSN with any password removed, and whether there was one."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return dsn, False
    if "password" not in params:
        return dsn, False
    del params["password"]
    return make_conninfo("", **params), True


def resume_command(
    files: tuple[str, ...],
    batch_id: str,
    chunk_size: int,
    skip: int,
    session: Session | None = None,
    extra: tuple[str, ...] = (),
) -> str:
    """The command that continues a load from line ``skip``, reaching the same database.

    A DSN typed as --dsn is repeated (one from LOADER_DSN or the libpq
    environment is found there again); its password never is: the command then
    says where to put it.
    """
    parts = ["loader", "load", *files, "--batch-id", batch_id]
    if chunk_size != DEFAULT_CHUNK_SIZE:
        parts += ["--chunk-size", str(chunk_size)]
    parts += extra
    had_password = False
    if session is not None and session.dsn_typed and session.dsn:
        dsn, had_password = _without_password(session.dsn)
        parts += ["--dsn", dsn]
    parts += ["--skip", str(skip)]
    command = shlex.join(parts)
    if had_password:
        command += "  # password not repeated: set PGPASSWORD (or ~/.pgpass, or the whole DSN in LOADER_DSN)"
    return command
