"""`loader rejects`: a batch's rejected inputs with their reasons, or exported byte for byte."""

from __future__ import annotations

import contextlib
import gzip
import shlex
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import click
import psycopg
from psycopg.rows import class_row

from loader import queries
from loader.cli import output as out
from loader.cli.base import Session, cli, common_options
from loader.errors import CliError
from loader.progress import get_progress

REJECTS_EPILOG = """\b
Examples:
  loader rejects B1                         # the first 50, in input order
  loader rejects B1 --after 1234            # the next page
  loader rejects B1 --export fixme.jsonl    # raw lines, byte for byte
  loader rejects B1 --export - | jq .       # to stdout
  loader load fixme.jsonl --batch-id B1     # after fixing them

\b
A reject is an input that could not be stored at all: not JSON, no usable
image_path, a duplicate, or a path another batch owns. Its position is the
0-based line number of the input (line number - 1). --export writes the raw
input exactly as received, one per line; a FILE ending in .gz is gzipped.
"""


@dataclass(frozen=True)
class RejectRow:
    """One row of the rejects_list query."""

    position: int
    image_path: str | None
    reason: str
    raw_bytes: int
    created_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "line": self.position + 1,
            "image_path": self.image_path,
            "reason": self.reason,
            "raw_bytes": self.raw_bytes,
            "created_at": self.created_at.isoformat(),
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
@click.option(
    "--export", "export_to", metavar="FILE", help="Write every reject's raw input to FILE (- for stdout)."
)
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@click.option("--json", "as_json", is_flag=True, help="List as JSON lines (raw input not included).")
@common_options
def rejects_command(
    batch_id: str, limit: int, after: int, export_to: str | None, force: bool, as_json: bool, session: Session
) -> None:
    """List the rejected inputs of a batch with their reasons, or export them as JSONL."""
    with session.connect() as conn:
        get_progress(conn, batch_id)  # a clear error for an unknown batch
        if export_to is not None:
            export_rejects(conn, batch_id, export_to, force)
            return
        with conn.transaction():
            total = (conn.execute(queries.get("rejects_count"), {"batch_id": batch_id}).fetchone() or (0,))[0]
            rows = (
                conn.cursor(row_factory=class_row(RejectRow))
                .execute(queries.get("rejects_list"), {"batch_id": batch_id, "after": after, "limit": limit})
                .fetchall()
            )
    if as_json:
        for row in rows:
            out.echo_json(row.as_json())
        return
    print_rejects(batch_id, rows, total, limit, after)


def print_rejects(batch_id: str, rows: list[RejectRow], total: int, limit: int, after: int) -> None:
    if not rows:
        out.echo(f"no rejects in batch {batch_id}" + (f" after position {after}" if after >= 0 else ""))
        return
    out.echo(f"{out.n(total)} rejects in batch {batch_id}; showing {len(rows)}:")
    cells: list[tuple[str, str, str]] = []
    for row in rows:
        cells.append((str(row.position), str(row.raw_bytes), row.image_path or "-"))
        cells.append(("", "", row.reason))
    out.table(cells, header=("position", "bytes".rjust(7), "image_path / reason"), right=[0, 1])
    if len(rows) == limit:
        out.echo(f"more: loader rejects {shlex.quote(batch_id)} --after {rows[-1].position}")
    out.echo(f"export: loader rejects {shlex.quote(batch_id)} --export rejects.jsonl")


def export_rejects(conn: psycopg.Connection[Any], batch_id: str, target: str, force: bool) -> None:
    if target != "-" and Path(target).exists() and not force:
        raise CliError(f"{target} exists; pick another file or pass --force to overwrite it")
    with contextlib.ExitStack() as stack:
        sink = _sink(stack, target)
        written, size, with_newline = _write_raw(conn, batch_id, sink)
    where = "stdout" if target == "-" else target
    out.echo(f"wrote {out.n(written)} rejects ({out.n(size)} bytes) of batch {batch_id} to {where}", err=True)
    if with_newline:
        out.echo(
            f"warning: {with_newline} rejects hold a newline in their raw input (not from a JSONL file); "
            "they span several lines in the export",
            err=True,
        )


def _sink(stack: contextlib.ExitStack, target: str) -> IO[bytes]:
    if target == "-":
        return sys.stdout.buffer
    if target.endswith(".gz"):
        zipped: IO[bytes] = stack.enter_context(gzip.GzipFile(target, "wb"))  # type: ignore[arg-type]
        return zipped
    return stack.enter_context(open(target, "wb"))


def _write_raw(conn: psycopg.Connection[Any], batch_id: str, sink: IO[bytes]) -> tuple[int, int, int]:
    """(rejects written, bytes written, rejects holding a newline)."""
    written = size = with_newline = 0
    with conn.transaction(), conn.cursor(name="loader_rejects_export") as cur:
        # A server-side cursor: the rejects of a huge batch stream through in pages.
        cur.itersize = 1000
        cur.execute(queries.get("rejects_raw"), {"batch_id": batch_id})
        for _position, _path, _reason, value in cur:
            raw = bytes(value)
            with_newline += b"\n" in raw
            sink.write(raw + b"\n")
            written += 1
            size += len(raw) + 1
    sink.flush()
    return written, size, with_newline
