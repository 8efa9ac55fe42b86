"""The safety net under validation: store what the database accepts, isolate what it refuses.

validate.py judges every input so that COPY and the merge never fail on data.
Should one still fail (a rule validation misses, an OCRResult built without
validation, a constraint a DBA added), one bad image would cost the whole call.
Instead the call is run again, in one transaction, in groups under savepoints:
a group the database refuses is rolled back to its savepoint and split in
halves, until each refused input stands alone (as pgloader does). That input is
then stored as failed without its boxes or, when even that is refused, rejected
with its raw input; either way with the server's error as the reason. All the
other inputs are stored as usual, in the same transaction.

Cost, on this path only: each group is SAVEPOINT, one or two COPYs, the merge,
TRUNCATE of the staging tables and RELEASE, and k refused inputs among n take
about 2·k·log2(n) groups.

Also here: ``reject_lost``, for inputs whose paths another batch stored while
the call was loading. ``LoadReport.statements`` exceeds 8 only in these two cases.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

import psycopg
from psycopg import sql

from loader import queries
from loader.copy import STAGE_BOXES, STAGE_IMAGES, copy_rows, staging_names
from loader.errors import DatabaseError, translate
from loader.errors import DataRefused as DataRefused  # noqa: PLC0414  (re-exported: save.py uses isolate.DataRefused)
from loader.fields import path_problem
from loader.models import Outcome
from loader.save.inputs import raw_bytes
from loader.save.rows import MergeRow, run_merge
from loader.save.validate import Image, Reject, storable

log = logging.getLogger("loader")

# SQLSTATE classes of a refusal caused by the values of some row:
# data_exception (bad encoding, bad JSON, out of range) and
# integrity_constraint_violation (CHECK, UNIQUE, NOT NULL).
_DATA_CLASSES = ("22", "23")
# program_limit_exceeded: a value too large for an index entry.
_DATA_STATES = frozenset({"54000"})

_SAVEPOINT = "loader_isolate"
_MERGE = sql.SQL(queries.get("merge")).format(**staging_names())
_EMPTY_STAGING = sql.SQL(queries.get("empty_staging")).format(**staging_names())

#: Reason kept for an input whose path another batch stored while the call was loading.
CLAIMED_CONCURRENTLY = "image_path (or public_path) stored by another batch while this call was loading"

#: The merge's parameters (batch_id, mode, the call's ledger entry), as the fast path sends them.
MergeParams = dict[str, Any]

ImageRows = Callable[[list[Image], list[Reject]], Iterable[Sequence[Any]]]
BoxRows = Callable[[list[Image]], Iterable[Sequence[Any]]]
Unit = Image | Reject


def is_data_error(exc: BaseException) -> bool:
    """True when ``exc`` (raised by COPY or the merge) says some row's values were refused.

    Only errors input data can cause: the server's data exceptions and
    integrity violations (SQLSTATE classes 22, 23; 54000), and psycopg's
    encoder refusing a value. Connection losses, timeouts, deadlocks and the
    like are failures of the database (the call is not kept); an exception
    raised by the loader's own code is a bug and raises.
    """
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is None:
            # psycopg itself refused to encode a value.
            return isinstance(exc, psycopg.DataError)
        return state.startswith(_DATA_CLASSES) or state in _DATA_STATES
    # Raised while encoding a COPY row (a lone surrogate, a value of the wrong
    # type), but only by psycopg's encoder: the same exception raised by the
    # loader's own code (building the rows, a misspelt keyword) is a bug, which
    # must raise, not turn every input of the call into a reject.
    return isinstance(
        exc, UnicodeEncodeError | TypeError | ValueError | OverflowError
    ) and _raised_by_encoder(exc)


# Packages whose code encodes COPY rows: psycopg, and its C implementations.
_ENCODERS = frozenset({"psycopg", "psycopg_binary", "psycopg_c"})


def _raised_by_encoder(exc: BaseException) -> bool:
    """Whether the innermost Python frame ``exc`` passed through is psycopg's (the
    encoder's); C code has no frame, so a C dumper's error shows as its caller's."""
    tb = exc.__traceback__
    module = ""
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        tb = tb.tb_next
    return module.partition(".")[0] in _ENCODERS


def describe_refusal(exc: BaseException) -> str:
    """The reason stored for a refused input: the server's (or the encoder's) first line."""
    if isinstance(exc, psycopg.Error):
        lines = str(exc).strip().splitlines()
        first = lines[0] if lines else type(exc).__name__
        state = f" [SQLSTATE {exc.sqlstate}]" if exc.sqlstate else ""
        text = f"refused by the database{state}: {first}"
    else:
        text = f"could not be sent to the database: {type(exc).__name__}: {exc}"
    return storable(text)


@dataclasses.dataclass
class Isolated:
    """What the safety net stored, shaped as the fast path's merge result."""

    #: One row per input, as the merge returns them, with the final totals.
    rows: list[MergeRow]
    images: list[Image]
    rejects: list[Reject]
    #: Statements sent by the net (everything between CREATE and COMMIT).
    statements: int


def store_isolating(
    conn: psycopg.Connection[Any],
    params: MergeParams,
    images: list[Image],
    rejects: list[Reject],
    image_rows: ImageRows,
    box_rows: BoxRows,
) -> Isolated:
    """Stage and merge the call in groups, isolating the inputs the database refuses.

    Runs inside the caller's transaction, after lock_batch and create_staging.
    Raises the database's error (translated) if it refuses even the record of
    a reject: then the fault is not in one input's data.
    """
    net = _Net(conn, params, image_rows, box_rows)
    units: list[Unit] = sorted([*images, *rejects], key=lambda u: u.pos)
    # The whole call was refused once already: start from its halves.
    stack = [units[len(units) // 2 :], units[: len(units) // 2]] if len(units) > 1 else [units]
    while stack:
        group = stack.pop()
        if not group:
            continue
        refusal = net.store(group)
        if refusal is None:
            continue
        if len(group) == 1:
            net.settle(group[0], refusal)
        else:
            half = len(group) // 2
            stack += [group[half:], group[:half]]  # left half first: inputs keep their order
    return net.result()


@dataclasses.dataclass
class Resolved:
    """The call's merge result once its lost inputs are rejected."""

    rows: list[MergeRow]
    images: list[Image]
    rejects: list[Reject]
    #: Statements sent to resolve them: TRUNCATE, COPY, merge.
    statements: int


def reject_lost(
    conn: psycopg.Connection[Any],
    params: MergeParams,
    rows: list[MergeRow],
    images: list[Image],
    rejects: list[Reject],
    image_rows: ImageRows,
) -> Resolved:
    """Reject, in the same transaction, the inputs the merge reported as 'lost'.

    lock_batch found their paths free, but another batch stored them before our
    merge did (its ON CONFLICT skipped them, after waiting for that batch to
    commit), so the merge wrote everything else but not the totals. Staging
    those inputs as rejects and merging again records them and the totals:
    what a rerun of the whole call would end with, without its cost and
    without failing when batches keep racing for the same paths.
    """
    lost = {row.pos: row.reason for row in rows if row.outcome == Outcome.LOST}
    late = [
        Reject(im.pos, im.image_path, lost[im.pos] or CLAIMED_CONCURRENTLY, raw_bytes(im.source))
        for im in images
        if im.pos in lost
    ]
    conn.execute(_EMPTY_STAGING, prepare=False)
    copy_rows(conn, STAGE_IMAGES, image_rows([], late))
    again = run_merge(conn, _MERGE, params)
    final = again[0]
    outcomes = [row for row in rows if row.pos is not None and row.pos not in lost]
    outcomes += [row for row in again if row.pos is not None]
    log.info(
        "batch %s: %d inputs rejected after the merge, with their raw input", params["batch_id"], len(late)
    )
    return Resolved(
        sorted((row.with_totals_of(final) for row in outcomes), key=lambda r: r.pos or 0) or [final],
        [im for im in images if im.pos not in lost],
        [*rejects, *late],
        3,
    )


class _Net:
    def __init__(
        self, conn: psycopg.Connection[Any], params: MergeParams, image_rows: ImageRows, box_rows: BoxRows
    ) -> None:
        self.conn = conn
        self.params = params
        self.batch_id: str = params["batch_id"]
        self.image_rows = image_rows
        self.box_rows = box_rows
        self.outcomes: list[MergeRow] = []
        self.totals: MergeRow | None = None
        self.images: list[Image] = []
        self.rejects: list[Reject] = []
        self.statements = 0

    def store(self, group: list[Unit]) -> BaseException | None:
        """Stage and merge ``group`` under a savepoint; the refusal, or None when stored."""
        images = [u for u in group if isinstance(u, Image)]
        rejects = [u for u in group if isinstance(u, Reject)]
        self.statements += 1  # SAVEPOINT
        try:
            with self.conn.transaction(savepoint_name=_SAVEPOINT):
                self.statements += 1
                copy_rows(self.conn, STAGE_IMAGES, self.image_rows(images, rejects))
                if any(im.boxes for im in images):
                    self.statements += 1
                    copy_rows(self.conn, STAGE_BOXES, self.box_rows(images))
                self.statements += 1
                rows = run_merge(self.conn, _MERGE, self.params)
                self.statements += 1
                self.conn.execute(_EMPTY_STAGING, prepare=False)
        except Exception as exc:
            if not is_data_error(exc):
                raise
            self.statements += 2  # ROLLBACK TO, RELEASE
            return exc
        self.statements += 1  # RELEASE
        self.outcomes += [row for row in rows if row.pos is not None]
        self.totals = rows[0]
        self.images += images
        self.rejects += rejects
        return None

    def settle(self, unit: Unit, refusal: BaseException) -> None:
        """Store one refused input as failed, else as a reject; the server's error as reason."""
        reason = describe_refusal(refusal)
        log.warning(
            "batch %s: input %d was refused by the database although it passed validation: %s",
            self.batch_id,
            unit.pos,
            reason,
        )
        if isinstance(unit, Reject):
            self._give_up(refusal)
        if unit.status == "success":
            # Most refusals are in a box (text, confidence, bbox): keep the image, as failed.
            again = self.store([unit.as_failed(reason)])
            if again is None:
                return
            reason = describe_refusal(again)
        path = unit.image_path if path_problem(unit.image_path, "image_path") is None else None
        again = self.store([Reject(unit.pos, path, reason, raw_bytes(unit.source))])
        if again is not None:
            self._give_up(again)

    def _give_up(self, refusal: BaseException) -> NoReturn:
        doing = f"saving batch {self.batch_id!r} (even the record of a rejected input was refused)"
        if isinstance(refusal, psycopg.Error):
            raise translate(refusal, doing) from refusal
        raise DatabaseError(
            f"{doing} failed: {describe_refusal(refusal)} (nothing of this call was kept; "
            "check the server log and the input)"
        ) from refusal

    def result(self) -> Isolated:
        assert self.totals is not None, "at least one group was stored"
        totals = self.totals
        rows = [row.with_totals_of(totals) for row in sorted(self.outcomes, key=lambda r: r.pos or 0)]
        return Isolated(
            rows or [totals],
            self.images,
            self.rejects,
            self.statements,
        )
