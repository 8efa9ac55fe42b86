"""save_batch and register_batch: one batch call, one transaction."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from loader import queries, steps
from loader.batch_ids import (
    check_batch_id,
    check_inside,
    check_last_position,
    check_offset,
    check_total,
    total_conflict,
)
from loader.connection import SCHEMA_VERSION, Connectable, check_schema_version, connection, mark_checked
from loader.copy import STAGE_BOXES, STAGE_IMAGES, StagedImage, copy_rows, staging_names
from loader.errors import (
    BatchConflictError,
    BatchNotFoundError,
    ConfigurationError,
    PositionConflictError,
    SchemaVersionError,
    quoted,
    translating,
)
from loader.fields import NONE
from loader.models import BatchProgress, Counts, LoadReport, Outcome
from loader.save import isolate
from loader.save.inputs import Input
from loader.save.report import log_saved, tally_report
from loader.save.rows import LockRow, MergeRow, reread_if_stale, run_merge
from loader.save.validate import Image, Judged, Reject, judge_call
from loader.settings import Limits, Settings, current_settings

log = logging.getLogger("loader")


# Transactions a call may run: the fast one and, only when the database refused
# some input's data despite validation, one more isolating it (loader/save/isolate.py).
MAX_ATTEMPTS = 2

# Statements of one attempt, as the server counts them: BEGIN, lock_batch,
# the staging tables' two CREATEs, two COPYs, merge, COMMIT. Only a call whose
# data the database refuses despite validation, or whose inputs must be
# rejected with their raw bytes after the merge (loader/save/isolate.py), sends more.
STATEMENTS_PER_ATTEMPT = 8
# Of those, the ones before the first COPY: BEGIN, lock_batch, two CREATEs.
_STATEMENTS_BEFORE_COPY = 4
# A redelivered call the batch's ledger recognises: BEGIN, lock_batch, COMMIT.
STATEMENTS_PER_REPLAY = 3

#: What a call's inputs are: new inputs (plain), fixes of rejects and stored
#: failures (repair), or new OCR results for stored images (replace).
Mode = Literal["plain", "repair", "replace"]

# The staging tables, from their one declaration (loader/copy.py); two
# statements in one round trip.
_CREATE_STAGING = sql.SQL("; ").join([STAGE_IMAGES.create(), STAGE_BOXES.create()])
_MERGE = sql.SQL(queries.get("merge")).format(**staging_names())


def _mode(repair: bool, replace: bool) -> Mode:
    if repair and replace:
        raise ConfigurationError("a call is a repair or a replace, not both")
    return "repair" if repair else "replace" if replace else "plain"


@dataclass(frozen=True)
class _Call:
    """One call of a batch: what kind it is, and its inputs judged (their verdicts read only if needed)."""

    mode: Mode
    judged: Judged
    #: The call may be the whole batch (save_batch from position 0): without a
    #: total_images it may create its batch, with as many images as it has inputs.
    whole: bool = False

    @property
    def batch_id(self) -> str:
        return self.judged.batch_id

    @property
    def key(self) -> bytes:
        """The ledger's key: the inputs' digest, and what kind of call they came in."""
        return hashlib.sha256(self.mode.encode() + b"\0" + self.judged.digest).digest()


def judge_checked(
    batch_id: str, results: Iterable[Input], position_offset: int, *, now: bool, limits: Limits | None = None
) -> Judged:
    """The inputs of save_batch and loader.save.pipeline.judge, checked the same way and judged:
    ``now``, or (save_batch) when their verdicts are first read."""
    batch_id = check_batch_id(batch_id)
    if isinstance(results, str | bytes):
        raise ConfigurationError("results must be an iterable of inputs, not a single str/bytes")
    offset = check_offset(position_offset)
    inputs = list(results)
    check_last_position(offset + len(inputs) - 1)
    return judge_call(batch_id, enumerate(inputs, offset), now=now, limits=limits)


def _image_rows(images: list[Image], rejects: list[Reject]) -> Iterator[tuple[Any, ...]]:
    for im in images:
        yield StagedImage(
            pos=im.pos,
            chain_id=im.chain_id,
            reject=None,
            dup_of=None,
            duplicate=None,
            raw=None,
            raw_sha256=None,
            **im.stored.fields,
        )
    for rj in rejects:
        yield StagedImage(
            pos=rj.pos,
            chain_id=None,
            reject=rj.reason,
            dup_of=rj.dup_of,
            duplicate=rj.duplicate,
            raw=rj.raw,
            raw_sha256=rj.raw_sha256,
            **{**NONE, "image_path": rj.image_path},
        )


def _box_rows(images: list[Image]) -> Iterable[tuple[Any, ...]]:
    for im in images:
        yield from im.boxes


@dataclass
class _Attempt:
    rows: list[MergeRow]
    rejects: list[Reject]
    images: list[Image]
    statements: int = STATEMENTS_PER_ATTEMPT
    #: The batch's total_images before this call (None when the call created the batch).
    total_before: int | None = None
    #: Set when the batch's ledger recognised the call: nothing was judged or written.
    replayed: LockRow | None = None


def _lock(
    conn: psycopg.Connection[Any], call: _Call, total_images: int | None, settings: Settings
) -> LockRow:
    judged = call.judged
    # NULL: lock_batch creates no batch (a chunk needs a registered one).
    total = total_images if total_images is not None or not call.whole else judged.received
    with conn.cursor(row_factory=class_row(LockRow)) as cur:
        head = cur.execute(
            queries.get("lock_batch"),
            {
                "batch_id": call.batch_id,
                "total_images": total,
                "digest": call.key,
                "mode": call.mode,
                "first_position": judged.first_position,
                "last_position": judged.last_position,
                "inputs": judged.received,
                "work_mem": settings.work_mem,
                "statement_timeout": settings.statement_timeout,
                "lock_timeout": settings.lock_timeout,
                "schema_version": SCHEMA_VERSION,
            },
            prepare=False,
        ).fetchone()
    assert head is not None, "lock_batch returns one row"
    if head.schema_version != SCHEMA_VERSION:
        raise SchemaVersionError(SCHEMA_VERSION, head.schema_version)
    if head.status is None:
        head = _created_meanwhile(conn, call.batch_id, head)
    if head.status is None:
        raise BatchNotFoundError(
            f"no batch {quoted(call.batch_id)}: a chunk of a batch (position_offset given, or judged inputs) "
            "never creates it; register the batch first (register_batch, `loader load --total`) or pass "
            "total_images, the batch's total"
        )
    conflict = total_conflict(call.batch_id, total_images, head.declared_images)
    if conflict:
        raise BatchConflictError(conflict)
    check_inside(call.batch_id, judged.last_position, head.declared_images)
    return head


def _created_meanwhile(conn: psycopg.Connection[Any], batch_id: str, head: LockRow) -> LockRow:
    """lock_batch's row, completed when a concurrent call created the batch while this
    one waited for its lock (one more statement, on this path only)."""
    row = conn.execute(queries.get("batch_declared"), {"batch_id": batch_id}, prepare=False).fetchone()
    if row is None:
        return head
    return head._replace(status="PENDING", declared_images=row[0], total_images=row[0])


def _position_conflict(batch_id: str, rows: list[MergeRow], judged: Judged) -> PositionConflictError:
    clashes = [row for row in rows if row.outcome == Outcome.CONFLICT]
    first = clashes[0]
    sent = {im.pos: im.image_path for im in judged.images} | {rj.pos: rj.image_path for rj in judged.rejects}
    held = repr(first.reason[:80]) if first.reason else "a rejected input"
    return PositionConflictError(
        f"batch {quoted(batch_id)}: {len(clashes)} input(s) of this call claim positions that already hold "
        f"other inputs (position {first.pos} holds {held}, this call sends {sent.get(first.pos or 0)!r}); "
        "nothing of the call was kept. A position is an input's identity in its batch: number each call's "
        "inputs by their place in the batch (position_offset = the index of the call's first input), "
        "use repair=True to fix rejects or failures, replace=True to re-run OCR, or a new batch",
        [row.pos for row in clashes if row.pos is not None],
    )


def _run_attempt(
    conn: psycopg.Connection[Any],
    call: _Call,
    total_images: int | None,
    settings: Settings,
    isolating: bool = False,
) -> _Attempt:
    """One transaction. Raises isolate.DataRefused (rolled back) if the database refused
    some input's data, PositionConflictError (rolled back) if inputs claim taken positions."""
    with conn.transaction():
        head = _lock(conn, call, total_images, settings)
        if head.replayed:
            return _Attempt([], [], [], STATEMENTS_PER_REPLAY, head.total_images, head)
        judged = call.judged
        images, rejects = judged.images, list(judged.rejects)
        conn.execute(_CREATE_STAGING, prepare=False)
        statements = STATEMENTS_PER_ATTEMPT
        merge_params = {
            "batch_id": call.batch_id,
            "mode": call.mode,
            "digest": call.key,
            "first_position": judged.first_position,
            "inputs": judged.received,
        }
        if isolating:
            net = isolate.store_isolating(conn, merge_params, images, rejects, _image_rows, _box_rows)
            rows, images, rejects = net.rows, net.images, net.rejects
            statements = _STATEMENTS_BEFORE_COPY + net.statements + 1
        else:
            rows, statements = _fast_path(conn, merge_params, images, rejects)
        if any(row.outcome == Outcome.CONFLICT for row in rows):
            raise _position_conflict(call.batch_id, rows, judged)
        if any(row.outcome == Outcome.LOST for row in rows):
            # Inputs to record as rejects with their raw bytes (duplicates of
            # images stored by earlier calls, paths other batches own or
            # claimed meanwhile): in this same transaction, not a rerun.
            late = isolate.reject_lost(conn, merge_params, rows, images, rejects, _image_rows)
            rows, images, rejects = late.rows, late.images, late.rejects
            statements += late.statements
        rows, statements = reread_if_stale(conn, call.batch_id, rows, statements)
    return _Attempt(rows, rejects, images, statements, None if head.created else head.total_images)


def _fast_path(
    conn: psycopg.Connection[Any], params: dict[str, Any], images: list[Image], rejects: list[Reject]
) -> tuple[list[MergeRow], int]:
    sent = _STATEMENTS_BEFORE_COPY
    try:
        sent += 1
        copy_rows(conn, STAGE_IMAGES, _image_rows(images, rejects))
        sent += 1
        copy_rows(conn, STAGE_BOXES, _box_rows(images))
        sent += 1
        return run_merge(conn, _MERGE, params), STATEMENTS_PER_ATTEMPT
    except Exception as exc:
        if not isolate.is_data_error(exc):
            raise
        raise isolate.DataRefused(exc, sent + 1) from exc  # + ROLLBACK


def save_batch(
    pool_or_conn: Connectable,
    batch_id: str,
    results: Iterable[Input],
    *,
    total_images: int | None = None,
    position_offset: int = 0,
    settings: Settings | None = None,
    limits: Limits | None = None,
    repair: bool = False,
    replace: bool = False,
) -> LoadReport:
    """Store one batch (or one chunk of it) in a single transaction.

    ``results`` are OCRResult objects, JSON-decoded dicts, or raw JSON lines
    (str/bytes). An input's identity is its position in the batch:
    ``position_offset`` + its index in ``results`` (a chunk of a batch passes the
    index of its first input, and every call passes the batch's ``total_images``,
    or none). Positions lie inside the batch's declared total (0 .. total - 1):
    a call with an input past it is refused whole (PositionBeyondTotalError). A call
    creates its batch when it states ``total_images``, or when it may be the whole
    batch (it starts at position 0: its inputs are the batch); a later chunk of an
    unknown batch raises BatchNotFoundError. Every input ends stored (success), stored as failed (with the
    reason), rejected into load_rejects (with its raw input), or unchanged (its
    position already received it: a redelivery changes nothing).

    ``settings``: the transaction's server settings; without them ``Settings()``,
    read from the environment (LOADER_WORK_MEM, LOADER_STATEMENT_TIMEOUT,
    LOADER_LOCK_TIMEOUT) at the call.
    ``limits``: what one result may hold (more boxes than ``max_boxes``, ...: stored
    as failed with the reason); without them ``Limits()``, read from the environment
    (LOADER_MAX_BOXES, LOADER_MAX_TEXT_CHARS, LOADER_MAX_BBOX_POINTS) at the call.
    ``repair=True``: each input fixes the open reject at its position, or the
    stored failure of its image; one that fixes nothing is refused, never added.
    ``replace=True`` (re-OCR): each input replaces the stored result of its
    image in this batch (status, error, boxes, public_path, model_version; the
    row keeps its id); other inputs are stored as in a plain call.

    Raises PositionConflictError (nothing kept) when inputs claim positions that
    hold other inputs, DatabaseError (TransientDatabaseError when a retry may
    succeed) if the database fails; then nothing of the call was kept.
    """
    started = time.perf_counter()
    batch_id = check_batch_id(batch_id)
    total_images = check_total(total_images)
    mode = _mode(repair, replace)
    # Judged only if the batch's ledger does not recognise the call (a replay needs no verdicts).
    judged = judge_checked(batch_id, results, position_offset, now=False, limits=limits)
    # From position 0, the call may be the whole batch: it may create it.
    call = _Call(mode, judged, whole=position_offset == 0)
    return _store(pool_or_conn, call, total_images, settings or current_settings(), started)


def save_judged(
    pool_or_conn: Connectable,
    batch_id: str,
    judged: Judged,
    *,
    total_images: int | None = None,
    settings: Settings | None = None,
    repair: bool = False,
    replace: bool = False,
) -> LoadReport:
    """Store what ``judge(batch_id, ...)`` returned, in one transaction; duration_s covers the storing.

    Lets a caller judge the next chunk (pure Python) while this one is stored.
    ``settings``, ``repair``, ``replace``: as save_batch's (no settings: ``Settings()``,
    read from the environment at the call). A judged call is a chunk of its batch:
    without ``total_images`` the batch must exist (BatchNotFoundError otherwise), so
    a load never re-creates a batch deleted while it runs; its positions must lie
    inside the batch's declared total (PositionBeyondTotalError). Same outcomes,
    errors and transaction as save_batch otherwise.
    """
    started = time.perf_counter()
    batch_id = check_batch_id(batch_id)
    total_images = check_total(total_images)
    if not isinstance(judged, Judged) or judged.batch_id != batch_id:
        raise ConfigurationError(
            "save_judged takes what loader.save.pipeline.judge() returned for the same batch "
            f"({quoted(batch_id)})"
        )
    check_last_position(-1 if judged.last_position is None else judged.last_position)
    call = _Call(_mode(repair, replace), judged)
    return _store(pool_or_conn, call, total_images, settings or current_settings(), started)


def _store(
    pool_or_conn: Connectable,
    call: _Call,
    total_images: int | None,
    settings: Settings,
    started: float,
) -> LoadReport:
    statements = 0
    attempt: _Attempt | None = None
    batch_id = call.batch_id
    # The schema version is checked by lock_batch, inside the call's own transaction.
    with (
        connection(pool_or_conn, check_version=False) as conn,
        translating(f"saving batch {quoted(batch_id)}"),
    ):
        for attempt_no in range(1, MAX_ATTEMPTS + 1):
            try:
                isolating = attempt_no > 1  # the first attempt's data was refused
                attempt = _run_attempt(conn, call, total_images, settings, isolating)
                statements += attempt.statements
                mark_checked(conn)
                break
            except isolate.DataRefused as refused:
                statements += refused.statements
                log.warning(
                    "batch %s: the database refused data that validation let through (%s); "
                    "storing the call again, isolating the refused inputs",
                    batch_id,
                    refused,
                )
            except (
                psycopg.errors.UndefinedTable,
                psycopg.errors.UndefinedColumn,
                psycopg.errors.UndefinedFunction,
            ) as exc:
                # An older (or no) schema: the statement failed before its version check.
                check_schema_version(conn)
                raise SchemaVersionError(SCHEMA_VERSION, None) from exc
    # The isolating attempt never raises DataRefused: the loop ended in a break.
    assert attempt is not None
    duration = time.perf_counter() - started
    if attempt.replayed is not None:
        report = _replay_report(call, attempt.replayed, duration)
    else:
        report = tally_report(
            batch_id,
            call.judged.received,
            attempt.rows,
            attempt.images,
            attempt.rejects,
            statements=statements,
            attempts=attempt_no,
            duration=duration,
        )
    log_saved(log, report)
    _warn_if_grown(batch_id, attempt.total_before, report.progress)
    return report


def _warn_if_grown(batch_id: str, before: int | None, progress: BatchProgress) -> None:
    if before is not None and progress.total_images > before:
        log.warning(
            "batch %s now accounts for more inputs than its total_images: total raised from %d to %d",
            batch_id,
            before,
            progress.total_images,
            extra={"batch_id": batch_id, "total_before": before, "total_images": progress.total_images},
        )


def _replay_report(call: _Call, head: LockRow, duration: float) -> LoadReport:
    received = call.judged.received
    return LoadReport(
        batch_id=call.batch_id,
        **Counts.of({"received": received, Outcome.UNCHANGED: received}).counts(),
        statements=STATEMENTS_PER_REPLAY,
        duration_s=duration,
        progress=head.progress(call.batch_id),
        replayed=True,
    )


def register_batch(pool_or_conn: Connectable, batch_id: str, total_images: int) -> BatchProgress:
    """Declare a batch that will arrive in chunks. Idempotent for the same total.

    Its status stays PENDING until its first images arrive. Raises
    BatchConflictError if the batch exists with another total. The call is
    loader.steps.register_batch, which loader.aio.register_batch runs too.
    """
    step = steps.register_batch(batch_id, total_images)  # the arguments are checked here
    with connection(pool_or_conn) as conn:
        return steps.run(conn, step)
