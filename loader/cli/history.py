"""`loader history`: an image's results, a batch's results by model version, retention of kept results."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from loader.cli import output as out
from loader.cli.base import Session, cli, common_options
from loader.errors import CliError, quoted
from loader.lifecycle.history import BatchVersion, ResultVersion, batch_versions, image_history, prune_history

HISTORY_EPILOG = """\b
Examples:
  loader history /images/0001.png            # every result of the image, newest first
  loader history /images/0001.png --json     # ... with their boxes, for scripts
  loader history --batch B1                  # the batch's results by model version
  loader history --keep 3 --yes              # retention: the newest 3 kept results per image
  loader history --replaced-before 2026-09-01 --batch B1 --yes

\b
A re-OCR (--replace), a repaired failure and `loader rollback` keep the result
they replace; an image's results are numbered 1, 2, ... (the current one is
marked *). Retention deletes kept results only (never a current one), in every
batch or in --batch; with both --keep and --replaced-before, only the results
both select. It needs a role holding loader_admin. See docs/history.md.
"""

# When a kept result was replaced, as typed: a date, or a date and time (UTC unless a zone is given).
_DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]


def _version_json(v: ResultVersion) -> dict[str, Any]:
    data = v._asdict()
    data["replaced_by"] = v.replaced_by.hex() if v.replaced_by else None
    return data


def _when(value: datetime | None) -> str:
    """To the minute: two times and the rest of a row stay within 80 columns."""
    return value.astimezone().strftime("%Y-%m-%d %H:%M") if value else "-"


def _print_image(versions: list[ResultVersion]) -> None:
    first = versions[0]
    place = "no position" if first.position is None else f"position {first.position}"
    out.echo(f"image {out.printable(first.image_path)}: batch {out.printable(first.batch_id)}, {place}")
    rows = [
        [
            f"{v.version}{'*' if v.current else ''}",
            v.model_version or "-",
            v.status,
            out.n(len(v.boxes)),
            _when(v.stored_at),
            _when(v.replaced_at) if v.replaced_at else "current",
            v.replaced_in or "",
        ]
        for v in versions
    ]
    out.table(
        rows,
        header=["version", "model", "status", "boxes", "stored", "replaced", "by"],
        right=[3],
        indent="  ",
    )
    for v in versions:
        if v.error:
            out.echo(f"  {v.version}: {out.printable(v.error[:70])}")


def _print_batch(batch_id: str, versions: list[BatchVersion]) -> None:
    out.echo(f"batch {out.printable(batch_id)}: results by model version, newest first")
    rows = [
        [
            v.model_version or "none",
            out.n(v.current_images),
            out.n(v.kept_results),
            out.n(v.kept_images),
            _when(v.last_replaced),
        ]
        for v in versions
    ]
    out.table(
        rows, header=["model", "current", "kept", "images", "last replaced"], right=[1, 2, 3], indent="  "
    )


def _prune(
    session: Session, keep: int | None, before: datetime | None, batch_id: str | None, yes: bool
) -> None:
    what = " and ".join(
        part
        for part in (
            f"beyond each image's newest {keep}" if keep is not None else "",
            f"replaced before {before.isoformat()}" if before is not None else "",
        )
        if part
    )
    where = f"batch {quoted(batch_id)}" if batch_id else "every batch"
    if not yes and not click.confirm(f"delete the kept results {what}, in {where}?"):
        raise CliError("nothing deleted")
    with session.connect() as conn:
        deleted = prune_history(conn, keep=keep, replaced_before=before, batch_id=batch_id)
    for batch, count in sorted(deleted.items()):
        out.echo(f"batch {out.printable(batch)}: {out.count(count, 'kept result')} deleted")
    out.echo(f"retention: {out.count(sum(deleted.values()), 'kept result')} deleted")


@cli.command("history", epilog=HISTORY_EPILOG)
@click.argument("image_path", required=False)
@click.option("--batch", "-b", "batch_id", metavar="BATCH_ID", help="The batch's results by model version.")
@click.option(
    "--keep", type=click.IntRange(min=0), default=None, help="Retention: keep each image's newest K."
)
@click.option(
    "--replaced-before",
    "before",
    metavar="DATE",
    type=click.DateTime(formats=_DATE_FORMATS),
    default=None,
    help="Retention: delete kept results replaced before DATE (UTC unless it names a zone).",
)
@click.option("--yes", is_flag=True, help="Do not ask before deleting.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@common_options
def history_command(
    image_path: str | None,
    batch_id: str | None,
    keep: int | None,
    before: datetime | None,
    yes: bool,
    as_json: bool,
    session: Session,
) -> None:
    """Every result of an image (newest first), a batch's results by model version, or retention."""
    pruning = keep is not None or before is not None
    if pruning:
        if image_path is not None:
            raise click.UsageError(
                "retention takes --keep / --replaced-before (and --batch), not an IMAGE_PATH"
            )
        when = before.replace(tzinfo=UTC) if before is not None and before.tzinfo is None else before
        _prune(session, keep, when, batch_id, yes)
        return
    if (image_path is None) == (batch_id is None):
        raise click.UsageError(
            "name one IMAGE_PATH, or pass --batch BATCH_ID (or --keep / --replaced-before)"
        )
    with session.connect() as conn:
        if batch_id is not None:
            summary = batch_versions(conn, batch_id)
            if as_json:
                out.echo_json({"batch_id": batch_id, "model_versions": [v._asdict() for v in summary]})
            else:
                _print_batch(batch_id, summary)
            return
        assert image_path is not None
        versions = image_history(conn, image_path)
    if not versions:
        raise CliError(f"no image {quoted(image_path)} in this database")
    if as_json:
        out.echo_json({"image_path": image_path, "versions": [_version_json(v) for v in versions]})
    else:
        _print_image(versions)
