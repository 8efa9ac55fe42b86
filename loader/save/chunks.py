"""Loading one batch in chunks: the engine under `loader load` and Celery batch files.

Lines come from the one JSONL reader (loader.save.jsonl.Sources) and are cut into
chunks of at most ``chunk_size`` lines (or MAX_CHUNK_BYTES bytes). Each chunk is
judged (pure Python, judge_lines: loader.save.validate) in a background thread while the chunk
before it is stored (one transaction, mostly waiting on the server), so the
two overlap. Lines are read only in that thread, in order, and at most two
chunks are held: the one being stored and the one judged ahead. A slow
producer (a pipe) therefore never holds a commit back.

Positions are line numbers across all sources, so the same input loaded twice
(or resumed with ``skip``) stores nothing twice. A blank line is no input but
keeps its number (a sparse export of rejects puts fixed lines back in place
that way); a chunk of blank lines only costs no call. The batch must exist before
the first chunk; `loader load` stores every chunk without a total, so a batch deleted
mid-load stops it rather than being re-created. The chunk reports are summed
into one LoadReport (``replaced`` included, issues capped at MAX_ISSUES_KEPT).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TypeVar

from loader.models import BatchProgress, Counts, InputIssue, LoadReport
from loader.save.jsonl import Sources, is_blank
from loader.save.validate import Judged, judge_call
from loader.settings import Limits, current_limits

# A chunk is also cut when its lines reach this many bytes, so a file of huge
# lines cannot grow one chunk beyond memory: 64 MiB of raw JSON.
MAX_CHUNK_BYTES = 64 * 1024 * 1024
# Issues (failed / rejected / unchanged inputs) one summed report keeps: the
# counts stay exact and every failure is in the database (ocr_executions.error,
# load_rejects), but a million-line replay must not keep a million issues in
# memory, nor a Celery result become a 10 MB message.
MAX_ISSUES_KEPT = 1_000

log = logging.getLogger("loader.save.chunks")

#: Stores one judged chunk: save_judged, with whatever retries the caller wants.
Store = Callable[[Judged], LoadReport]

T = TypeVar("T")


@dataclass
class Totals:
    """The sum of the chunk reports of one load."""

    batch_id: str
    counts: Counts = field(default_factory=lambda: Counts.of({}))
    statements: int = 0
    attempts: int = 0
    chunks: int = 0
    issues: list[InputIssue] = field(default_factory=list)
    issues_omitted: int = 0
    progress: BatchProgress | None = None

    def add(self, report: LoadReport) -> None:
        self.counts += report
        self.statements += report.statements
        self.attempts += report.attempts
        self.chunks += 1
        self.progress = report.progress
        room = max(MAX_ISSUES_KEPT - len(self.issues), 0)
        self.issues.extend(report.issues[:room])
        self.issues_omitted += max(len(report.issues) - room, 0)

    def report(self, duration_s: float) -> LoadReport:
        """One LoadReport for the whole load (needs at least one chunk stored, or a progress set)."""
        assert self.progress is not None, "no chunk was stored"
        return LoadReport(
            batch_id=self.batch_id,
            **self.counts.counts(),
            statements=self.statements,
            attempts=max(self.attempts, 1),
            duration_s=duration_s,
            progress=self.progress,
            issues=self.issues,
        )


@dataclass(frozen=True)
class Chunk:
    """One stored chunk: where it started, how many lines, what the call reported."""

    first: int
    lines: int
    report: LoadReport

    @property
    def next_position(self) -> int:
        return self.first + self.lines


@dataclass
class Outcome:
    """How a load ended: the totals, where to resume, and whether it was stopped early."""

    totals: Totals
    #: The position of the first line not stored: ``skip`` for a resumed load.
    next_position: int
    stopped: bool
    duration_s: float


@dataclass(frozen=True)
class _Ahead:
    """A chunk judged ahead: where it started, how many lines."""

    first: int
    lines: int
    judged: Judged


def cut(lines: Iterable[tuple[int, bytes]], skip: int, chunk_size: int) -> Iterator[tuple[int, list[bytes]]]:
    """(position of the first line, lines) of at most chunk_size lines / MAX_CHUNK_BYTES bytes."""
    chunk: list[bytes] = []
    size = 0
    first = skip
    for position, line in lines:
        if position < skip:
            continue
        if not chunk:
            first = position
        chunk.append(line)
        size += len(line)
        if len(chunk) >= chunk_size or size >= MAX_CHUNK_BYTES:
            if not all(map(is_blank, chunk)):
                yield first, chunk
            chunk, size = [], 0
    if chunk and not all(map(is_blank, chunk)):
        yield first, chunk


def judge_lines(
    batch_id: str, lines: list[bytes], first: int, cancel: threading.Event, limits: Limits | None = None
) -> Judged:
    """Judge consecutive lines, the first at position ``first``; blank lines are no
    input but keep their number. Stops early once ``cancel`` is set: the load is
    stopping and the result will not be stored, so it should not hold up the exit."""

    def inputs() -> Iterator[tuple[int, bytes]]:
        for position, line in enumerate(lines, first):
            if cancel.is_set():
                return
            if not is_blank(line):
                yield position, line

    return judge_call(batch_id, inputs(), limits=limits)


def _in_thread(work: Callable[[], T]) -> Future[T]:
    """Run ``work`` in a daemon thread: one blocked on a slow pipe must not hold up the exit."""
    future: Future[T] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(work())
        except BaseException as exc:  # handed to whoever waits on the result
            future.set_exception(exc)

    threading.Thread(target=run, name="loader-judge", daemon=True).start()
    return future


def load_chunks(
    batch_id: str,
    sources: Sources,
    store: Store,
    *,
    chunk_size: int,
    skip: int = 0,
    offset: int = 0,
    on_chunk: Callable[[Chunk, Totals], None] | None = None,
    stop: Callable[[], bool] = lambda: False,
    limits: Limits | None = None,
) -> Outcome:
    """Judge and store ``sources`` chunk by chunk, from line ``skip`` on.

    Line N of the sources is the input at position ``offset`` + N of the batch
    (a file holding a later part of a batch passes the position of its first line).

    ``store`` saves one judged chunk (e.g. ``save_judged`` with retries);
    ``on_chunk`` is called after each commit; ``stop`` is asked after each
    commit and ends the load there when it says so. ``limits``: what one result may
    hold (None: ``Limits()``, read once for the whole load). An error of the reader
    or of ``store`` propagates once the chunks before it are committed.
    """
    started = time.monotonic()
    totals = Totals(batch_id)
    chunks = cut(sources.lines(), skip, chunk_size)
    cancel = threading.Event()
    limits = limits or current_limits()

    def judge_next() -> _Ahead | None:
        item = next(chunks, None)
        if item is None:
            return None
        first, lines = item
        return _Ahead(first, len(lines), judge_lines(batch_id, lines, offset + first, cancel, limits))

    next_position, stopped = skip, False
    ahead = _in_thread(judge_next)
    try:
        while (read := ahead.result()) is not None:
            log.info("chunk read", extra={"batch_id": batch_id, "lines": _span(read.first, read.lines)})
            ahead = _in_thread(judge_next)  # the next chunk is judged while this one is stored
            report = store(read.judged)
            totals.add(report)
            chunk = Chunk(read.first, read.lines, report)
            next_position = chunk.next_position
            log.info(
                "chunk committed", extra={**report.log_fields(), "lines": _span(chunk.first, chunk.lines)}
            )
            if on_chunk is not None:
                on_chunk(chunk, totals)
            if stop():
                stopped = True  # the chunk judged ahead is dropped: it was not stored
                break
        else:
            next_position = max(next_position, sources.position)
    finally:
        cancel.set()
    return Outcome(totals, next_position, stopped, time.monotonic() - started)


def _span(first: int, lines: int) -> str:
    """1-based line numbers, as an editor shows them."""
    return f"{first + 1}-{first + lines}"
