"""save_batch and register_batch: one batch call, one transaction."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg

from loader import isolate, queries
from loader.batch_ids import batch_id_problem
from loader.connection import SCHEMA_VERSION, Connectable, connection, mark_checked
from loader.copy import STAGE_BOXES, STAGE_IMAGES, copy_rows
from loader.errors import (
    BatchConflictError,
    ConfigurationError,
    SchemaVersionError,
    translating,
)
from loader.models import BatchProgress, InputIssue, LoadReport, ProcessStatus
from loader.progress import get_progress
from loader.validate import Image, Input, Prepared, Reject, prepare, raw_bytes

log = logging.getLogger("loader")


@dataclass(frozen=True)
class Settings:
    """Per-transaction server settings the loader applies (SET LOCAL, never session-wide)."""

    # Memory for the merge's sorts and hashes; the 4MB default spills 10,000-image
    # calls to disk. Per sort node, for this transaction only.
    work_mem: str = "64MB"
    # Bound on any one statement of the call: a 100,000-image call merges in a
    # few seconds on 2 cores, so a minute means something is stuck.
    statement_timeout: str = "60s"
    # Bound on waiting for a lock (another call of the same batch holds it while
    # it loads). Longer than statement_timeout: the holder finishes or is cancelled first.
    lock_timeout: str = "90s"


DEFAULT_SETTINGS = Settings()

# Transactions a call may run: the fast one and, only when the database refused
# some input's data despite validation, one more isolating it (loader/isolate.py).
MAX_ATTEMPTS = 2

# Statements of one attempt, as the server counts them: BEGIN, lock_batch,
# create_staging (two CREATEs), two COPYs, merge, COMMIT. Only a call whose data
# the database refuses despite validation sends more (see loader/isolate.py).
STATEMENTS_PER_ATTEMPT = 8
# Of those, the ones before the first COPY: BEGIN, lock_batch, two CREATEs.
_STATEMENTS_BEFORE_COPY = 4
# Largest input position: the position columns are 4-byte integers.
_MAX_POSITION = 2**31 - 1


def _check_batch_id(batch_id: object) -> str:
    if not isinstance(batch_id, str):
        raise ConfigurationError(f"batch_id must be a string, got {type(batch_id).__name__}")
    problem = batch_id_problem(batch_id)
    if problem or len(batch_id) > 255:
        raise ConfigurationError(
            f"unusable batch_id {batch_id[:80]!r}: {problem or 'longer than 255 characters'}"
        )
    return batch_id


def _check_total(total_images: object) -> int | None:
    if total_images is None:
        return None
    if not isinstance(total_images, int) or isinstance(total_images, bool) or total_images < 0:
        raise ConfigurationError(f"total_images must be a non-negative integer, got {total_images!r}")
    if total_images > 2**31 - 1:
        raise ConfigurationError(f"total_images {total_images} is larger than the column allows")
    return total_images


def _total_conflict(
    batch_id: str, declared: int | None, stored: int | None, accounted: int | None
) -> str | None:
    """Why a call's total_images contradicts the batch's, or None.

    The stored total may have grown past the one declared, when the batch
    accounted for more inputs than that (the merge keeps completed + failed
    within total_images); the message says so, since the caller then sees its
    own total refused. A smaller total is still refused: nothing stored says
    which total was declared, and accepting any smaller one would let a wrong
    total through.
    """
    if declared is None or stored is None or declared == stored:
        return None
    grown = (
        f"; it grew past the declared total when the batch received more inputs than that, "
        f"so pass total_images={stored} or none"
        if declared < stored and accounted == stored
        else "; pass the same total (or none) for every call of a batch"
    )
    return (
        f"batch {batch_id!r} was registered with total_images={stored}, but this call says {declared}{grown}"
    )


def _conflict_reason(kind: str, owner: str) -> str:
    if kind == "image_path":
        return f"image_path already stored by another batch ({owner!r})"
    return f"public_path already used by another image (batch {owner!r})"


def _image_rows(images: list[Image], rejects: list[Reject]) -> Iterable[tuple[Any, ...]]:
    for im in images:
        yield (
            im.pos,
            im.chain_id,
            im.image_path,
            im.public_path,
            im.status,
            im.error,
            None,
            None,
            None,
        )
    for rj in rejects:
        yield (rj.pos, None, rj.image_path, None, None, None, rj.reason, rj.raw, rj.raw_sha256)


def _box_rows(images: list[Image]) -> Iterable[tuple[Any, ...]]:
    for im in images:
        yield from im.boxes


@dataclass
class _Attempt:
    rows: list[tuple[Any, ...]]
    rejects: list[Reject]
    images: list[Image]
    statements: int = STATEMENTS_PER_ATTEMPT
    #: The batch's total_images before this call (None when the call created the batch).
    total_before: int | None = None


def _run_attempt(
    conn: psycopg.Connection[Any],
    batch_id: str,
    total_images: int | None,
    prepared: Prepared,
    settings: Settings,
    isolating: bool = False,
    repair: bool = False,
) -> _Attempt:
    """One transaction. Raises isolate.DataRefused (rolled back) if the database refused
    some input's data."""
    images = prepared.images
    with conn.transaction():
        cur = conn.execute(
            queries.get("lock_batch"),
            {
                "batch_id": batch_id,
                "total_images": total_images if total_images is not None else prepared.received,
                "image_paths": json.dumps([im.image_path for im in images]),
                "public_paths": json.dumps([im.public_path for im in images]),
                "work_mem": settings.work_mem,
                "statement_timeout": settings.statement_timeout,
                "lock_timeout": settings.lock_timeout,
                "schema_version": SCHEMA_VERSION,
            },
            prepare=False,
        )
        stored_total, _created, accounted, ords, kinds, owners, deployed = cur.fetchone() or (None,) * 7
        if deployed != SCHEMA_VERSION:
            raise SchemaVersionError(SCHEMA_VERSION, deployed)
        conflict = _total_conflict(batch_id, total_images, stored_total, accounted)
        if conflict:
            raise BatchConflictError(conflict)

        # Inputs whose paths other batches own become rejects, raw input kept.
        rejects = list(prepared.rejects)
        if ords:
            lost: dict[int, str] = {}
            for ordinal, kind, owner in zip(ords, kinds or [], owners or [], strict=True):
                lost.setdefault(ordinal - 1, _conflict_reason(kind, owner))
            keep = []
            for index, im in enumerate(images):
                if index in lost:
                    rejects.append(Reject(im.pos, im.image_path, lost[index], raw_bytes(im.source)))
                else:
                    keep.append(im)
            images = keep

        conn.execute(queries.get("create_staging"), prepare=False)
        statements = STATEMENTS_PER_ATTEMPT
        merge_params = {"batch_id": batch_id, "by_position": repair}
        if isolating:
            net = isolate.store_isolating(conn, merge_params, images, rejects, _image_rows, _box_rows)
            rows, images, rejects = net.rows, net.images, net.rejects
            statements = _STATEMENTS_BEFORE_COPY + net.statements + 1
        else:
            sent = _STATEMENTS_BEFORE_COPY
            try:
                sent += 1
                copy_rows(conn, STAGE_IMAGES, _image_rows(images, rejects))
                sent += 1
                copy_rows(conn, STAGE_BOXES, _box_rows(images))
                sent += 1
                rows = conn.execute(queries.get("merge"), merge_params, prepare=False).fetchall()
            except Exception as exc:
                if not isolate.is_data_error(exc):
                    raise
                raise isolate.DataRefused(exc, sent + 1) from exc  # + ROLLBACK
        if any(row[1] == "lost" for row in rows):
            # Another batch stored some paths after lock_batch looked: reject
            # those inputs in this same transaction instead of running it again.
            late = isolate.reject_lost(conn, merge_params, rows, images, rejects, _image_rows)
            rows, images, rejects = late.rows, late.images, late.rejects
            statements += late.statements
    return _Attempt(rows, rejects, images, statements, None if _created else stored_total)


def save_batch(
    pool_or_conn: Connectable,
    batch_id: str,
    results: Iterable[Input],
    *,
    total_images: int | None = None,
    position_offset: int = 0,
    settings: Settings = DEFAULT_SETTINGS,
    repair: bool = False,
) -> LoadReport:
    """Store one batch (or one chunk of it) in a single transaction.

    ``results`` are OCRResult objects, JSON-decoded dicts, or raw JSON lines
    (str/bytes). Every input ends stored (success), stored as failed (with the
    reason), rejected into load_rejects (with its raw input), or unchanged (an
    earlier call already stored it). ``position_offset`` numbers the inputs, e.g.
    by their line in a file, for load_rejects.position.

    Every image this call newly stores resolves one open reject of the batch
    claiming its image_path. ``repair=True`` says the inputs are fixed rejects
    put back at their original positions (``loader rejects --export``): an
    image stored at position P then resolves the open reject at P first, which
    is how a line that was not JSON gets resolved. Leave it False when
    positions are not unique within the batch (every call numbered from 0).

    Raises DatabaseError (TransientDatabaseError when a retry may succeed) if the
    database fails; then nothing of the call was kept.
    """
    started = time.perf_counter()
    batch_id = _check_batch_id(batch_id)
    total_images = _check_total(total_images)
    if isinstance(results, str | bytes):
        raise ConfigurationError("results must be an iterable of inputs, not a single str/bytes")
    if not isinstance(position_offset, int) or isinstance(position_offset, bool) or position_offset < 0:
        raise ConfigurationError(f"position_offset must be a non-negative integer, got {position_offset!r}")
    prepared = prepare(batch_id, results, position_offset)
    if position_offset + prepared.received - 1 > _MAX_POSITION:
        # Binary COPY would wrap larger positions around silently, not fail.
        raise ConfigurationError(
            f"positions {position_offset}..{position_offset + prepared.received - 1} do not fit "
            f"load_rejects.position (at most {_MAX_POSITION}); number the inputs from a smaller offset"
        )
    return _store(pool_or_conn, batch_id, prepared, total_images, settings, started, repair)


def save_prepared(
    pool_or_conn: Connectable,
    batch_id: str,
    prepared: Prepared,
    *,
    total_images: int | None = None,
    settings: Settings = DEFAULT_SETTINGS,
    repair: bool = False,
) -> LoadReport:
    """save_batch for inputs already judged by ``loader.validate.prepare(batch_id, results, offset)``.

    Lets a caller judge the next chunk (pure Python) while this one is stored;
    ``prepared`` must come from prepare() with the same batch_id. Same outcomes,
    errors and transaction as save_batch; duration_s covers only the storing.
    """
    started = time.perf_counter()
    batch_id = _check_batch_id(batch_id)
    total_images = _check_total(total_images)
    # prepare() appends both in input order: their last items hold the highest positions.
    last = max([im.pos for im in prepared.images[-1:]] + [rj.pos for rj in prepared.rejects[-1:]], default=-1)
    if last > _MAX_POSITION:
        # Binary COPY would wrap larger positions around silently, not fail.
        raise ConfigurationError(
            f"position {last} does not fit load_rejects.position (at most {_MAX_POSITION}); "
            "number the inputs from a smaller offset"
        )
    return _store(pool_or_conn, batch_id, prepared, total_images, settings, started, repair)


def _store(
    pool_or_conn: Connectable,
    batch_id: str,
    prepared: Prepared,
    total_images: int | None,
    settings: Settings,
    started: float,
    repair: bool = False,
) -> LoadReport:
    statements = 0
    attempt: _Attempt | None = None
    # The schema version is checked by lock_batch, inside the call's own transaction.
    with connection(pool_or_conn, check_version=False) as conn, translating(f"saving batch {batch_id!r}"):
        for attempt_no in range(1, MAX_ATTEMPTS + 1):
            try:
                isolating = attempt_no > 1  # the first attempt's data was refused
                attempt = _run_attempt(conn, batch_id, total_images, prepared, settings, isolating, repair)
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
            except psycopg.errors.UndefinedTable as exc:
                raise SchemaVersionError(SCHEMA_VERSION, None) from exc
    # The isolating attempt never raises DataRefused: the loop ended in a break.
    assert attempt is not None

    report = _report(batch_id, prepared, attempt, statements, attempt_no, time.perf_counter() - started)
    log.info("saved batch", extra=report.log_fields())
    before = attempt.total_before
    if before is not None and report.progress.total_images > before:
        log.warning(
            "batch %s now accounts for more inputs than its total_images: total raised from %d to %d",
            batch_id,
            before,
            report.progress.total_images,
            extra={
                "batch_id": batch_id,
                "total_before": before,
                "total_images": report.progress.total_images,
            },
        )
    return report


def _report(
    batch_id: str,
    prepared: Prepared,
    attempt: _Attempt,
    statements: int,
    attempts: int,
    duration: float,
) -> LoadReport:
    first = attempt.rows[0]
    progress = BatchProgress(
        batch_id=batch_id,
        total_images=first[3],
        completed_images=first[4],
        failed_images=first[5],
        status=ProcessStatus(first[6]),
        created_at=first[7],
        updated_at=first[8],
    )
    outcomes = {row[0]: row[1] for row in attempt.rows if row[0] is not None}
    resolved = sum(1 for row in attempt.rows if row[0] is not None and row[2])
    by_pos_image = {im.pos: im for im in attempt.images}
    by_pos_reject = {rj.pos: rj for rj in attempt.rejects}

    stored = failed = rejected = unchanged = replaced = boxes = 0
    issues: list[InputIssue] = []
    for pos in sorted(outcomes):
        outcome = outcomes[pos]
        image = by_pos_image.get(pos)
        reject = by_pos_reject.get(pos)
        path = image.image_path if image else (reject.image_path if reject else None)
        if outcome == "rejected" and reject:
            rejected += 1
            issues.append(InputIssue(position=pos, image_path=path, outcome="rejected", reason=reject.reason))
        elif outcome == "unchanged":
            unchanged += 1
            why = (
                f"already recorded as rejected: {reject.reason}"
                if reject
                else "already stored in this batch by an earlier call (first write kept)"
            )
            issues.append(InputIssue(position=pos, image_path=path, outcome="unchanged", reason=why))
        elif image and image.status == "failed":
            failed += 1
            issues.append(
                InputIssue(position=pos, image_path=path, outcome="failed", reason=image.error or "failed")
            )
        else:
            # 'stored', or 'replaced': a success taking the place of a stored failure.
            stored += 1
            replaced += outcome == "replaced"
            boxes += len(image.boxes) if image else 0
    return LoadReport(
        batch_id=batch_id,
        received=prepared.received,
        stored=stored,
        failed=failed,
        rejected=rejected,
        unchanged=unchanged,
        replaced=replaced,
        resolved=resolved,
        boxes=boxes,
        statements=statements,
        attempts=attempts,
        duration_s=duration,
        progress=progress,
        issues=issues,
    )


def register_batch(pool_or_conn: Connectable, batch_id: str, total_images: int) -> BatchProgress:
    """Declare a batch that will arrive in chunks. Idempotent for the same total.

    Its status stays PENDING until its first images arrive. Raises
    BatchConflictError if the batch exists with another total.
    """
    batch_id = _check_batch_id(batch_id)
    total = _check_total(total_images)
    if total is None:
        raise ConfigurationError("register_batch needs total_images")
    with connection(pool_or_conn) as conn:
        with translating(f"registering batch {batch_id!r}"):
            for _ in range(2):
                with conn.transaction():
                    row = conn.execute(
                        queries.get("register_batch"), {"batch_id": batch_id, "total_images": total}
                    ).fetchone()
                if row is not None:
                    break
                # Created by a concurrent call after our snapshot: look again.
        if row is not None and row[0] != total:
            raise BatchConflictError(
                f"batch {batch_id!r} already exists with total_images={row[0]}, not {total}"
            )
        return get_progress(conn, batch_id)
