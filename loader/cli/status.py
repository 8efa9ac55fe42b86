"""`loader status`: one batch's totals, timing and failure reasons, or the recent batches."""

from __future__ import annotations

import shlex
from typing import Any

import click
import psycopg

from loader.cli import output as out
from loader.cli.base import Session, cli, common_options
from loader.lifecycle.batches import BatchReport, describe_batch, list_batches
from loader.progress.read import follow_progress, recount_batch

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


def status_json(status: BatchReport) -> dict[str, Any]:
    data = out.progress_json(status.progress)
    data.update(
        stored_failed=status.stored_failed,
        rejected=status.rejected,
        remaining=status.remaining,
        elapsed_s=status.elapsed_s,
        failure_reason_kinds=status.kinds,
        failure_reasons=[
            {
                "outcome": g.outcome,
                "kind": g.kind,
                "images": g.images,
                "example": g.example,
                "variants": g.variants,
            }
            for g in status.groups
        ],
        model_versions=[{"model_version": m.model_version, "images": m.images} for m in status.models],
    )
    return data


def print_status(status: BatchReport) -> None:
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
    if any(m.model_version for m in status.models):
        versions = ", ".join(
            f"{out.printable(m.model_version or 'none')} ({out.n(m.images)})" for m in status.models
        )
        out.echo(f"  models     {versions}")
    _print_reasons(status)
    if status.rejected:
        out.echo(f"raw rejected lines: loader rejects {out.printable(shlex.quote(progress.batch_id))}")


def _print_reasons(status: BatchReport) -> None:
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
    status = describe_batch(conn, batch_id, reasons=reasons)
    if as_json:
        out.echo_json(status_json(status))
    else:
        print_status(status)


def show_batches(conn: psycopg.Connection[Any], limit: int, unfinished: bool, as_json: bool) -> None:
    batches = list_batches(conn, unfinished=unfinished, limit=limit)
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
            show_batches(conn, limit, unfinished, as_json)
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
