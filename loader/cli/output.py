"""What commands print: numbers, times, batch lines, JSON objects and aligned tables.

Text goes to stdout through click (so tests and pipes see it); notes about
the run (warnings, "wrote N rejects") go to stderr. One helper per shape, so
a new command or column is a line, not another hand-aligned loop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import click

from loader.errors import printable as escape
from loader.models import BatchProgress


def printable(value: str) -> str:
    """``value`` with every control character written as an escape (``\\x1b``, ``\\n``).

    Used for every value from the database or the command line that is printed:
    batch ids, image paths, reasons. The rule is errors.printable, the one of
    every message and prompt.
    """
    return escape(value)


def n(value: int) -> str:
    """``12,345``."""
    return f"{value:,}"


def count(value: int, word: str, plural: str | None = None) -> str:
    """``1 line``, ``2,000 lines`` (``plural`` for words that take more than an s)."""
    return f"{value:,} {word if value == 1 else plural or word + 's'}"


def when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z") if value else "-"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def progress_json(progress: BatchProgress) -> dict[str, Any]:
    data = progress.model_dump(mode="json")
    data["percentage"] = round(progress.percentage, 2)
    return data


def batch_line(progress: BatchProgress) -> str:
    return (
        f"batch {printable(progress.batch_id)}: {progress.status.value}, {n(progress.accounted_images)} of "
        f"{n(progress.total_images)} images accounted for ({progress.percentage:.1f}%): "
        f"{n(progress.completed_images)} completed, {n(progress.failed_images)} failed"
    )


def echo(text: str = "", *, err: bool = False) -> None:
    """``text`` on stdout (or stderr); a control character a value slipped in is escaped."""
    click.echo(escape(text, keep="\n\t"), err=err)


def echo_json(data: Any) -> None:
    """One JSON document on one line (non-ASCII kept readable, control characters escaped).

    json escapes C0 controls itself; DEL and the C1 controls it leaves raw are written
    as \\u escapes, which JSON readers read back as the same characters.
    """
    text = json.dumps(data, ensure_ascii=False, default=str)
    click.echo(re.sub("[\x7f-\x9f]", lambda m: f"\\u{ord(m.group()):04x}", text))


def table(
    rows: Iterable[Sequence[str]],
    *,
    header: Sequence[str] | None = None,
    right: Iterable[int] = (),
    indent: str = "",
) -> None:
    """Columns aligned to their widest cell, two spaces apart; ``right`` holds the numeric columns.

    A cell padded beforehand (``"failed".ljust(8)``) sets a column's least width. Cells
    are printed through :func:`printable`, so no value can break a row or the terminal.
    """
    lines = [list(row) for row in ([header] if header else [])] + [
        [printable(cell) for cell in row] for row in rows
    ]
    if not lines:
        return
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    aligned = set(right)
    for line in lines:
        cells = [
            c.rjust(w) if i in aligned else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        click.echo((indent + "  ".join(cells)).rstrip())


def confirm(question: str) -> bool:
    """Ask yes/no on the terminal; the question's values escaped like every printed line."""
    return click.confirm(escape(question))
