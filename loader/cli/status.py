"""`loader status`: one batch's totals, timing and failure reasons, or the recent batches."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

import click
import psycopg
from psycopg.rows import class_row

from loader import queries
from loader.cli import output as out
from loader.cli.base import Session, cli, common_options
from loader.errors import CliError
from loader.models import BatchProgress
from loader.progress import follow_progress, get_progress, recount_batch

# Largest --limit: the query's LIMIT is a bigint.
MAX_LIMIT = 2**63 - 1

STATUS_EPILOG = """\b
Examples:
  loader status B1                # totals, timing, failure reasons grouped
  loader status B1 --json         # the same for scripts
  loader status                   # the 20 most recent batches
  loader status --unfinished      # batches still PENDING or STARTED, oldest first
  loader status B1 --follow       # the batch live, one line per committed change, until it finishes
  loader status B1 --follow --listen-dsn postgresql://api@db-direct/ocr
                                  # ... listening on a direct connection (--dsn goes through PgBouncer)
  loader status B1 --recount      # recount totals from the stored rows (batches other writers filled)
"""


@dataclass(frozen=True)
class ReasonGroup:
    """Failures of one kind (reasons differing only in values), most frequent first."""

    outcome: str
    kind: str
    images: int
    example: str
    variants: int
    #: How many kinds the batch has in all (the same on every row).
    kinds: int


@dataclass(frozen=True)
class BatchStatus:
    progress: BatchProgress
    stored_failed: int
    rejected: int
    groups: list[ReasonGroup]

    @property
    def kinds(self) -> int:
        return self.groups[0].kinds if self.groups else 0

    @property
    def remaining(self) -> int:
        return max(self.progress.total_images - self.progress.accounted_images, 0)

    @property
    def elapsed_s(self) -> float | None:
        p = self.progress
        return (p.updated_at - p.created_at).total_seconds() if p.updated_at and p.created_at else None

    def as_json(self) -> dict[str, Any]:
        data = out.progress_json(self.progress)
        data.update(
            stored_failed=self.stored_failed,
            rejected=self.rejected,
            remaining=self.remaining,
            elapsed_s=self.elapsed_s,
            failure_reason_kinds=self.kinds,
            failure_reasons=[
                {
                    "outcome": g.outcome,
                    "kind": g.kind,
                    "images": g.images,
                    "example": g.example,
                    "variants": g.variants,
                }
                for g in self.groups
            ],
        )
        return data


def read_status(conn: psycopg.Connection[Any], batch_id: str, reasons: int) -> BatchStatus:
    progress = get_progress(conn, batch_id)
    with conn.transaction():
        stored_failed, rejected = conn.execute(
            queries.get("batch_failure_counts"), {"batch_id": batch_id}
        ).fetchone() or (0, 0)
        groups = (
            conn.cursor(row_factory=class_row(ReasonGroup))
            .execute(queries.get("batch_failure_reasons"), {"batch_id": batch_id, "limit": max(reasons, 1)})
            .fetchall()
        )
    return BatchStatus(progress, stored_failed, rejected, groups[:reasons])


def print_status(status: BatchStatus) -> None:
    progress = status.progress
    out.echo(out.batch_line(progress))
    elapsed = status.elapsed_s
    out.echo(f"  completed  {out.n(progress.completed_images)}")
    out.echo(
        f"  failed     {out.n(progress.failed_images)}  ({out.n(status.stored_failed)} stored as failed, "
        f"{out.n(status.rejected)} rejected)"
    )
    out.echo(f"  remaining  {out.n(status.remaining)}")
    out.echo(
        f"  created    {out.when(progress.created_at)}; last write {out.when(progress.updated_at)}"
        + (f" ({out.duration(elapsed)} later)" if elapsed is not None else "")
    )
    _print_reasons(status)
    if status.rejected:
        out.echo(f"raw rejected lines: loader rejects {out.printable(shlex.quote(progress.batch_id))}")


def _print_reasons(status: BatchStatus) -> None:
    groups, kinds = status.groups, status.kinds
    if not groups:
        return
    out.echo(f"failure reasons ({kinds} kinds{', most frequent first' if kinds > 1 else ''}):")
    out.table(
        [
            (
                out.n(g.images),
                g.outcome.ljust(8),
                g.example + (f"  ({g.variants} variants)" if g.variants > 1 else ""),
            )
            for g in groups
        ],
        right=[0],
        indent="  ",
    )
    if kinds > len(groups):
        out.echo(f"  ... and {kinds - len(groups)} more kinds (--reasons N)")


def show_status(
    conn: psycopg.Connection[Any], batch_id: str, *, as_json: bool = False, reasons: int = 10
) -> None:
    """What `loader status BATCH_ID` prints (`loader demo` shows it too)."""
    status = read_status(conn, batch_id, reasons)
    if as_json:
        out.echo_json(status.as_json())
    else:
        print_status(status)


def list_batches(conn: psycopg.Connection[Any], limit: int, unfinished: bool, as_json: bool) -> None:
    name = "batch_list_unfinished" if unfinished else "batch_list_recent"
    try:
        batches = (
            conn.cursor(row_factory=class_row(BatchProgress))
            .execute(queries.get(name), {"limit": limit})
            .fetchall()
        )
    except psycopg.errors.UndefinedTable as exc:
        raise CliError("no loader schema in this database; deploy it with `loader schema apply`") from exc
    if as_json:
        out.echo_json([out.progress_json(b) for b in batches])
        return
    if not batches:
        out.echo("no unfinished batches" if unfinished else "no batches yet")
        return
    out.table(
        [
            (
                b.batch_id,
                b.status.value,
                out.n(b.total_images),
                out.n(b.completed_images),
                out.n(b.failed_images),
                f"{b.percentage:.1f}",
                out.when(b.created_at),
                out.when(b.updated_at),
            )
            for b in batches
        ],
        header=("batch_id", "status", "total", "completed", "failed", "%", "created", "last write"),
        right=[2, 3, 4, 5],
    )


@cli.command("status", epilog=STATUS_EPILOG)
@click.argument("batch_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option(
    "--limit",
    metavar="N",
    type=click.IntRange(min=1, max=MAX_LIMIT),
    default=20,
    show_default=True,
    help="Batches listed.",
)
@click.option("--unfinished", is_flag=True, help="List only batches still PENDING or STARTED.")
@click.option("--follow", is_flag=True, help="Print the batch at every committed change until it finishes.")
@click.option(
    "--listen-dsn",
    envvar="LOADER_LISTEN_DSN",
    show_envvar=True,
    default="",
    metavar="DSN",
    help="With --follow: a direct connection to PostgreSQL to LISTEN on, when --dsn goes through "
    "a transaction pooler (PgBouncer), which forwards no notifications. Default: --dsn.",
)
@click.option("--recount", is_flag=True, help="Recount the batch's totals from its stored rows first.")
@click.option(
    "--reasons",
    metavar="N",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Failure reason kinds shown.",
)
@common_options
def status_command(
    batch_id: str | None,
    as_json: bool,
    limit: int,
    unfinished: bool,
    follow: bool,
    listen_dsn: str,
    recount: bool,
    reasons: int,
    session: Session,
) -> None:
    """Show a batch's totals, status, timing and failure reasons; without BATCH_ID, list batches."""
    if batch_id is None:
        if follow or recount:
            raise click.UsageError("--follow and --recount need a BATCH_ID")
        with session.connect() as conn:
            list_batches(conn, limit, unfinished, as_json)
        return
    if follow:
        follow_status(session, batch_id, as_json=as_json, listen_dsn=listen_dsn or None)
        return
    with session.connect() as conn:
        if recount:
            recount_batch(conn, batch_id)
        show_status(conn, batch_id, as_json=as_json, reasons=reasons)


def follow_status(session: Session, batch_id: str, *, as_json: bool, listen_dsn: str | None = None) -> None:
    """`loader status B --follow`: one line per committed change of the batch (loader_progress events)."""
    for progress in follow_progress(session.dsn, batch_id, listen_dsn=listen_dsn):
        if as_json:
            out.echo_json(out.progress_json(progress))
        else:
            out.echo(out.batch_line(progress))
