"""`loader schema`: deploy, upgrade, check or print the loader schema.

A new subcommand is a function here decorated with ``@schema_group.command(...)``
(and ``@common_options`` when it talks to the database).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from loader.cli import output as out
from loader.cli.base import EXIT_SCHEMA_DIFFERS, Session, cli, common_options
from loader.connection import SCHEMA_VERSION
from loader.errors import CliError
from loader.schema import migrate
from loader.schema.apply import apply_schema, schema_sql

if TYPE_CHECKING:
    from loader.schema.check import SchemaDiff

SCHEMA_EPILOG = """\b
Examples:
  loader schema apply                 # deploy schema.sql (idempotent, all or nothing)
  loader schema upgrade               # apply the numbered migrations the database needs
  loader schema check                 # compare the deployed schema with this package's
  loader schema sql > schema.sql      # the file for a DBA (psql -v ON_ERROR_STOP=1 -f)
  loader schema sql --upgrade-from 1  # the migrations from version 1, for a DBA
  loader schema adopt --dry-run       # what converting the application's own tables would do
"""


@cli.group("schema", epilog=SCHEMA_EPILOG)
def schema_group() -> None:
    """Deploy, upgrade, check or print the loader schema."""


def _deployed(session: Session) -> int | None:
    with session.connect() as conn:
        return migrate.deployed_version(conn)


@schema_group.command(
    "apply",
    epilog="\b\nExamples:\n  loader schema apply\n  loader schema apply --dsn postgresql://admin@db/ocr",
)
@common_options
def schema_apply(session: Session) -> None:
    """Run schema.sql: creates what is missing, changes nothing on a second run.

    Refuses (and changes nothing) on a database holding another schema version;
    an older one is upgraded with `loader schema upgrade`.
    """
    before = _deployed(session)
    apply_schema(session.dsn)
    if before == SCHEMA_VERSION:
        out.echo(f"schema version {SCHEMA_VERSION} already deployed; nothing changed")
    else:
        out.echo(f"schema version {SCHEMA_VERSION} deployed")


@schema_group.command(
    "upgrade", epilog="\b\nExamples:\n  loader schema upgrade --dry-run\n  loader schema upgrade"
)
@click.option("--dry-run", is_flag=True, help="Only list the migrations that would be applied.")
@common_options
def schema_upgrade(dry_run: bool, session: Session) -> None:
    """Apply the numbered migrations (loader/schema/migrations/NNNN_*.sql) the database needs.

    Each migration is one transaction: it applies whole or not at all, and
    records its version in loader_schema_version.
    """
    found = _deployed(session)
    if found is None:
        raise CliError("this database has no loader schema to upgrade; deploy it with `loader schema apply`")
    steps = migrate.pending(found, migrate.load())
    if dry_run:
        if not steps:
            out.echo(f"schema version {found}; nothing to apply")
        for mig in steps:
            out.echo(f"would apply {mig.name}: {mig.description}")
        return
    before, applied = migrate.upgrade(session.dsn)
    if not applied:
        out.echo(f"schema version {before} is current; nothing to apply")
        return
    for mig in applied:
        out.echo(f"applied {mig.name}: {mig.description}")
    out.echo(f"schema upgraded from version {before} to {applied[-1].version}")


@schema_group.command(
    "check", epilog="\b\nExamples:\n  loader schema check\n  loader schema check --json | jq .changed"
)
@click.option("--json", "as_json", is_flag=True, help="Print the difference as JSON.")
@common_options
def schema_check_command(as_json: bool, session: Session) -> None:
    """Compare the deployed schema with this package's schema.sql; exit 3 if they differ.

    The package schema is built in a scratch schema inside a transaction that is
    rolled back, so nothing is left behind. Tables, columns, constraints,
    indexes, triggers, enums, functions, the loader_writer grants and the
    recorded version are compared.
    """
    from loader.schema.check import check  # noqa: PLC0415  (only this command needs it)

    diff = check(session.dsn)
    if as_json:
        out.echo_json(diff.as_json())
    elif diff.matches:
        _print_match(diff)
    else:
        _print_difference(diff)
    if not diff.matches:
        raise click.exceptions.Exit(EXIT_SCHEMA_DIFFERS)


def _plural(kind: str, number: int) -> str:
    return f"{number} {kind}" if number == 1 else f"{number} {'indexes' if kind == 'index' else kind + 's'}"


def _print_match(diff: SchemaDiff) -> None:
    counts = sorted((kind, number) for kind, number in diff.counts().items() if kind != "version")
    out.echo(
        f"schema {diff.namespace!r} matches the package (version {SCHEMA_VERSION}): "
        + ", ".join(_plural(kind, number) for kind, number in counts)
    )


def _print_difference(diff: SchemaDiff) -> None:
    out.echo(f"schema {diff.namespace!r} differs from the package (version {SCHEMA_VERSION}):")
    out.echo("  (- only in the package, + only in the database, ~ different)")
    for line in diff.lines():
        out.echo(f"  {line}")
    if diff.database.get("version") not in (None, str(SCHEMA_VERSION)):
        out.echo("hint: `loader schema upgrade` applies the migrations to this version")


@schema_group.command(
    "sql",
    epilog="\b\nExamples:\n  loader schema sql > schema.sql\n  loader schema sql --upgrade-from 1 > up.sql",
)
@click.option(
    "--upgrade-from",
    type=click.IntRange(min=1),
    default=None,
    metavar="VERSION",
    help="Print the migrations from VERSION to the current one instead.",
)
def schema_sql_command(upgrade_from: int | None) -> None:
    """Print schema.sql (or the upgrade migrations) for a DBA to review and run with psql."""
    if upgrade_from is None:
        click.echo(schema_sql(), nl=False)
        return
    steps = migrate.pending(upgrade_from, migrate.load())
    if not steps:
        out.echo(f"-- nothing to apply: version {upgrade_from} is current", err=True)
    for mig in steps:
        out.echo(f"-- ===== {mig.name} =====")
        click.echo(mig.sql, nl=not mig.sql.endswith("\n"))
