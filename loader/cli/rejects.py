"""`loader rejects`: a batch's rejected inputs (open and resolved), or exported to fix and load back."""

from __future__ import annotations

import contextlib
import gzip
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import click
import psycopg

from loader.cli import output as out
from loader.cli.base import Session, cli, common_options
from loader.errors import CliError
from loader.lifecycle.repair import RejectCounts, RejectRecord, count_rejects, list_rejects, raw_rejects
from loader.progress.read import get_progress

REJECTS_EPILOG = """\b
Examples:
  loader rejects B1                         # the first 50, open and resolved, in input order
  loader rejects B1 --open                  # only those still counted as failed
  loader rejects B1 --after 1234            # the next page
  loader rejects B1 --export fixme.jsonl    # open rejects, each on its own line number
  loader load fixme.jsonl -b B1 --repair    # after fixing them in place
  loader rejects B1 --export all.jsonl --compact   # every reject's raw input, for audit

\b
A reject is an input that could not be stored at all: not JSON, no usable
image_path, a duplicate, or a path another batch owns. Its position is the
0-based line number of the input (line number - 1). It is resolved (kept, no
longer counted as failed) once a later input of the batch stores its image.

\b
--export writes a sparse file: line N holds the raw input of the open reject
at position N-1, byte for byte, and every other line is empty. Fix the lines in
place (leave a line as it is, or empty it, to give up on it) and load the file
with --repair: each line goes back to its position and resolves the reject
there. --compact writes every reject (open and resolved), one after the other,
byte for byte. A FILE ending in .gz is gzipped.
"""


def _as_json(row: RejectRecord) -> dict[str, Any]:
    return {
        "position": row.position,
        "line": row.position + 1,
        "image_path": row.image_path,
        "reason": row.reason,
        "raw_bytes": row.raw_bytes,
        "created_at": row.created_at.isoformat(),
        "resolved_at": row.resolved_at.isoformat() if row.resolved_at else None,
        "resolved_by": row.resolved_by,
        "resolved_image_path": row.resolved_image_path,
    }


@cli.command("rejects", epilog=REJECTS_EPILOG)
@click.argument("batch_id")
@click.option(
    "--limit", metavar="N", type=click.IntRange(min=1), default=50, show_default=True, help="Rejects listed."
)
@click.option(
    "--after",
    metavar="POSITION",
    type=click.IntRange(min=-1),
    default=-1,
    help="List rejects after this position (paging).",
)
@click.option("--open", "open_only", is_flag=True, help="List only open rejects (not yet resolved).")
@click.option(
    "--export", "export_to", metavar="FILE", help="Write the open rejects' raw input to FILE (- for stdout)."
)
@click.option("--compact", is_flag=True, help="With --export: every reject, one per line, no gaps (audit).")
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@click.option("--json", "as_json", is_flag=True, help="List as JSON lines (raw input not included).")
@common_options
def rejects_command(
    batch_id: str,
    limit: int,
    after: int,
    open_only: bool,
    export_to: str | None,
    compact: bool,
    force: bool,
    as_json: bool,
    session: Session,
) -> None:
    """List the rejected inputs of a batch with their reasons, or export them as JSONL."""
    with session.connect() as conn:
        get_progress(conn, batch_id)  # a clear error for an unknown batch
        if export_to is not None:
            export_rejects(conn, batch_id, export_to, force=force, compact=compact)
            return
        counts = count_rejects(conn, batch_id)
        rows = list_rejects(conn, batch_id, after=after, limit=limit, open_only=open_only)
    if as_json:
        for row in rows:
            out.echo_json(_as_json(row))
        return
    print_rejects(batch_id, rows, counts, limit, after)


def print_rejects(
    batch_id: str, rows: list[RejectRecord], counts: RejectCounts, limit: int, after: int
) -> None:
    if not rows:
        after_text = f" after position {after}" if after >= 0 else ""
        out.echo(f"no rejects in batch {out.printable(batch_id)}{after_text}")
        return
    out.echo(
        f"{out.n(counts.open + counts.resolved)} rejects in batch {out.printable(batch_id)} "
        f"({out.n(counts.open)} open, "
        f"{out.n(counts.resolved)} resolved); showing {len(rows)}:"
    )
    cells: list[tuple[str, str, str]] = []
    for row in rows:
        cells.append((str(row.position), str(row.raw_bytes), row.image_path or "-"))
        cells.append(("", "", row.reason))
        if not row.is_open:
            cells.append(("", "", f"resolved {out.when(row.resolved_at)} by {_resolver(row)}"))
    out.table(cells, header=("position", "bytes".rjust(7), "image_path / reason"), right=[0, 1])
    if len(rows) == limit:
        out.echo(f"more: loader rejects {out.printable(shlex.quote(batch_id))} --after {rows[-1].position}")
    if counts.open:
        out.echo(f"export: loader rejects {out.printable(shlex.quote(batch_id))} --export rejects.jsonl")


def _resolver(row: RejectRecord) -> str:
    if row.resolved_by is None:
        return "a row since deleted, or a repair line that was still bad"
    return f"OCR row {row.resolved_by} ({row.resolved_image_path})"


# --------------------------------------------------------------------------- exporting


@dataclass
class Export:
    """What an export wrote."""

    written: int = 0
    size: int = 0
    #: Rejects whose raw input holds a newline (not from a JSONL file).
    with_newline: int = 0
    #: Open rejects left out of a sparse export: another one holds their position.
    crowded: int = 0


def export_rejects(
    conn: psycopg.Connection[Any], batch_id: str, target: str, *, force: bool, compact: bool
) -> None:
    if target != "-" and Path(target).exists() and not force:
        raise CliError(f"{target} exists; pick another file or pass --force to overwrite it")
    with contextlib.ExitStack() as stack:
        sink = _sink(stack, target)
        rows = raw_rejects(conn, batch_id, open_only=not compact)
        export = write_compact(sink, (raw for _, raw in rows)) if compact else write_sparse(sink, rows)
        sink.flush()
    _print_export(export, batch_id, target, compact)


def _print_export(export: Export, batch_id: str, target: str, compact: bool) -> None:
    where = "stdout" if target == "-" else target
    what = "rejects" if compact else "open rejects"
    out.echo(
        f"wrote {out.n(export.written)} {what} ({out.n(export.size)} bytes) of batch "
        f"{out.printable(batch_id)} to {out.printable(where)}",
        err=True,
    )
    if export.with_newline:
        out.echo(
            f"warning: {export.with_newline} rejects hold a newline in their raw input (not from a JSONL "
            "file); "
            + ("they span several lines in the export" if compact else "their lines are left empty"),
            err=True,
        )
    if export.crowded:
        out.echo(
            f"warning: {export.crowded} open rejects share a position with another (calls numbered from 0 "
            "each): only the first of each position is in the export; see --compact",
            err=True,
        )
    if not compact and target != "-" and export.written:
        command = out.printable(f"loader load {shlex.quote(target)} -b {shlex.quote(batch_id)} --repair")
        out.echo(f"fix the lines in place, then: {command}", err=True)


def _sink(stack: contextlib.ExitStack, target: str) -> IO[bytes]:
    if target == "-":
        return sys.stdout.buffer
    if target.endswith(".gz"):
        zipped: IO[bytes] = stack.enter_context(gzip.GzipFile(target, "wb"))  # type: ignore[arg-type]
        return zipped
    return stack.enter_context(open(target, "wb"))


def write_compact(sink: IO[bytes], raws: Iterable[bytes]) -> Export:
    """Every raw input, one after the other, byte for byte."""
    export = Export()
    for raw in raws:
        export.with_newline += b"\n" in raw
        sink.write(raw + b"\n")
        export.written += 1
        export.size += len(raw) + 1
    return export


def write_sparse(sink: IO[bytes], rejects: Iterable[tuple[int, bytes]]) -> Export:
    """Line N holds the reject at position N-1; the lines between stay empty."""
    export = Export()
    next_position = 0
    for position, raw in rejects:
        if position < next_position:
            export.crowded += 1
            continue
        gap = b"\n" * (position - next_position)
        line = raw
        if b"\n" in raw:
            export.with_newline += 1
            line = b""
        else:
            export.written += 1
        sink.write(gap + line + b"\n")
        export.size += len(gap) + len(line) + 1
        next_position = position + 1
    return export
