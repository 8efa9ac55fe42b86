"""`loader schema adopt`: convert the application's own tables into the loader schema."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from loader.cli import output as out
from loader.cli.base import EXIT_SCHEMA_DIFFERS, Session, common_options
from loader.cli.schema import schema_group
from loader.connection import SCHEMA_VERSION
from loader.errors import CliError, DirtyRowsError, UnknownShapeError

if TYPE_CHECKING:
    from loader.schema.adopt import AdoptReport

# Seconds to wait for the application's tables before giving up (nothing
# changed): a queued ACCESS EXCLUSIVE request stalls every reader behind it.
DEFAULT_LOCK_TIMEOUT_S = 10.0

ADOPT_EPILOG = """\b
Examples:
  loader schema adopt --dry-run
  loader schema adopt --timezone Asia/Seoul
  loader schema adopt --set-aside

See docs/adoption.md before running it on production."""


@schema_group.command("adopt", epilog=ADOPT_EPILOG)
@click.option(
    "--dry-run", is_flag=True, help="Print the SQL and the rows that break constraints; change nothing."
)
@click.option(
    "--timezone",
    default="UTC",
    show_default=True,
    help="Time zone the application's naive timestamps were written in (never the session's).",
)
@click.option(
    "--set-aside",
    is_flag=True,
    help="Move old rows that break a constraint (and rows hanging on them) to loader_adopt_set_aside "
    "instead of refusing.",
)
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0.001),
    default=DEFAULT_LOCK_TIMEOUT_S,
    show_default=True,
    metavar="SECONDS",
    help="Give up (nothing changed) if the tables stay in use this long.",
)
@common_options
def schema_adopt(
    dry_run: bool, timezone: str, set_aside: bool, lock_timeout: float, session: Session
) -> None:
    """Convert the application's tables, as its ORM created them, into the loader schema.

    One transaction under exclusive locks: every row kept with its id, totals
    recomputed. Exit 3 (nothing changed) on tables of a shape it does not know,
    1 when old rows break constraints (unless --set-aside).
    """
    from loader.schema import adopt  # noqa: PLC0415  (only this command needs it)

    try:
        report = adopt.adopt(
            session.dsn, dry_run=dry_run, timezone=timezone, set_aside=set_aside, lock_timeout_s=lock_timeout
        )
    except UnknownShapeError as exc:
        out.echo("not a shape `loader schema adopt` knows; nothing changed:")
        for line in exc.differences:
            out.echo(f"  {out.printable(line)}")
        raise click.exceptions.Exit(EXIT_SCHEMA_DIFFERS) from exc
    except DirtyRowsError as exc:
        for rule in exc.broken:
            out.echo(f"  {out.printable(rule.line())}")
        raise CliError(str(exc)) from exc
    if report.state == "nothing to do":
        out.echo(report.message)
    elif dry_run:
        _print_dry_run(report, set_aside)
    else:
        for rule in report.local_times:
            out.echo(f"warning: {out.printable(rule.line())}", err=True)
        for table, rows in sorted(report.set_aside.items()):
            out.echo(f"set aside {out.n(rows)} row(s) of {table} in loader_adopt_set_aside")
        out.echo(
            f"adopted schema {report.namespace!r} as loader schema version {SCHEMA_VERSION} in "
            f"{report.seconds:.1f} s: {_row_counts(report.rows_after)}"
        )


def _print_dry_run(report: AdoptReport, set_aside: bool) -> None:
    out.echo(f"-- dry run on schema {report.namespace!r}; rows now: {_row_counts(report.rows_before)}")
    for rule in report.broken:
        out.echo(f"-- breaks {out.printable(rule.line())}")
    for rule in report.local_times:
        out.echo(f"-- warning: {out.printable(rule.line())}")
    out.echo("\n\n".join(f"{statement.rstrip().rstrip(';')};" for statement in report.statements))
    if report.broken and not set_aside:
        raise CliError("adopt would refuse: old rows break constraints (see above); nothing changed")


def _row_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{rows:,} {table}" for table, rows in counts.items())
