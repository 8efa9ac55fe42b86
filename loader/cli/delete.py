"""`loader delete`: remove a batch and everything under it, or every batch finished before a date."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from loader.cli import output as out
from loader.cli.base import Session, cli, common_options
from loader.errors import CliError, quoted
from loader.lifecycle import Deleted, delete_batch, delete_finished, finished_batches

DELETE_EPILOG = """\b
Examples:
  loader delete B1                          # asks first
  loader delete B1 --yes                    # in scripts
  loader delete --finished-before 2026-09-01 --yes   # retention

\b
A batch goes with its chains, OCR results, text boxes, task logs, rejects and
call ledger, in one transaction; nothing else is touched, and its images can
be loaded again. Retention deletes the batches that finished (SUCCESS or
FAILURE) and last changed before the date, oldest first, each in its own
transaction, printing each one. Needs a role holding loader_admin.
"""


def _line(deleted: Deleted) -> str:
    return (
        f"deleted batch {deleted.batch_id}: {out.count(deleted.images, 'image')}, "
        f"{out.count(deleted.boxes, 'text box', 'text boxes')}, {out.count(deleted.rejects, 'reject')}, "
        f"{out.count(deleted.task_logs, 'task log')}"
    )


def _confirm(yes: bool, question: str) -> None:
    if not yes and not click.confirm(question):
        raise CliError("nothing deleted")


def _retention(session: Session, before: datetime, yes: bool) -> None:
    with session.connect() as conn:
        first = finished_batches(conn, before)
        if not first:
            out.echo(f"no batch finished before {before.isoformat()}")
            return
        _confirm(
            yes, f"delete every batch finished before {before.isoformat()} (oldest: {first[0].batch_id})?"
        )
        done = 0
        for deleted in delete_finished(conn, before):
            done += 1
            out.echo(f"[{done}] {_line(deleted)}")
        out.echo(f"retention: {out.count(done, 'batch', 'batches')} deleted")


@cli.command("delete", epilog=DELETE_EPILOG)
@click.argument("batch_id", required=False)
@click.option(
    "--finished-before",
    "before",
    metavar="DATE",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    default=None,
    help="Retention: delete every batch that finished before DATE (UTC).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@common_options
def delete_command(batch_id: str | None, before: datetime | None, yes: bool, session: Session) -> None:
    """Delete a batch (and everything under it), or every batch finished before a date."""
    if (batch_id is None) == (before is None):
        raise click.UsageError("name one BATCH_ID, or pass --finished-before DATE")
    if before is not None:
        _retention(session, before.replace(tzinfo=UTC), yes)
        return
    assert batch_id is not None
    _confirm(yes, f"delete batch {quoted(batch_id)} and everything under it?")
    with session.connect() as conn:
        out.echo(_line(delete_batch(conn, batch_id)))
