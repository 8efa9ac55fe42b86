"""`loader delete`: remove a batch and everything under it, or every batch finished before a date."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from loader.cli import output as out
from loader.cli.base import Session, cli, common_options
from loader.errors import CliError, quoted
from loader.lifecycle.delete import Deleted, Skipped, delete_batch, finished_batches, iter_delete_finished

DELETE_EPILOG = """\b
Examples:
  loader delete B1                          # asks first
  loader delete B1 --yes                    # in scripts
  loader delete --finished-before 2026-09-01 --yes            # retention (midnight UTC)
  loader delete --finished-before "2026-09-01 16:42:50"       # UTC unless a zone is given
  loader delete --finished-before 2026-09-01T16:42:50+02:00

\b
A batch goes with its chains, OCR results, text boxes, task logs, rejects and
call ledger, in one transaction; nothing else is touched, and its images can
be loaded again. Retention deletes the batches that finished (SUCCESS or
FAILURE) and last changed before the date, oldest first, each in its own
transaction, printing each one. Each is checked again under the batch's lock
from its rows: one that a recount does not call finished, or that (or any row
under it) changed since the date, is skipped and printed as such. Needs a role
holding loader_admin.
"""

EXAMPLES = "2026-09-01, 2026-09-01 16:42:50, 2026-09-01T16:42:50Z, 2026-09-01T16:42:50+02:00"


class IsoDateTime(click.ParamType[datetime]):
    """An ISO 8601 date or date and time, as people type them: a space or a ``T``
    between date and time, seconds and fractions optional, a zone (``Z``,
    ``+02:00``) optional. Without a zone it is UTC; a date alone is its midnight."""

    name = "date"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        text = str(value).strip()
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{quoted(str(value))} is not an ISO 8601 date or time (e.g. {EXAMPLES})", param, ctx)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _line(deleted: Deleted) -> str:
    return (
        f"deleted batch {out.printable(deleted.batch_id)}: {out.count(deleted.images, 'image')}, "
        f"{out.count(deleted.boxes, 'text box', 'text boxes')}, {out.count(deleted.rejects, 'reject')}, "
        f"{out.count(deleted.task_logs, 'task log')}"
    )


def _confirm(yes: bool, question: str) -> None:
    if not yes and not out.confirm(question):
        raise CliError("nothing deleted")


def _retention(session: Session, before: datetime, yes: bool) -> None:
    with session.connect() as conn:
        first = finished_batches(conn, before, limit=1)
        if not first:
            out.echo(f"no batch finished before {before.isoformat()}")
            return
        _confirm(
            yes,
            f"delete every batch finished before {before.isoformat()} (oldest: {quoted(first[0].batch_id)})?",
        )
        done = skipped = 0
        for outcome in iter_delete_finished(conn, before):
            if isinstance(outcome, Skipped):
                skipped += 1
                out.echo(f"skipped batch {quoted(outcome.batch_id)}: {outcome.reason}")
                continue
            done += 1
            out.echo(f"[{done}] {_line(outcome)}")
        kept = f", {out.count(skipped, 'batch', 'batches')} skipped" if skipped else ""
        out.echo(f"retention: {out.count(done, 'batch', 'batches')} deleted{kept}")


@cli.command("delete", epilog=DELETE_EPILOG)
@click.argument("batch_id", required=False)
@click.option(
    "--finished-before",
    "before",
    metavar="DATE",
    type=IsoDateTime(),
    default=None,
    help="Retention: delete every batch that finished before DATE (ISO 8601; UTC unless it names a zone).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@common_options
def delete_command(batch_id: str | None, before: datetime | None, yes: bool, session: Session) -> None:
    """Delete a batch (and everything under it), or every batch finished before a date."""
    if (batch_id is None) == (before is None):
        raise click.UsageError("name one BATCH_ID, or pass --finished-before DATE")
    if before is not None:
        _retention(session, before, yes)
        return
    assert batch_id is not None
    _confirm(yes, f"delete batch {quoted(batch_id)} and everything under it?")
    with session.connect() as conn:
        out.echo(_line(delete_batch(conn, batch_id)))
