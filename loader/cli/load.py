"""`loader load`: stream JSONL files into a batch, chunk by chunk (the engine is loader.save.chunks).

This module only adapts the engine to a terminal: registering the batch,
retrying a chunk after a transient failure, Ctrl-C, the progress display, the
summary and the command that resumes a stopped load.
"""

from __future__ import annotations

import logging
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
import psycopg

from loader.cli import output as out
from loader.cli.base import EXIT_OK, Session, cli, common_options, one_line
from loader.cli.display import Display
from loader.cli.load_help import LOAD_EPILOG
from loader.cli.resume import DEFAULT_CHUNK_SIZE, StopRequest, resume_command, signal_status
from loader.errors import (
    BatchNotFoundError,
    CliError,
    DatabaseError,
    InputFileError,
    Interrupted,
    LoaderError,
    quoted,
)
from loader.models import BatchProgress, LoadReport, Outcome
from loader.progress.read import get_progress
from loader.save.call import register_batch
from loader.save.chunks import Chunk, Totals, load_chunks
from loader.save.jsonl import Sources, countable, input_span, line_counts
from loader.save.pipeline import Judged, save_judged
from loader.save.retry import Backoff
from loader.settings import Limits, Settings

# Retries of a chunk after a transient database failure (lost connection,
# deadlock, server restart); each retry reconnects after the loader's one backoff
# (loader/save/retry.py): about 1 s, 2 s, 4 s, ..., jittered, at most 30 s.
DEFAULT_RETRIES = 3
CHUNK_BACKOFF = Backoff(first_s=1.0, max_s=30.0)
# Issues the text summary of a load prints.
ISSUES_SHOWN = 10

log = logging.getLogger("loader.cli")


@dataclass
class LoadOutcome:
    totals: Totals
    next_position: int
    total_lines: int | None
    duration_s: float
    #: The signal that stopped the load early (SIGINT, SIGTERM), if any.
    signum: int | None = None

    @property
    def interrupted(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return signal_status(self.signum) if self.signum is not None else EXIT_OK

    def report(self) -> LoadReport:
        return self.totals.report(self.duration_s)


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class InputSize:
    """How many lines the input has, how many of them are inputs (not blank), and how
    many positions it spans (up to its last input); None for a stream."""

    lines: int | None = None
    inputs: int | None = None
    span: int | None = None

    @classmethod
    def of(cls, files: tuple[str, ...]) -> InputSize:
        if not all(countable(name) for name in files):
            return cls()
        counts = [line_counts(name) for name in files]
        lines = sum(n for n, _ in counts)
        inputs = lines - sum(blank for _, blank in counts)
        # Blank lines keep their numbers: only when there are any is a second
        # read needed to find the last input's position.
        span = lines if inputs == lines else input_span(files)
        return cls(lines, inputs, span)


def _existing(conn: psycopg.Connection[Any], batch_id: str) -> BatchProgress | None:
    try:
        return get_progress(conn, batch_id)
    except BatchNotFoundError:
        return None


def open_batch(conn: psycopg.Connection[Any], request: LoadRequest, size: InputSize) -> BatchProgress | None:
    """The batch, registered if new (with --total, or as many images as the input spans
    positions: its lines up to the last non-blank one); None when the input is empty.

    Only here is a batch created: the chunks are stored without a total, so a
    batch deleted while loading is never re-created by a later chunk.
    """
    batch_id, total = request.batch_id, request.total
    existing = _existing(conn, batch_id)
    if (request.repair or request.replace) and existing is None:
        flag = "--repair" if request.repair else "--replace"
        raise CliError(f"{flag} changes an existing batch, and there is no batch {quoted(batch_id)}")
    if existing is not None:
        if total is not None:
            # Refuses a --total that contradicts the declared one (BatchConflictError).
            register_batch(conn, batch_id, total)
        return existing
    if request.offset and total is None:
        raise click.UsageError(
            f"batch {quoted(batch_id)} does not exist yet and this file starts at --offset {request.offset}: "
            "pass --total N, the number of images in the whole batch"
        )
    declared = total if total is not None else size.span
    if declared is None:
        raise click.UsageError(
            "the input is a stream (stdin or a pipe) whose lines cannot be counted in advance, and batch "
            f"{batch_id!r} does not exist yet: pass --total N (the number of images in the batch)"
        )
    if declared == 0:
        return None
    if size.span is not None and size.inputs is not None and size.span > size.inputs:
        log.warning(
            "blank lines inside the input keep their positions but hold no input: the batch counts "
            "them as missing until inputs arrive there",
            extra={"batch_id": batch_id, "missing": size.span - size.inputs, "total_images": declared},
        )
    return register_batch(conn, batch_id, declared)


def _check_inside(request: LoadRequest, size: InputSize, progress: BatchProgress) -> None:
    """Refuse, before any chunk, an input whose lines reach past the batch's total."""
    if size.span is None or request.offset + size.span <= progress.total_images:
        return
    raise CliError(
        f"the input spans positions {request.offset} to {request.offset + size.span - 1} (its lines from "
        f"--offset {request.offset}), but batch {quoted(request.batch_id)} holds {progress.total_images} "
        f"images (positions 0 to {progress.total_images - 1}); nothing was loaded. Load the batch's own "
        "lines, or a new batch"
    )


class RetryingStore:
    """Stores a judged chunk; after a transient failure reconnects and tries again, a few times."""

    def __init__(self, session: Session, request: LoadRequest) -> None:
        self.session = session
        self.batch_id = request.batch_id
        self.retries = request.retries
        self.request = request
        # Read once, before anything is written: a bad LOADER_* value stops the load at once.
        self.settings = Settings()
        self.limits = Limits()
        self.conn = session.connect()

    def _save(self, judged: Judged) -> LoadReport:
        request = self.request
        # No total: open_batch registered (or checked) the batch, and a chunk
        # never creates one, so a batch deleted meanwhile stops the load.
        return save_judged(
            self.conn,
            self.batch_id,
            judged,
            settings=self.settings,
            repair=request.repair,
            replace=request.replace,
        )

    def __call__(self, judged: Judged) -> LoadReport:
        for attempt in range(self.retries):
            try:
                return self._save(judged)
            except DatabaseError as exc:
                if not exc.transient:
                    raise
                self._wait_and_reconnect(attempt, exc)
        return self._save(judged)

    def _wait_and_reconnect(self, attempt: int, exc: DatabaseError) -> None:
        wait = CHUNK_BACKOFF.delay(attempt)
        log.warning(
            "chunk failed, retrying",
            extra={"batch_id": self.batch_id, "retry_in_s": wait, "error": str(exc)},
        )
        time.sleep(wait)
        self.conn.close()
        self.conn = self.session.connect()

    def close(self) -> None:
        self.conn.close()


@dataclass
class Committed:
    """Where the load stands: what the error messages and the resume hint need."""

    next_position: int
    chunks: int = 0

    def on_chunk(self, display: Display) -> Callable[[Chunk, Totals], None]:
        def done(chunk: Chunk, totals: Totals) -> None:
            self.next_position, self.chunks = chunk.next_position, self.chunks + 1
            display.update(totals, chunk.next_position)

        return done


@dataclass(frozen=True)
class LoadRequest:
    """What `loader load` was asked to do."""

    files: tuple[str, ...]
    batch_id: str
    chunk_size: int
    total: int | None = None
    skip: int = 0
    mode: str = "none"
    retries: int = DEFAULT_RETRIES
    #: The input is a fixed sparse export of the batch's rejects (`loader rejects --export`).
    repair: bool = False
    #: The input re-runs OCR: each line replaces its image's stored result.
    replace: bool = False
    #: The position in the batch of the input's first line.
    offset: int = 0

    def resume(self, skip: int, session: Session) -> str:
        extra = ["--offset", str(self.offset)] if self.offset else []
        extra += ["--repair"] if self.repair else ["--replace"] if self.replace else []
        if self.total is not None:
            extra += ["--total", str(self.total)]
        return resume_command(self.files, self.batch_id, self.chunk_size, skip, session, tuple(extra))


def run_load(session: Session, request: LoadRequest) -> LoadOutcome:
    """Stream the files into the batch, chunk by chunk; stops early on Ctrl-C / SIGTERM."""
    started = time.monotonic()
    sources = Sources(request.files)  # refuses unreadable or binary input before a batch exists
    store = RetryingStore(session, request)
    committed = Committed(request.skip)
    stop = StopRequest()
    try:
        return _load(store, sources, request, committed, stop, started)
    except KeyboardInterrupt as exc:
        raise Interrupted(
            f"interrupted: the chunk in flight was rolled back; lines before {committed.next_position + 1} "
            f"are committed, resume with: {request.resume(committed.next_position, session)}",
            signal_status(stop.signum or signal.SIGINT),
        ) from exc
    except BatchNotFoundError as exc:
        # open_batch found or created it: another session deleted it since.
        raise CliError(
            f"batch {quoted(request.batch_id)} was deleted while loading; "
            f"{out.count(committed.next_position - request.skip, 'line')} committed before went with it and "
            "nothing more was stored (load the input again to create the batch anew)"
        ) from exc
    except (LoaderError, psycopg.Error) as exc:
        raise _failed(exc, request, committed, session) from exc
    finally:
        store.close()


def _load(
    store: RetryingStore,
    sources: Sources,
    request: LoadRequest,
    committed: Committed,
    stop: StopRequest,
    started: float,
) -> LoadOutcome:
    batch_id = request.batch_id
    size = InputSize.of(request.files)
    total_lines = size.lines
    progress = open_batch(store.conn, request, size)
    if progress is None:
        return LoadOutcome(Totals(batch_id), request.skip, total_lines, time.monotonic() - started)
    _check_inside(request, size, progress)
    with stop, Display(request.mode, batch_id, total_lines, request.skip) as display:
        result = load_chunks(
            batch_id,
            sources,
            store,
            chunk_size=request.chunk_size,
            skip=request.skip,
            offset=request.offset,
            on_chunk=committed.on_chunk(display),
            stop=lambda: stop.requested,
            limits=store.limits,
        )
        result.totals.progress = result.totals.progress or progress
        display.finish(result.totals, result.next_position, stopped=stop.requested)
    return LoadOutcome(
        result.totals, result.next_position, total_lines, time.monotonic() - started, stop.signum
    )


def _failed(exc: BaseException, request: LoadRequest, committed: Committed, session: Session) -> CliError:
    where = ""
    if committed.chunks:
        where = (
            f"; lines before {committed.next_position + 1} are committed, resume with: "
            f"{request.resume(committed.next_position, session)}"
        )
    text = str(exc) if isinstance(exc, InputFileError) else one_line(exc)
    return CliError(f"{text}{where}")


# --------------------------------------------------------------------------- printing


def print_load(outcome: LoadOutcome, batch_id: str, as_json: bool) -> None:
    totals = outcome.totals
    if totals.progress is None:
        out.echo(f"nothing to load: the input is empty (batch {batch_id!r} was not created)", err=True)
        if as_json:
            out.echo_json({"batch_id": batch_id, "received": 0, "lines": 0})
        return
    if as_json:
        _print_json(outcome)
    else:
        _print_text(outcome, batch_id)


def _print_json(outcome: LoadOutcome) -> None:
    report = outcome.report()
    data = report.model_dump(mode="json")
    data["progress"]["percentage"] = round(report.progress.percentage, 2)
    data.update(
        chunks=outcome.totals.chunks,
        next_position=outcome.next_position,
        interrupted=outcome.interrupted,
        issues_omitted=outcome.totals.issues_omitted,
    )
    out.echo_json(data)


def _print_text(outcome: LoadOutcome, batch_id: str) -> None:
    totals, seconds = outcome.totals, outcome.duration_s
    counts = totals.counts
    report = outcome.report()
    rate = counts.received / seconds if seconds else 0.0
    out.echo(
        f"loaded {out.count(counts.received, 'line')} into batch {batch_id} in {out.duration(seconds)} "
        f"({rate:,.0f} images/s): {out.count(totals.chunks, 'chunk')}, "
        f"{out.count(totals.statements, 'statement')}"
    )
    out.echo(
        f"  stored {out.n(counts.stored)} · failed {out.n(counts.failed)} · "
        f"rejected {out.n(counts.rejected)} · unchanged {out.n(counts.unchanged)} · "
        f"text boxes {out.n(counts.boxes)}"
    )
    if counts.replaced:
        out.echo(
            f"  replaced {out.n(counts.replaced)} stored result(s) in place (re-OCR, or a repaired failure)"
        )
    if counts.refused:
        out.echo(f"  refused {out.n(counts.refused)} line(s) that fix nothing (not stored, not counted)")
    if counts.resolved:
        out.echo(f"  resolved {out.count(counts.resolved, 'reject')} of the batch (kept, marked resolved)")
    out.echo(f"  {out.batch_line(report.progress)}")
    _print_issues(totals, batch_id)


def _print_issues(totals: Totals, batch_id: str) -> None:
    shown = [i for i in totals.issues if i.outcome != Outcome.UNCHANGED][:ISSUES_SHOWN]
    if not shown:
        return
    counts = totals.counts
    out.echo(
        f"first {len(shown)} of {out.n(counts.failed + counts.rejected + counts.refused)} "
        "failed, rejected or refused lines:"
    )
    out.table([(f"line {i.position + 1}", i.outcome.ljust(8), i.reason) for i in shown], indent="  ")
    out.echo(
        f"  (all reasons: loader status {shlex.quote(batch_id)}; "
        f"raw rejects: loader rejects {shlex.quote(batch_id)})"
    )


def print_stopped(outcome: LoadOutcome, request: LoadRequest, session: Session) -> None:
    hint = request.resume(outcome.next_position, session)
    out.echo(
        f"stopped: the first {out.count(outcome.next_position, 'line')} are committed "
        f"({out.count(outcome.totals.chunks, 'chunk')} this run). Resume with:\n  {hint}\n"
        "(or re-run the same command: lines already stored are recognised and left unchanged)",
        err=True,
    )


# --------------------------------------------------------------------------- the command


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
@click.option(
    "--replace",
    is_flag=True,
    help="Re-OCR: each line replaces the stored result of its image in the batch.",
)
@click.option(
    "--offset",
    metavar="N",
    type=click.IntRange(min=0, max=2**31 - 1),
    default=0,
    help="Position in the batch of the input's first line (a file holding a later part of a batch).",
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
    replace: bool,
    offset: int,
    as_json: bool,
    session: Session,
) -> None:
    """Load JSONL files of OCR results into a batch, in chunks.

    FILE may be plain or gzip JSONL, or - for stdin.
    """
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "plain"
    if repair and replace:
        raise click.UsageError("--repair and --replace do not go together: a call is one or the other")
    request = LoadRequest(files, batch_id, chunk_size, total, skip, mode, retries, repair, replace, offset)
    outcome = run_load(session, request)
    print_load(outcome, batch_id, as_json)
    if outcome.interrupted:
        print_stopped(outcome, request, session)
        raise click.exceptions.Exit(outcome.exit_code)
