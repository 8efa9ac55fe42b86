"""`loader compare`: two model versions of a batch's results, compared in SQL."""

from __future__ import annotations

import shutil

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from loader.cli import output as out
from loader.cli.base import Session, cli, common_options
from loader.lifecycle.history import DEFAULT_TOP, ChangedImage, Comparison, compare

COMPARE_EPILOG = """\b
Examples:
  loader compare B1                           # each image's current result vs the one it replaced
  loader compare B1 --from ocr-v1 --to ocr-v2 # two model versions
  loader compare B1 --top 25 --json           # for scripts

\b
For each image of the batch, the "to" side is its newest result of model --to
(default: its current result), the "from" side its newest result of model
--from older than that (default: the result just before it). Images with both
are compared: unchanged, success -> failed and back, text changed, boxes added
and removed, mean confidence, and the images that changed most. See docs/history.md.
"""

# The tables never grow wider than this, whatever the terminal: a report people paste.
MAX_COLUMNS = 80


def _console() -> Console:
    width = min(MAX_COLUMNS, shutil.get_terminal_size((MAX_COLUMNS, 24)).columns)
    return Console(width=width, highlight=False, soft_wrap=False)


def _side(asked: str | None, found: list[str | None], default: str) -> str:
    if asked is not None:
        return out.printable(asked)
    names = ", ".join(out.printable(m or "none") for m in found[:3])
    return f"{default} ({names})" if names else default


def _confidence(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _change(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def summary_table(c: Comparison) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_header=True, title_justify="left")
    table.add_column("batch " + out.printable(c.batch_id), overflow="fold")
    table.add_column("images", justify="right")
    rows = [
        ("from", _side(c.from_model, c.from_models, "previous")),
        ("to", _side(c.to_model, c.to_models, "current")),
        ("images in the batch", out.n(c.batch_images)),
        ("compared (both results held)", out.n(c.compared)),
        ("unchanged", out.n(c.unchanged)),
        ("success -> failed", out.n(c.success_to_failed)),
        ("failed -> success", out.n(c.failed_to_success)),
        ("text changed", out.n(c.text_changed)),
        ("boxes added", out.n(c.boxes_added)),
        ("boxes removed", out.n(c.boxes_removed)),
        (
            "mean confidence",
            f"{_confidence(c.from_mean_confidence)} -> {_confidence(c.to_mean_confidence)}"
            f" ({_change(c.confidence_change)})",
        ),
    ]
    for label, value in rows:
        table.add_row(Text(label), Text(value))
    return table


def changed_table(images: list[ChangedImage]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title="changed most", title_justify="left")
    table.add_column("image", overflow="fold", ratio=1)
    table.add_column("status", no_wrap=True)
    table.add_column("boxes", justify="right", no_wrap=True)
    table.add_column("changed", justify="right", no_wrap=True)
    table.add_column("conf.", justify="right", no_wrap=True)
    for image in images:
        status = (
            image.from_status
            if image.from_status == image.to_status
            else f"{image.from_status}->{image.to_status}"
        )
        table.add_row(
            Text(out.printable(image.image_path)),
            Text(status),
            Text(f"{image.from_boxes}->{image.to_boxes}"),
            Text(out.n(image.changed_boxes)),
            Text(_change(image.confidence_change)),
        )
    return table


@cli.command("compare", epilog=COMPARE_EPILOG)
@click.argument("batch_id")
@click.option("--from", "from_model", metavar="V1", default=None, help="Model version of the older side.")
@click.option("--to", "to_model", metavar="V2", default=None, help="Model version of the newer side.")
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=DEFAULT_TOP,
    show_default=True,
    help="Images listed that changed most.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@common_options
def compare_command(
    batch_id: str, from_model: str | None, to_model: str | None, top: int, as_json: bool, session: Session
) -> None:
    """Compare two model versions of a batch's results (by default: current vs previous)."""
    with session.connect() as conn:
        comparison = compare(conn, batch_id, from_model=from_model, to_model=to_model, top=top)
    if as_json:
        out.echo_json(comparison.as_json())
        return
    console = _console()
    console.print(summary_table(comparison))
    if comparison.most_changed:
        console.print(changed_table(comparison.most_changed))
    elif comparison.compared == 0:
        out.echo(
            "nothing to compare: no image of the batch holds both results (see `loader history --batch`)"
        )
