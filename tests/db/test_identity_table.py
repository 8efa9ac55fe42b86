"""The README's identity table ("One identity for every input"), row by row.

Each case is one cell of the table: a row (what arrives at position P) in one
column (a plain call, repair=True or replace=True). It states what the batch holds
(set up through calls, or by the application's own SQL writes where the row is
about them), what arrives, and the verdict: the report's counts and issues, the
batch's progress, and the rows of batch B in ocr_executions, chain_executions and
load_rejects. The merge (loader/sql/save.sql) is one statement; these cases test
it by parts, and `python3 dev.py mutate` (tests/mutation/) checks that they would
notice its steps breaking.

Only the public API (loader.save_batch, register_batch, get_progress, loader.errors)
and SQL reads are used: modules behind the front move. Every case runs in a
database of its own (the `dsn` fixture), all under one batch id, B.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers.checks import assert_totals_match_recount

from loader import PositionConflictError, get_progress, register_batch, save_batch
from loader.errors import PositionBeyondTotalError

README = Path(__file__).resolve().parents[2] / "README.md"
B = "B"
COLUMNS = ("plain", "repair", "replace")
# The table's rows, by their first cell (as the README words them).
BEYOND = "any input at P ≥ the batch's declared total"
FREE = "a valid result, P free, image new"
SLOT = (
    "a valid result, P holds a chain without an OCR row (an in-flight chain `schema adopt` kept, "
    "an OCR row the application deleted)"
)
FAILED = "`status: failed`, or invalid data (below)"
UNUSABLE = "no usable `image_path`, not a JSON object"
LOWER = "an image stored at a lower position Q of the batch"
HIGHER = "an image stored at a higher position Q of the batch"
OWNED = "a `public_path` or `image_path` another image or batch owns"
SAME = "the input P already received (a redelivery, another cut)"
OTHER = "another input than the one P holds"
FIX = "a fix for the open reject at P"
FAILURE = "a result for an image the batch stored as failed"
APP = "an image the application stored in the batch at no position"
LEGACY = (
    "the input a version-3 loader rejected at P − F (F: the call's first position; "  # noqa: RUF001  (the README's minus)
    "version 3 numbered a Celery chunk's rejects from 0)"
)

Input = dict[str, Any] | bytes


def ok(name: str, *texts: str, public: str | None = None, batch: str = B) -> dict[str, Any]:
    """A successful result for image /<batch>/<name>.jpg, one box per text (default: one box 't')."""
    boxes = [
        {"text": t, "confidence": 0.9, "bbox": [[n, 0], [n + 1, 1]]} for n, t in enumerate(texts or ("t",))
    ]
    return {
        "image_path": f"/{batch}/{name}.jpg",
        "public_path": public,
        "status": "success",
        "text_boxes": boxes,
    }


def failed(name: str, error: str = "engine crashed") -> dict[str, Any]:
    return {"image_path": f"/{B}/{name}.jpg", "status": "failed", "error": error, "text_boxes": []}


def invalid(name: str) -> dict[str, Any]:
    """Data validation stores as failed: a confidence past 1."""
    bad = ok(name)
    bad["text_boxes"][0]["confidence"] = 1.7
    return bad


NOT_JSON = b"not json"
CUT_SHORT = b'{"image_path": "/B/b.jp'
NO_PATH = json.dumps({"public_path": "/pub/nothing", "status": "success", "text_boxes": []}).encode()


@dataclass(frozen=True)
class Call:
    """A save_batch call: inputs at position_offset, in a mode; total for total_images."""

    inputs: Sequence[Input]
    offset: int = 0
    mode: str = "plain"
    total: int | None = None
    batch: str = B

    def run(self, conn: psycopg.Connection[Any]) -> Any:
        modes = {"repair": {"repair": True}, "replace": {"replace": True}}.get(self.mode, {})
        return save_batch(
            conn,
            self.batch,
            list(self.inputs),
            position_offset=self.offset,
            total_images=self.total,
            **modes,
        )


@dataclass(frozen=True)
class Register:
    total: int

    def run(self, conn: psycopg.Connection[Any]) -> Any:
        return register_batch(conn, B, self.total)


@dataclass(frozen=True)
class AppWrites:
    """What the application (or a DBA) writes itself, beside the loader."""

    statements: tuple[str, ...]

    def run(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            for statement in self.statements:
                conn.execute(statement)  # type: ignore[arg-type]  (literal SQL of the test)


Step = Call | Register | AppWrites

# An in-flight chain the application keeps at position 1 of B: no OCR row yet.
IN_FLIGHT = AppWrites(
    (
        "INSERT INTO chain_executions (chain_id, batch_id, status, position)"
        " VALUES ('in-flight', 'B', 'STARTED', 1)",
    )
)
# The application deletes B's OCR row of b.jpg, leaving its chain.
B_ROW_DELETED = AppWrites(("DELETE FROM ocr_executions WHERE image_path = '/B/b.jpg'",))


def app_image(name: str) -> AppWrites:
    """The application stores /B/<name>.jpg in B at no position (its own chain, no boxes)."""
    return AppWrites(
        (
            "INSERT INTO chain_executions (chain_id, batch_id, status)"
            f" VALUES ('app-{name}', 'B', 'SUCCESS')",
            "INSERT INTO ocr_executions (chain_id, image_path, status)"
            f" VALUES ('app-{name}', '/B/{name}.jpg', 'success')",
        )
    )


def legacy_reject(position: int, raw: bytes, image_path: str | None = None) -> AppWrites:
    """A reject a version-3 loader stored at a call-relative position (migration 0005 marks them)."""
    path = f"'{image_path}'" if image_path else "NULL"
    return AppWrites(
        (
            "INSERT INTO load_rejects"
            " (batch_id, position, image_path, reason, raw, raw_sha256, legacy_position)"
            f" VALUES ('B', {position}, {path}, 'version 3 reject', '\\x{raw.hex()}',"
            f" sha256('\\x{raw.hex()}'), true)",
        )
    )


@dataclass(frozen=True)
class Issue:
    position: int
    outcome: str
    # Pieces the reason must contain: the data it names (positions, owners), not its wording.
    says: tuple[str, ...] = ()


@dataclass(frozen=True)
class Image:
    """An image of batch B as stored: its position, its file name, status, box texts, its
    result's version (1, one more per re-OCR) and its chain's runs (total, completed,
    failed tasks; None: the one run of a chain the loader made, as its status says)."""

    position: int | None
    name: str
    status: str = "success"
    texts: tuple[str, ...] = ("t",)
    version: int = 1
    runs: tuple[int, int, int] | None = None

    def as_stored(self) -> Image:
        one_run = (1, 1, 0) if self.status == "success" else (1, 0, 1)
        return replace(self, runs=self.runs or one_run)


@dataclass(frozen=True)
class Reject:
    """A reject of batch B: position, image name (None: no usable path), reason pieces,
    open or not, and which image resolved it (None: no OCR row, or still open)."""

    position: int
    name: str | None
    says: tuple[str, ...] = ()
    open: bool = True
    resolved_by: str | None = None


@dataclass(frozen=True)
class Progress:
    total: int
    completed: int
    failed: int
    rejected: int
    status: str


@dataclass(frozen=True)
class Case:
    row: str
    column: str
    what: str  # the case in a few words: its test id
    given: tuple[Step, ...]
    arrives: Call
    progress: Progress
    images: tuple[Image, ...]
    counts: dict[str, int] = field(default_factory=dict)
    issues: tuple[Issue, ...] = ()
    rejects: tuple[Reject, ...] = ()
    chains: int | None = None  # B's chains after, when it is not one per image
    history: int = 0  # results kept as earlier versions (replaced results)
    raises: type[Exception] | None = None
    raised: dict[str, Any] = field(default_factory=dict)  # attributes of the exception
    replayed: bool = False
    writes: bool | None = None  # whether the call writes rows (None: as its counts say)

    @property
    def writes_rows(self) -> bool:
        if self.writes is not None:
            return self.writes
        changes = ("stored", "failed", "rejected", "replaced", "resolved")
        return self.raises is None and any(self.counts.get(name, 0) for name in changes)


COUNTS = ("received", "stored", "failed", "rejected", "unchanged", "replaced", "refused", "resolved", "boxes")

CASES: tuple[Case, ...] = (
    # ------------------------------------------------------------------ past the total
    Case(
        BEYOND,
        "plain",
        "past_total_refuses_the_whole_call",
        given=(Register(2),),
        arrives=Call([ok("a"), ok("b"), ok("c")]),
        raises=PositionBeyondTotalError,
        raised={"position": 2, "total": 2},
        progress=Progress(2, 0, 0, 0, "PENDING"),
        images=(),
    ),
    Case(
        BEYOND,
        "repair",
        "past_total_repair_refused_whole",
        given=(Call([ok("a"), NOT_JSON]),),
        arrives=Call([ok("b")], offset=2, mode="repair"),
        raises=PositionBeyondTotalError,
        raised={"position": 2, "total": 2},
        progress=Progress(2, 1, 1, 1, "SUCCESS"),
        images=(Image(0, "a"),),
        rejects=(Reject(1, None),),
    ),
    Case(
        BEYOND,
        "replace",
        "past_total_replace_refused_whole",
        given=(Call([ok("a")]),),
        arrives=Call([ok("a", "again"), ok("b")], mode="replace"),
        raises=PositionBeyondTotalError,
        raised={"position": 1, "total": 1},
        progress=Progress(1, 1, 0, 0, "SUCCESS"),
        images=(Image(0, "a"),),
    ),
    # ------------------------------------------------------------------ a free position
    Case(
        FREE,
        "plain",
        "free_position_stores",
        given=(Register(2),),
        arrives=Call([ok("a", "x", "y")]),
        counts={"received": 1, "stored": 1, "boxes": 2},
        progress=Progress(2, 1, 0, 0, "STARTED"),
        images=(Image(0, "a", texts=("x", "y")),),
    ),
    Case(
        FREE,
        "plain",
        "the_total_grows_past_an_image_the_application_stored",
        given=(Register(1), app_image("c")),
        arrives=Call([ok("a")]),
        counts={"received": 1, "stored": 1, "boxes": 1},
        progress=Progress(2, 2, 0, 0, "SUCCESS"),
        images=(Image(0, "a"), Image(None, "c", texts=(), runs=(0, 0, 0))),
    ),
    Case(
        FREE,
        "repair",
        "free_position_repair_fixes_nothing",
        given=(Register(2),),
        arrives=Call([ok("a")], mode="repair"),
        counts={"received": 1, "refused": 1},
        issues=(Issue(0, "refused"),),
        progress=Progress(2, 0, 0, 0, "PENDING"),
        images=(),
    ),
    Case(
        FREE,
        "replace",
        "free_position_replace_stores",
        given=(Register(2), Call([ok("a")])),
        arrives=Call([ok("b", "x")], offset=1, mode="replace"),
        counts={"received": 1, "stored": 1, "boxes": 1},
        progress=Progress(2, 2, 0, 0, "SUCCESS"),
        images=(Image(0, "a"), Image(1, "b", texts=("x",))),
    ),
    # ------------------------------------------------------------------ a chain without its OCR row
    Case(
        SLOT,
        "plain",
        "in_flight_chain_is_filled",
        given=(Register(2), Call([ok("a")]), IN_FLIGHT),
        arrives=Call([ok("b")], offset=1),
        counts={"received": 1, "stored": 1, "boxes": 1},
        progress=Progress(2, 2, 0, 0, "SUCCESS"),
        images=(Image(0, "a"), Image(1, "b")),
        chains=2,
    ),
    Case(
        SLOT,
        "repair",
        "deleted_ocr_row_is_filled_by_repair",
        given=(Call([ok("a"), ok("b")]), B_ROW_DELETED),
        arrives=Call([ok("b", "u")], offset=1, mode="repair"),
        counts={"received": 1, "stored": 1, "boxes": 1},
        progress=Progress(2, 2, 0, 0, "SUCCESS"),
        images=(Image(0, "a"), Image(1, "b", texts=("u",))),
        chains=2,
    ),
    Case(
        SLOT,
        "replace",
        "deleted_ocr_row_is_filled_by_replace",
        given=(Call([ok("a"), ok("b")]), B_ROW_DELETED),
        arrives=Call([failed("b")], offset=1, mode="replace"),
        counts={"received": 1, "failed": 1},
        issues=(Issue(1, "failed", ("engine crashed",)),),
        progress=Progress(2, 1, 1, 0, "SUCCESS"),
        images=(Image(0, "a"), Image(1, "b", "failed", ())),
        chains=2,
    ),
    # ------------------------------------------------------------------ failed or invalid
    Case(
        FAILED,
        "plain",
        "failed_and_invalid_are_stored_failed",
        given=(Register(3),),
        arrives=Call([failed("a"), invalid("b"), ok("c")]),
        counts={"received": 3, "stored": 1, "failed": 2, "boxes": 1},
        issues=(Issue(0, "failed", ("engine crashed",)), Issue(1, "failed", ("confidence", "1.7"))),
        progress=Progress(3, 1, 2, 0, "SUCCESS"),
        images=(Image(0, "a", "failed", ()), Image(1, "b", "failed", ()), Image(2, "c")),
    ),
    Case(
        FAILED,
        "repair",
        "failed_fix_of_a_reject_is_stored_failed",
        given=(Call([ok("a"), NOT_JSON]),),
        arrives=Call([failed("b")], offset=1, mode="repair"),
        counts={"received": 1, "failed": 1, "resolved": 1},
        issues=(Issue(1, "failed", ("engine crashed",)),),
        progress=Progress(2, 1, 1, 0, "SUCCESS"),
        images=(Image(0, "a"), Image(1, "b", "failed", ())),
        rejects=(Reject(1, None, open=False, resolved_by="b"),),
    ),
    Case(
        FAILED,
        "replace",
        "invalid_at_a_free_position_replace_stores_failed",
        given=(Register(2), Call([ok("a")])),
        arrives=Call([invalid("b")], offset=1, mode="replace"),
        counts={"received": 1, "failed": 1},
        issues=(Issue(1, "failed", ("confidence",)),),
        progress=Progress(2, 1, 1, 0, "SUCCESS"),
        images=(Image(0, "a"), Image(1, "b", "failed", ())),
    ),
    # ------------------------------------------------------------------ unusable input
    Case(
        UNUSABLE,
        "plain",
        "unusable_inputs_are_rejects_with_their_bytes",
        given=(Register(4),),
        arrives=Call([NOT_JSON, NO_PATH, b"[1, 2]", ok("d")]),
        counts={"received": 4, "stored": 1, "rejected": 3, "boxes": 1},
        issues=(Issue(0, "rejected"), Issue(1, "rejected"), Issue(2, "rejected")),
        progress=Progress(4, 1, 3, 3, "SUCCESS"),
        images=(Image(3, "d"),),
        rejects=(Reject(0, None), Reject(1, None), Reject(2, None)),
    ),
    Case(
        UNUSABLE,
        "replace",
        "unreadable_line_at_a_held_position_is_refused_alone",
        given=(Call([ok("a"), ok("b")]),),
        arrives=Call([failed("a"), CUT_SHORT], mode="replace"),
        counts={"received": 2, "replaced": 1, "refused": 1},
        issues=(Issue(0, "replaced", ("engine crashed",)), Issue(1, "refused")),
        progress=Progress(2, 1, 1, 0, "SUCCESS"),
        images=(Image(0, "a", "failed", (), version=2, runs=(2, 1, 1)), Image(1, "b")),
        history=1,
    ),
    Case(
        UNUSABLE,
        "replace",
        "unreadable_line_at_a_free_position_is_a_reject",
        given=(Register(2), Call([ok("a")])),
        arrives=Call([NOT_JSON], offset=1, mode="replace"),
        counts={"received": 1, "rejected": 1},
        issues=(Issue(1, "rejected"),),
        progress=Progress(2, 1, 1, 1, "SUCCESS"),
        images=(Image(0, "a"),),
        rejects=(Reject(1, None),),
    ),
    # ------------------------------------------------------------------ stored lower
    Case(
        LOWER,
        "plain",
        "image_stored_lower_by_an_earlier_call_makes_a_duplicate",
        given=(Register(3), Call([ok("a"), ok("b")])),
        arrives=Call([ok("a", "other")], offset=2),
        counts={"received": 1, "rejected": 1},
        issues=(Issue(2, "rejected", ("duplicate", "position 0")),),
        progress=Progress(3, 2, 1, 1, "SUCCESS"),
        images=(Image(0, "a"), Image(1, "b")),
        rejects=(Reject(2, "a", ("duplicate", "position 0")),),
    ),
    Case(
        LOWER,
        "plain",
        "image_twice_in_one_call_makes_a_duplicate",
        given=(Register(4), Call([ok("z")], offset=3)),
        arrives=Call([ok("b"), ok("a"), ok("a", "again")]),
        counts={"received": 3, "stored": 2, "rejected": 1, "boxes": 2},
        issues=(Issue(2, "rejected", ("duplicate", "position 1")),),
        progress=Progress(4, 3, 1, 1, "SUCCESS"),
        images=(Image(0, "b"), Image(1, "a"), Image(3, "z")),
        rejects=(Reject(2, "a", ("duplicate", "position 1")),),
    ),
    Case(
        LOWER,
        "replace",
        "image_stored_lower_is_replaced_in_place",
        given=(Register(3), Call([ok("a"), ok("b")])),
        arrives=Call([ok("a", "new")], offset=2, mode="replace"),
        counts={"received": 1, "replaced": 1, "boxes": 1},
        issues=(Issue(2, "replaced"),),
        progress=Progress(3, 2, 0, 0, "STARTED"),
        images=(Image(0, "a", texts=("new",), version=2, runs=(2, 2, 0)), Image(1, "b")),
        history=1,
    ),
    # ------------------------------------------------------------------ stored higher
    Case(
        HIGHER,
        "plain",
        "lower_position_takes_the_image_and_its_duplicates_name_it",
        given=(Register(5), Call([ok("b"), ok("a", "high"), ok("a", "dup"), ok("b", "dup")], offset=1)),
        arrives=Call([ok("a", "low", "more")]),
        counts={"received": 1, "stored": 1, "boxes": 2},
        progress=Progress(5, 2, 3, 3, "SUCCESS"),
        images=(Image(0, "a", texts=("low", "more")), Image(1, "b")),
        rejects=(
            Reject(2, "a", ("duplicate", "position 0")),
            Reject(3, "a", ("duplicate", "position 0")),
            Reject(4, "b", ("duplicate", "position 1")),
        ),
    ),
    Case(
        HIGHER,
        "plain",
        "an_image_twice_below_its_stored_position_is_held_by_the_lowest",
        given=(Register(4), Call([ok("a", "high")], offset=3)),
        arrives=Call([ok("a", "low"), ok("a", "mid")]),
        counts={"received": 2, "stored": 1, "rejected": 1, "boxes": 1},
        issues=(Issue(1, "rejected", ("duplicate", "position 0")),),
        progress=Progress(4, 1, 2, 2, "STARTED"),
        images=(Image(0, "a", texts=("low",)),),
        rejects=(Reject(1, "a", ("duplicate", "position 0")), Reject(3, "a", ("duplicate", "position 0"))),
    ),
    Case(
        HIGHER,
        "plain",
        "a_failure_stored_higher_is_taken_by_a_success_below",
        given=(Register(3), Call([ok("b"), failed("a")], offset=1)),
        arrives=Call([ok("a", "low")]),
        counts={"received": 1, "stored": 1, "boxes": 1},
        progress=Progress(3, 2, 1, 1, "SUCCESS"),
        images=(Image(0, "a", texts=("low",)), Image(1, "b")),
        rejects=(Reject(2, "a", ("duplicate", "position 0")),),
    ),
    Case(
        HIGHER,
        "repair",
        "repair_at_an_open_reject_takes_the_image_from_above",
        given=(Call([NOT_JSON, ok("b"), failed("a")]),),
        arrives=Call([ok("a", "fixed")], mode="repair"),
        counts={"received": 1, "stored": 1, "resolved": 1, "boxes": 1},
        progress=Progress(3, 2, 1, 1, "SUCCESS"),
        images=(Image(0, "a", texts=("fixed",)), Image(1, "b")),
        rejects=(Reject(0, None, open=False, resolved_by="a"), Reject(2, "a", ("duplicate", "position 0"))),
    ),
    Case(
        HIGHER,
        "replace",
        "image_stored_higher_is_replaced_in_place",
        given=(Register(3), Call([ok("b"), ok("a")], offset=1)),
        arrives=Call([failed("a")], mode="replace"),
        counts={"received": 1, "replaced": 1},
        issues=(Issue(0, "replaced", ("engine crashed",)),),
        progress=Progress(3, 1, 1, 0, "STARTED"),
        images=(Image(1, "b"), Image(2, "a", "failed", (), version=2, runs=(2, 1, 1))),
        history=1,
    ),
    # ------------------------------------------------------------------ owned elsewhere
    Case(
        OWNED,
        "plain",
        "paths_another_batch_owns_make_rejects_naming_it",
        given=(Call([ok("x", public="/pub/x", batch="O")], batch="O"), Register(3)),
        arrives=Call([ok("x", batch="O"), ok("b", public="/pub/x"), ok("c")]),
        counts={"received": 3, "stored": 1, "rejected": 2, "boxes": 1},
        issues=(Issue(0, "rejected", ("'O'",)), Issue(1, "rejected", ("public_path", "'O'"))),
        progress=Progress(3, 1, 2, 2, "SUCCESS"),
        images=(Image(2, "c"),),
        rejects=(Reject(0, "x", ("'O'",)), Reject(1, "b", ("public_path", "'O'"))),
    ),
    Case(
        OWNED,
        "plain",
        "public_path_of_another_image_of_the_batch_makes_a_reject",
        given=(Register(2), Call([ok("a", public="/pub/a")])),
        arrives=Call([ok("b", public="/pub/a")], offset=1),
        counts={"received": 1, "rejected": 1},
        issues=(Issue(1, "rejected", ("public_path", "'B'")),),
        progress=Progress(2, 1, 1, 1, "SUCCESS"),
        images=(Image(0, "a"),),
        rejects=(Reject(1, "b", ("public_path", "'B'")),),
    ),
    Case(
        OWNED,
        "plain",
        "a_lower_input_with_another_batchs_public_path_cannot_take_its_image",
        given=(
            Call([ok("x", public="/pub/x", batch="O")], batch="O"),
            Register(3),
            Call([ok("b"), ok("a")], offset=1),
        ),
        arrives=Call([ok("a", public="/pub/x")]),
        counts={"received": 1, "rejected": 1},
        issues=(Issue(0, "rejected", ("public_path", "'O'")),),
        progress=Progress(3, 2, 1, 1, "SUCCESS"),
        images=(Image(1, "b"), Image(2, "a")),
        rejects=(Reject(0, "a", ("public_path", "'O'")),),
    ),
    Case(
        OWNED,
        "replace",
        "replace_never_takes_another_batchs_paths",
        given=(Call([ok("x", public="/pub/x", batch="O")], batch="O"), Register(3), Call([ok("a"), ok("b")])),
        arrives=Call([ok("a", public="/pub/x"), ok("b", "new"), ok("x", batch="O")], mode="replace"),
        counts={"received": 3, "replaced": 1, "refused": 2, "boxes": 1},
        issues=(
            Issue(0, "refused", ("public_path", "'O'")),
            Issue(1, "replaced"),
            Issue(2, "refused", ("'O'",)),
        ),
        progress=Progress(3, 2, 0, 0, "STARTED"),
        images=(Image(0, "a"), Image(1, "b", texts=("new",), version=2, runs=(2, 2, 0))),
        history=1,
    ),
    # ------------------------------------------------------------------ the same input again
    Case(
        SAME,
        "plain",
        "another_cut_of_received_inputs_changes_nothing",
        given=(Call([ok("a"), failed("b"), NOT_JSON]),),
        arrives=Call([failed("b"), NOT_JSON], offset=1),
        counts={"received": 2, "unchanged": 2},
        issues=(Issue(1, "unchanged"), Issue(2, "unchanged")),
        progress=Progress(3, 1, 2, 1, "SUCCESS"),
        images=(Image(0, "a"), Image(1, "b", "failed", ())),
        rejects=(Reject(2, None),),
    ),
    Case(
        SAME,
        "plain",
        "another_encoding_of_a_rejected_image_at_its_position_is_unchanged",
        given=(Call([ok("a"), ok("a", "dup")]),),
        arrives=Call([ok("a", "other")], offset=1),
        counts={"received": 1, "unchanged": 1},
        issues=(Issue(1, "unchanged"),),
        progress=Progress(2, 1, 1, 1, "SUCCESS"),
        images=(Image(0, "a"),),
        rejects=(Reject(1, "a", ("duplicate", "position 0")),),
    ),
    Case(
        SAME,
        "plain",
        "a_redelivered_call_is_a_replay",
        given=(Call([ok("a"), NOT_JSON]),),
        arrives=Call([ok("a"), NOT_JSON]),
        counts={"received": 2, "unchanged": 2},
        replayed=True,
        progress=Progress(2, 1, 1, 1, "SUCCESS"),
        images=(Image(0, "a"),),
        rejects=(Reject(1, None),),
    ),
    Case(
        SAME,
        "repair",
        "repair_with_received_inputs_changes_nothing",
        given=(Call([ok("a"), NOT_JSON]),),
        arrives=Call([ok("a"), NOT_JSON], mode="repair"),
        counts={"received": 2, "unchanged": 2},
        issues=(Issue(0, "unchanged"), Issue(1, "unchanged")),
        progress=Progress(2, 1, 1, 1, "SUCCESS"),
        images=(Image(0, "a"),),
        rejects=(Reject(1, None),),
    ),
    Case(
        SAME,
        "replace",
        "replace_with_the_received_input_replaces_again",
        given=(Call([ok("a", public="/pub/a"), ok("b")]),),
        arrives=Call([ok("a", public="/pub/a")], mode="replace"),
        counts={"received": 1, "replaced": 1, "boxes": 1},
        issues=(Issue(0, "replaced"),),
        progress=Progress(2, 2, 0, 0, "SUCCESS"),
        images=(Image(0, "a", version=2, runs=(2, 2, 0)), Image(1, "b")),
        history=1,
    ),
    Case(
        SAME,
        "replace",
        "an_exact_replay_of_a_replace_is_unchanged",
        given=(Call([ok("a"), ok("b")]), Call([ok("a", "v2")], mode="replace")),
        arrives=Call([ok("a", "v2")], mode="replace"),
        counts={"received": 1, "unchanged": 1},
        # Judged again, never shortcut by the ledger: the rows decide (README, re-OCR).
        issues=(Issue(0, "unchanged"),),
        progress=Progress(2, 2, 0, 0, "SUCCESS"),
        images=(Image(0, "a", texts=("v2",), version=2, runs=(2, 2, 0)), Image(1, "b")),
        history=1,
    ),
    Case(
        SAME,
        "replace",
        "an_exact_replay_of_a_replace_of_an_image_stored_elsewhere_is_unchanged",
        given=(Register(3), Call([ok("a"), ok("b")]), Call([ok("a", "v2")], offset=2, mode="replace")),
        arrives=Call([ok("a", "v2")], offset=2, mode="replace"),
        counts={"received": 1, "unchanged": 1},
        issues=(Issue(2, "unchanged"),),
        progress=Progress(3, 2, 0, 0, "STARTED"),
        images=(Image(0, "a", texts=("v2",), version=2, runs=(2, 2, 0)), Image(1, "b")),
        history=1,
    ),
    Case(
        SAME,
        "replace",
        "an_exact_replay_of_a_replace_after_a_later_replace_leaves_the_later_result",
        given=(
            Register(3),
            Call([ok("a"), ok("b")]),
            Call([ok("a", "v2")], offset=2, mode="replace"),
            Call([failed("a")], offset=2, mode="replace"),
        ),
        arrives=Call([ok("a", "v2")], offset=2, mode="replace"),
        counts={"received": 1, "unchanged": 1},
        issues=(Issue(2, "unchanged", ("replaces a result once",)),),
        progress=Progress(3, 1, 1, 0, "STARTED"),
        images=(Image(0, "a", "failed", (), version=3, runs=(3, 2, 1)), Image(1, "b")),
        history=2,
    ),
    # ------------------------------------------------------------------ another input
    Case(
        OTHER,
        "plain",
        "another_input_at_a_held_position_refuses_the_whole_call",
        given=(Register(4), Call([ok("a"), ok("b")])),
        arrives=Call([ok("c"), ok("d")], offset=1),
        raises=PositionConflictError,
        raised={"positions": [1]},
        progress=Progress(4, 2, 0, 0, "STARTED"),
        images=(Image(0, "a"), Image(1, "b")),
    ),
    # ------------------------------------------------------------------ a fix
    Case(
        FIX,
        "plain",
        "a_fix_without_repair_is_a_conflict",
        given=(Call([ok("a"), NOT_JSON]),),
        arrives=Call([ok("b")], offset=1),
        raises=PositionConflictError,
        raised={"positions": [1]},
        progress=Progress(2, 1, 1, 1, "SUCCESS"),
        images=(Image(0, "a"),),
        rejects=(Reject(1, None),),
    ),
    Case(
        FIX,
        "repair",
        "a_fix_is_stored_and_resolves_the_reject",
        given=(Call([ok("a"), NOT_JSON, ok("c")]),),
        arrives=Call([ok("b", "fixed")], offset=1, mode="repair"),
        counts={"received": 1, "stored": 1, "resolved": 1, "boxes": 1},
        progress=Progress(3, 3, 0, 0, "SUCCESS"),
        images=(Image(0, "a"), Image(1, "b", texts=("fixed",)), Image(2, "c")),
        rejects=(Reject(1, None, open=False, resolved_by="b"),),
    ),
    Case(
        FIX,
        "repair",
        "a_fix_for_a_rejected_image_is_stored_and_resolves_it",
        given=(Call([ok("a", public="/pub/a"), ok("b", public="/pub/a")]),),
        arrives=Call([ok("b", "fixed", public="/pub/b")], offset=1, mode="repair"),
        counts={"received": 1, "stored": 1, "resolved": 1, "boxes": 1},
        progress=Progress(2, 2, 0, 0, "SUCCESS"),
        images=(Image(0, "a"), Image(1, "b", texts=("fixed",))),
        rejects=(Reject(1, "b", ("public_path",), open=False, resolved_by="b"),),
    ),
    Case(
        FIX,
        "repair",
        "a_fix_after_one_still_bad_resolves_the_open_reject",
        given=(Call([ok("a"), NOT_JSON]), Call([NO_PATH], offset=1, mode="repair")),
        arrives=Call([ok("b")], offset=1, mode="repair"),
        counts={"received": 1, "stored": 1, "resolved": 1, "boxes": 1},
        progress=Progress(2, 2, 0, 0, "SUCCESS"),
        images=(Image(0, "a"), Image(1, "b")),
        rejects=(Reject(1, None, open=False), Reject(1, None, open=False, resolved_by="b")),
    ),
    Case(
        FIX,
        "repair",
        "a_fix_still_bad_takes_exactly_its_rejects_place",
        given=(Call([ok("a"), NOT_JSON]),),
        arrives=Call([NO_PATH], offset=1, mode="repair"),
        counts={"received": 1, "rejected": 1},
        issues=(Issue(1, "rejected"),),
        progress=Progress(2, 1, 1, 1, "SUCCESS"),
        images=(Image(0, "a"),),
        rejects=(Reject(1, None, open=False), Reject(1, None)),
    ),
    # ------------------------------------------------------------------ a stored failure
    Case(
        FAILURE,
        "plain",
        "a_result_for_a_stored_failure_keeps_the_first_write",
        given=(Call([ok("a"), failed("b")]),),
        arrives=Call([ok("b")], offset=1),
        counts={"received": 1, "unchanged": 1},
        issues=(Issue(1, "unchanged"),),
        progress=Progress(2, 1, 1, 0, "SUCCESS"),
        images=(Image(0, "a"), Image(1, "b", "failed", ())),
    ),
    Case(
        FAILURE,
        "repair",
        "repair_replaces_a_failure_with_exactly_the_new_boxes",
        given=(
            Call([ok("a"), failed("b")]),
            # The application gave the failed row a box: the repair's boxes take its place.
            AppWrites(
                (
                    "INSERT INTO ocr_text_boxes (ocr_execution_id, position, text, confidence, bbox)"
                    " SELECT id, 0, 'stale', 0.5, '[[0, 0]]' FROM ocr_executions"
                    " WHERE image_path = '/B/b.jpg'",
                )
            ),
        ),
        arrives=Call([ok("b", "one", "two")], offset=1, mode="repair"),
        counts={"received": 1, "replaced": 1, "boxes": 2},
        issues=(Issue(1, "replaced"),),
        progress=Progress(2, 2, 0, 0, "SUCCESS"),
        images=(Image(0, "a"), Image(1, "b", texts=("one", "two"), version=2, runs=(2, 1, 1))),
        history=1,
    ),
    Case(
        FAILURE,
        "repair",
        "repair_replaces_a_failure_sent_at_another_position",
        given=(Register(3), Call([ok("a"), failed("b")])),
        arrives=Call([ok("b", "x")], offset=2, mode="repair"),
        counts={"received": 1, "replaced": 1, "boxes": 1},
        issues=(Issue(2, "replaced"),),
        progress=Progress(3, 2, 0, 0, "STARTED"),
        images=(Image(0, "a"), Image(1, "b", texts=("x",), version=2, runs=(2, 1, 1))),
        history=1,
    ),
    Case(
        FAILURE,
        "replace",
        "replace_replaces_a_failure",
        given=(Call([ok("a"), failed("b"), ok("c")]),),
        arrives=Call([ok("b", "x")], offset=1, mode="replace"),
        counts={"received": 1, "replaced": 1, "boxes": 1},
        issues=(Issue(1, "replaced"),),
        progress=Progress(3, 3, 0, 0, "SUCCESS"),
        images=(Image(0, "a"), Image(1, "b", texts=("x",), version=2, runs=(2, 1, 1)), Image(2, "c")),
        history=1,
    ),
    # ------------------------------------------------------------------ the application's image
    Case(
        APP,
        "plain",
        "an_input_claims_the_applications_image",
        given=(Register(3), Call([ok("c")], offset=2), app_image("a")),
        arrives=Call([ok("a"), ok("b")]),
        counts={"received": 2, "stored": 1, "unchanged": 1, "boxes": 1},
        issues=(Issue(0, "unchanged"),),
        progress=Progress(3, 3, 0, 0, "SUCCESS"),
        images=(Image(0, "a", texts=(), runs=(0, 0, 0)), Image(1, "b"), Image(2, "c")),
    ),
    Case(
        APP,
        "replace",
        "replace_replaces_the_applications_image",
        given=(Register(2), app_image("a")),
        arrives=Call([failed("a")], mode="replace"),
        counts={"received": 1, "replaced": 1},
        issues=(Issue(0, "replaced"),),
        progress=Progress(2, 0, 1, 0, "STARTED"),
        images=(Image(None, "a", "failed", (), version=2),),
        history=1,
    ),
    # ------------------------------------------------------------------ a version-3 reject
    Case(
        LEGACY,
        "plain",
        "a_version_3_reject_is_superseded_by_its_input",
        given=(Register(4), legacy_reject(1, NOT_JSON)),
        arrives=Call([ok("c"), NOT_JSON], offset=2),
        counts={"received": 2, "stored": 1, "rejected": 1, "boxes": 1},
        issues=(Issue(3, "rejected"),),
        progress=Progress(4, 1, 1, 1, "STARTED"),
        images=(Image(2, "c"),),
        rejects=(Reject(1, None, ("version 3",), open=False), Reject(3, None)),
    ),
    Case(
        LEGACY,
        "repair",
        "a_version_3_reject_is_superseded_by_a_repair",
        given=(Register(4), Call([ok("a")]), Call([NOT_JSON], offset=1), legacy_reject(0, b"", "/B/b.jpg")),
        arrives=Call([ok("b")], offset=1, mode="repair"),
        counts={"received": 1, "stored": 1, "resolved": 1, "boxes": 1},
        progress=Progress(4, 2, 0, 0, "STARTED"),
        images=(Image(0, "a"), Image(1, "b")),
        rejects=(Reject(0, "b", ("version 3",), open=False), Reject(1, None, open=False, resolved_by="b")),
    ),
    Case(
        LEGACY,
        "replace",
        "a_version_3_reject_is_superseded_by_a_replace",
        given=(Register(4), Call([ok("a")]), legacy_reject(0, b"", "/B/c.jpg")),
        arrives=Call([ok("c")], offset=2, mode="replace"),
        counts={"received": 1, "stored": 1, "boxes": 1},
        progress=Progress(4, 2, 0, 0, "STARTED"),
        images=(Image(0, "a"), Image(2, "c")),
        rejects=(Reject(0, "c", ("version 3",), open=False),),
    ),
)


# --------------------------------------------------------------------------- reading the rows


def _name(path: str | None) -> str | None:
    """/B/a.jpg -> a (the cases name B's images by file name)."""
    return None if path is None else re.sub(r"^/[^/]+/(.*)\.jpg$", r"\1", path)


def images_of(db: psycopg.Connection[Any]) -> tuple[Image, ...]:
    rows = db.execute(
        "SELECT c.position, o.image_path, o.status::text,"
        " coalesce((SELECT array_agg(b.text ORDER BY b.position) FROM ocr_text_boxes b"
        "  WHERE b.ocr_execution_id = o.id), '{}'), o.result_version,"
        " c.total_tasks, c.completed_tasks, c.failed_tasks, c.status::text"
        " FROM chain_executions c JOIN ocr_executions o USING (chain_id)"
        " WHERE c.batch_id = 'B' ORDER BY c.position NULLS LAST, o.image_path"
    ).fetchall()
    # A chain's status is its OCR row's (the last run's outcome).
    assert [chain for *_, chain in rows] == [
        "SUCCESS" if status == "success" else "FAILURE" for _, _, status, *_ in rows
    ]
    return tuple(
        Image(pos, str(_name(path)), status, tuple(texts), version, (total, done, failed))
        for pos, path, status, texts, version, total, done, failed, _ in rows
    )


def rejects_of(db: psycopg.Connection[Any]) -> list[tuple[int, str | None, str, bool, str | None, bytes]]:
    return db.execute(
        "SELECT r.position, r.image_path, r.reason, r.resolved_at IS NULL, o.image_path, r.raw"
        " FROM load_rejects r LEFT JOIN ocr_executions o ON o.id = r.resolved_by"
        " WHERE r.batch_id = 'B' ORDER BY r.position, r.resolved_at IS NULL, r.id"
    ).fetchall()


def ids_of(db: psycopg.Connection[Any]) -> set[tuple[str, int]]:
    """Every OCR row and chain by its natural key and id: an arrival never re-creates one."""
    rows = db.execute(
        "SELECT 'ocr ' || image_path, id FROM ocr_executions UNION ALL SELECT 'chain ' || chain_id, id"
        " FROM chain_executions"
        " WHERE chain_id IN (SELECT chain_id FROM ocr_executions) OR position IS NOT NULL"
    ).fetchall()
    return set(rows)


def other_batches(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT batch_id, total_images, completed_images, failed_images, status::text, updated_at"
        " FROM batch_executions WHERE batch_id <> 'B' ORDER BY batch_id"
    ).fetchall()


def progress_of(report_progress: Any) -> Progress:
    p = report_progress
    return Progress(p.total_images, p.completed_images, p.failed_images, p.rejected_images, str(p.status))


def raws_sent(inputs: Sequence[Input], offset: int) -> dict[int, bytes]:
    return {offset + n: raw for n, raw in enumerate(inputs) if isinstance(raw, bytes)}


# --------------------------------------------------------------------------- the table's cases


def check_report(case: Case, report: Any) -> None:
    counts = {name: getattr(report, name) for name in COUNTS}
    assert counts == {name: case.counts.get(name, 0) for name in COUNTS}, report.issues
    assert report.replayed == case.replayed
    # One transaction: the merge judged every input itself; the safety net (a rerun
    # after the database refused data) never had to.
    assert report.attempts == 1
    got = [(i.position, i.outcome) for i in report.issues]
    assert got == [(i.position, i.outcome) for i in case.issues], report.issues
    for issue, want in zip(report.issues, case.issues, strict=True):
        assert all(piece in issue.reason for piece in want.says), (issue.reason, want.says)


def check_rows(case: Case, db: psycopg.Connection[Any], sent: dict[int, bytes]) -> None:
    assert images_of(db) == tuple(image.as_stored() for image in case.images)
    rejects = rejects_of(db)
    assert [(pos, _name(path), is_open, _name(by)) for pos, path, _, is_open, by, _ in rejects] == [
        (r.position, r.name, r.open, r.resolved_by) for r in case.rejects
    ]
    for (_, _, reason, _, _, raw), want in zip(rejects, case.rejects, strict=True):
        assert all(piece in reason for piece in want.says), (reason, want.says)
        if want.open and want.position in sent:
            assert bytes(raw) == sent[want.position]  # the raw input, byte for byte
    chains = db.execute("SELECT count(*) FROM chain_executions WHERE batch_id = 'B'").fetchone()
    assert chains == (len(case.images) if case.chains is None else case.chains,)
    history = db.execute("SELECT count(*) FROM ocr_result_history WHERE batch_id = 'B'").fetchone()
    assert history == (case.history,)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.column}-{c.what}" for c in CASES])
def test_identity_table_case(case: Case, conn: psycopg.Connection[Any], db: psycopg.Connection[Any]) -> None:
    for step in case.given:
        step.run(conn)
    ids_before = ids_of(db)
    before = get_progress(conn, B)
    others = other_batches(db)

    if case.raises is not None:
        with pytest.raises(case.raises) as raised:
            case.arrives.run(conn)
        for name, value in case.raised.items():
            assert getattr(raised.value, name) == value
    else:
        report = case.arrives.run(conn)
        check_report(case, report)
        assert progress_of(report.progress) == case.progress

    assert progress_of(get_progress(conn, B)) == case.progress
    assert_totals_match_recount(db, B)
    check_rows(case, db, raws_sent(case.arrives.inputs, case.arrives.offset))
    assert other_batches(db) == others  # a call writes its own batch only
    # A call that wrote rows moves the batch's updated_at (retention and followers read it).
    moved = get_progress(conn, B).updated_at != before.updated_at
    assert moved == case.writes_rows, f"updated_at moved: {moved}"
    # Rows keep their ids: a replaced result, a taken image, a filled slot, a claimed image.
    kept = {key: row_id for key, row_id in ids_of(db)}
    assert all(kept.get(key) == row_id for key, row_id in ids_before if key in kept)
    assert {key for key, _ in ids_before} <= set(kept)


# A path another batch claims while the merge runs (the row "a `public_path` or
# `image_path` another image or batch owns", decided after the merge's snapshot).
CLAIMED_MID_CALL = Case(
    OWNED,
    "plain",
    "a_path_another_batch_claims_during_the_merge_becomes_a_reject_naming_it",
    given=(Register(2),),
    arrives=Call([ok("a"), ok("b")]),
    counts={"received": 2, "stored": 1, "rejected": 1, "boxes": 1},
    # Its reason does not name the owner (the README's row says it would): not checked here.
    issues=(Issue(1, "rejected"),),
    progress=Progress(2, 1, 1, 1, "SUCCESS"),
    images=(Image(0, "a"),),
    rejects=(Reject(1, "b"),),
)


def test_a_path_claimed_by_another_batch_during_the_merge_becomes_a_reject(
    dsn: str, conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    case = CLAIMED_MID_CALL
    for step in case.given:
        step.run(conn)
    blocker = psycopg.connect(dsn)
    blocker.execute(
        "INSERT INTO batch_executions (batch_id, total_images) VALUES ('blocker', 1);"
        "INSERT INTO chain_executions (chain_id, batch_id) VALUES ('blocker-chain', 'blocker');"
        "INSERT INTO ocr_executions (chain_id, image_path, status)"
        " VALUES ('blocker-chain', '/B/b.jpg', 'success')"
    )
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(case.arrives.run(conn)))
    worker.start()
    # The merge waits on the uncommitted row for b.jpg, after its snapshot; then it is committed.
    deadline = time.monotonic() + 30
    waiting = (
        "SELECT count(*) > 0 FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    while not db.execute(waiting).fetchone()[0]:  # type: ignore[index]
        assert time.monotonic() < deadline, "the merge never waited on the other batch's row"
        time.sleep(0.02)
    blocker.commit()
    blocker.close()
    worker.join(30)
    (report,) = done

    check_report(case, report)
    assert progress_of(get_progress(db, B)) == progress_of(report.progress) == case.progress
    assert_totals_match_recount(db, B)
    check_rows(case, db, {})


# --------------------------------------------------------------------------- the table and the cases in step


def readme_cells() -> set[tuple[str, str]]:
    """(first cell, column) of every cell of the README's identity table that says something."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### One identity for every input", 1)[1]
    # The table: the first run of lines starting with "|" in the section.
    lines = list(
        itertools.takewhile(
            lambda line: line.startswith("|"), section[section.index("\n|") + 1 :].splitlines()
        )
    )
    header, rows = lines[0], lines[2:]
    assert [c.strip() for c in header.strip("|").split("|")][1:] == [
        "plain call",
        "`repair=True` (`--repair`)",
        "`replace=True` (`--replace`)",
    ]
    cells: set[tuple[str, str]] = set()
    for line in rows:
        first, *columns = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(columns) == len(COLUMNS), line
        cells |= {(first, column) for column, cell in zip(COLUMNS, columns, strict=True) if cell}
    return cells


def test_every_cell_of_the_readme_identity_table_has_its_case_and_no_case_is_left_over() -> None:
    table = readme_cells()
    cases = {(case.row, case.column) for case in CASES}
    assert table - cases == set(), "README cells without a case in tests/db/test_identity_table.py"
    assert cases - table == set(), "cases whose README cell is gone or empty"


def test_every_case_has_a_name_of_its_own() -> None:
    names = [f"{c.column}-{c.what}" for c in CASES]
    assert len(names) == len(set(names))
