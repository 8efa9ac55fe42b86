"""What every command shares: the group, exit statuses, common options, connecting.

A command is a function in its own module (loader/cli/<command>.py) decorated
with ``@cli.command(...)`` (or ``@schema_group.command``) and ``@common_options``,
which hands it a ``Session`` (the connection choice) instead of --dsn,
--verbose and --log-format. Errors are raised, never printed: LoaderGroup turns
each into one line on stderr and an exit status.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import psycopg
from click.core import ParameterSource

from loader import __version__
from loader.cli import output as out
from loader.cli.logs import logging_to_stderr
from loader.connection import SCHEMA_VERSION, prepare_threshold_setting
from loader.dsn import check_dsn
from loader.errors import CliError, Interrupted, LoaderError, redact_dsn

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SCHEMA_DIFFERS = 3
EXIT_INTERRUPTED = 130

# Seconds to wait for the server to accept a connection before giving up.
CONNECT_TIMEOUT_S = 10

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Session:
    """How this command reaches the database."""

    #: The DSN (``""``: libpq's environment decides).
    dsn: str
    #: Whether it was typed as --dsn (not taken from LOADER_DSN): a printed
    #: command that is to reach the same database must repeat it.
    dsn_typed: bool = False

    def connect(self) -> psycopg.Connection[Any]:
        return connect(self.dsn)


def connect(dsn: str) -> psycopg.Connection[Any]:
    """A connection, or one clear line saying why not (password never shown)."""
    # libpq's parse errors quote the DSN, password and all: refuse those first.
    check_dsn(dsn)
    try:
        return psycopg.connect(
            dsn,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="loader-cli",
            # Nothing prepared on the server unless configured: a transaction
            # pooler (PgBouncer) may sit between the CLI and PostgreSQL.
            prepare_threshold=prepare_threshold_setting(),
        )
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(
            f"cannot connect to PostgreSQL: {redact_dsn(first)} (check --dsn / LOADER_DSN / PGHOST)"
        ) from exc


def dsn_option(help_text: str) -> Callable[[F], F]:
    return click.option(
        "--dsn",
        envvar="LOADER_DSN",
        show_envvar=True,
        default="",
        metavar="DSN",
        help=help_text,
    )


verbose_option = click.option(
    "-v", "--verbose", is_flag=True, help="Log every call (batch, counts, statements, duration)."
)


def common_options(func: F) -> F:
    """--dsn, --verbose and --log-format; the command receives ``session: Session``."""

    @dsn_option(
        "PostgreSQL connection string, e.g. postgresql://loader@db-host/ocr. "
        "Default: $LOADER_DSN, else the libpq environment (PGHOST, PGDATABASE, PGUSER, ...)."
    )
    @verbose_option
    @click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Log lines on stderr as key=value text or as JSON objects.",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, dsn: str, verbose: bool, log_format: str, **kwargs: Any) -> Any:
        typed = click.get_current_context().get_parameter_source("dsn") == ParameterSource.COMMANDLINE
        with logging_to_stderr(verbose, log_format):
            return func(*args, session=Session(dsn, typed), **kwargs)

    return wrapper  # type: ignore[return-value]


def one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return redact_dsn(" ".join(line.strip() for line in text.splitlines() if line.strip()))


# Each handler prints its line (through out.echo, so a control character an id or
# a server message carries is escaped) and returns the exit status. The first whose
# type matches wins, so subclasses come before their bases.
def _no_args(exc: click.exceptions.NoArgsIsHelpError) -> int:
    exc.show()
    return EXIT_USAGE


def _usage(exc: click.UsageError) -> int:
    where = exc.ctx.command_path if exc.ctx else "loader"
    out.echo(f"{where}: error: {exc.format_message()} (see '{where} --help')", err=True)
    return EXIT_USAGE


def _interrupted(exc: Interrupted) -> int:
    out.echo(f"loader: {redact_dsn(str(exc))}", err=True)
    return exc.exit_code


def _cli_error(exc: CliError) -> int:
    out.echo(f"loader: error: {redact_dsn(str(exc))}", err=True)
    return exc.exit_code


def _click_error(exc: click.ClickException) -> int:
    out.echo(f"loader: error: {redact_dsn(exc.format_message())}", err=True)
    return exc.exit_code


def _abort(_exc: click.Abort) -> int:
    out.echo("loader: interrupted", err=True)
    return EXIT_INTERRUPTED


def _loader_error(exc: LoaderError) -> int:
    out.echo(f"loader: error: {one_line(exc)}", err=True)
    return EXIT_ERROR


def _database_error(exc: psycopg.Error) -> int:
    out.echo(f"loader: database error: {one_line(exc)}", err=True)
    return EXIT_ERROR


def _broken_pipe(_exc: BrokenPipeError) -> int:
    # The reader went away (`loader rejects B | head`): not an error worth a line.
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return EXIT_ERROR


def _os_error(exc: OSError) -> int:
    # A file name is any bytes the shell passed: escaped like every printed value.
    name = exc.filename
    name = os.fsdecode(name) if isinstance(name, str | bytes | os.PathLike) else str(name)
    where = f"{out.printable(name)}: " if exc.filename else ""
    out.echo(f"loader: error: {where}{exc.strerror or exc}", err=True)
    return EXIT_ERROR


def _keyboard_interrupt(_exc: KeyboardInterrupt) -> int:
    # Ctrl-C outside a load's own handling (connecting, a query, the first
    # moments of any command): one line, no traceback.
    out.echo("loader: interrupted", err=True)
    return EXIT_INTERRUPTED


_HANDLERS: list[tuple[type[BaseException], Callable[[Any], int]]] = [
    (click.exceptions.NoArgsIsHelpError, _no_args),
    (click.UsageError, _usage),
    (click.ClickException, _click_error),
    (click.Abort, _abort),
    (Interrupted, _interrupted),
    (CliError, _cli_error),
    (LoaderError, _loader_error),
    (psycopg.Error, _database_error),
    (BrokenPipeError, _broken_pipe),
    (OSError, _os_error),
    (KeyboardInterrupt, _keyboard_interrupt),
]
_HANDLED = tuple(kind for kind, _ in _HANDLERS)


def exit_status(exc: BaseException) -> int:
    """Print ``exc`` as one line on stderr; its exit status."""
    return next(handle(exc) for kind, handle in _HANDLERS if isinstance(exc, kind))


class LoaderGroup(click.Group):
    """Turns every expected failure into one line on stderr and an exit status."""

    def main(  # type: ignore[override]
        self,
        args: list[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else EXIT_OK
        except _HANDLED as exc:
            code = exit_status(exc)
        if standalone_mode:
            sys.exit(code)
        return code


MAIN_EPILOG = """\b
Examples:
  loader schema apply --dsn postgresql://admin@db/ocr
  loader load results.jsonl.gz --batch-id 2024-06-01-a
  loader status 2024-06-01-a
  loader rejects 2024-06-01-a --export fixme.jsonl
  loader demo

\b
Exit status: 0 success, 1 error, 2 bad usage, 3 schema differs (schema check),
130 interrupted. The DSN comes from --dsn, else LOADER_DSN, else the libpq
environment (PGHOST, PGDATABASE, ...); passwords are never printed.
"""


@click.group(
    "loader", cls=LoaderGroup, epilog=MAIN_EPILOG, context_settings={"help_option_names": ["-h", "--help"]}
)
# The version as the package states it (the distribution is named ocr-batch-loader, not
# loader), with the schema version it reads and writes.
@click.version_option(
    version=__version__, prog_name="loader", message=f"%(prog)s %(version)s (schema version {SCHEMA_VERSION})"
)
def cli() -> None:
    """Bulk-load OCR batch results into PostgreSQL, exactly once.

    Each chunk of a load is one transaction (binary COPY into staging tables,
    one merge that also brings the batch's totals up to date): a chunk is stored
    whole or not at all, and loading the same input again changes nothing.
    """
