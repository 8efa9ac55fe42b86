"""How `loader load` shows its progress: a rich bar on a terminal, log lines otherwise, or nothing.

The bar fits the terminal: the batch id, the bar, done/total and the ETA are
always shown; the rate, the elapsed time and the outcome counts are added
only as the width allows, least useful last, so an 80-column terminal still
shows what matters instead of a line rich has cut short.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column

from loader.cli import output as out
from loader.cli.logs import progress_log
from loader.save.chunks import Totals

# Seconds between two progress lines when stderr is not a terminal.
PLAIN_PROGRESS_INTERVAL_S = 5.0
# Widest the batch id is shown in the bar, in columns (cut with an ellipsis).
MAX_DESCRIPTION_COLUMNS = 24
# Narrowest bar worth drawing, and the width it takes when there is room.
MIN_BAR_COLUMNS = 10
BAR_COLUMNS = 40
# Columns of "ETA 0:00:00" and of the optional fields, each with its separating space.
_ETA_COLUMNS = 12
_OPTIONAL: list[tuple[str, int]] = [("rate", 17), ("elapsed", 8), ("counts", 62)]


def progress_columns(batch_id: str, total: int | None, width: int) -> list[ProgressColumn]:
    """The bar's columns for a terminal ``width`` columns wide: essentials first, extras as room allows."""
    described = min(len(batch_id), MAX_DESCRIPTION_COLUMNS)
    counted = 2 * len(str(total if total is not None else "?")) + 1
    room = width - (described + 1) - (counted + 1) - _ETA_COLUMNS - 1
    bar = max(MIN_BAR_COLUMNS, min(BAR_COLUMNS, room))
    room -= bar
    extras = set()
    for name, columns in _OPTIONAL:
        if columns <= room:
            extras.add(name)
            room -= columns
    return [
        TextColumn(
            "{task.description}",
            style="bold",
            markup=False,
            table_column=Column(max_width=MAX_DESCRIPTION_COLUMNS, no_wrap=True, overflow="ellipsis"),
        ),
        BarColumn(bar_width=bar),
        MofNCompleteColumn(),
        *([TextColumn("{task.fields[rate]}")] if "rate" in extras else []),
        *(
            [
                TextColumn(
                    "stored {task.fields[stored]} · failed {task.fields[failed]} · "
                    "rejected {task.fields[rejected]} · unchanged {task.fields[unchanged]}"
                )
            ]
            if "counts" in extras
            else []
        ),
        *([TimeElapsedColumn()] if "elapsed" in extras else []),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]


def make_bar(batch_id: str, total: int | None, console: Console, **options: Any) -> Progress:
    """A rich Progress for one load, fitted to ``console``'s width."""
    return Progress(*progress_columns(batch_id, total, console.width), console=console, **options)


class Display:
    """How a load shows its progress: a rich bar ("bar"), log lines ("plain"), or nothing ("none")."""

    def __init__(self, mode: str, batch_id: str, total_lines: int | None, start: int) -> None:
        self.mode = mode
        self.batch_id = batch_id
        self.total = total_lines
        self.start = start
        self.started = time.monotonic()
        self.last_line = 0.0
        self._bar: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> Display:
        if self.mode == "bar":
            todo = None if self.total is None else max(self.total - self.start, 0)
            self._bar = make_bar(self.batch_id, todo, Console(stderr=True))
            self._bar.__enter__()
            self._task = self._bar.add_task(
                out.printable(self.batch_id), total=todo, rate="", stored=0, failed=0, rejected=0, unchanged=0
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)

    def _rate(self, next_position: int) -> float:
        return (next_position - self.start) / max(time.monotonic() - self.started, 1e-9)

    def update(self, totals: Totals, next_position: int) -> None:
        """After each committed chunk."""
        if self._bar is not None:
            self._bar.update(
                self._task,
                completed=next_position - self.start,
                rate=f"{self._rate(next_position):,.0f} images/s",
                stored=out.n(totals.counts.stored),
                failed=out.n(totals.counts.failed),
                rejected=out.n(totals.counts.rejected),
                unchanged=out.n(totals.counts.unchanged),
            )
        elif self.mode == "plain" and self._line_due(totals, next_position):
            self._log_line("progress", totals, next_position, eta=True)

    def finish(self, totals: Totals, next_position: int, *, stopped: bool) -> None:
        """Once, when the load ends (done or stopped)."""
        if self._bar is not None:
            self.update(totals, next_position)
        elif self.mode == "plain":
            self._log_line("stopped" if stopped else "done", totals, next_position, eta=False)

    def _line_due(self, totals: Totals, next_position: int) -> bool:
        if self.total is not None and next_position >= self.total:
            return False  # the final line follows at once
        return totals.chunks <= 1 or time.monotonic() - self.last_line >= PLAIN_PROGRESS_INTERVAL_S

    def _log_line(self, message: str, totals: Totals, next_position: int, *, eta: bool) -> None:
        self.last_line = time.monotonic()
        rate = self._rate(next_position)
        fields: dict[str, Any] = {"batch_id": self.batch_id, "lines": next_position}
        if self.total is not None:
            fields["total_lines"] = self.total
            fields["percent"] = round(100.0 * next_position / self.total, 1) if self.total else 100.0
        fields.update(
            stored=totals.counts.stored,
            failed=totals.counts.failed,
            rejected=totals.counts.rejected,
            unchanged=totals.counts.unchanged,
            chunks=totals.chunks,
            images_per_s=round(rate),
        )
        if eta and self.total is not None and rate > 0:
            fields["eta_s"] = round(max(self.total - next_position, 0) / rate)
        progress_log.info(message, extra=fields)
