"""The real loader and the reference model (tests/helpers/model.py), side by side.

A Hypothesis state machine draws a batch (images repeated at any distance, upstream
failures, lines that are not JSON) and a life for it: plain calls cut and sent at random,
with or without the total, replays of earlier calls, repairs, re-OCR calls, the
application's writes (an OCR status flipped, an OCR row or a whole chain deleted, a
counter written, complete_execution()) and deletes of the batch. After every step the
database must hold exactly what the model says: each stored image with its position,
status, error, boxes and model version, each open reject with its position, path and
reason, the counts get_progress reads, the stored counters (unless the batch reads
stale) and the status the loader's rule gives them.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, ClassVar

import psycopg
import pytest
from helpers.model import JUNK, Input, Model, Refused
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from loader import (
    BatchNotFoundError,
    LoaderError,
    PositionConflictError,
    delete_batch,
    get_progress,
    save_batch,
)
from loader.orm import BatchExecution, batch_status
from loader.orm import ProcessStatus as OrmStatus

#: Positions of every drawn batch: small, so that images repeat and calls overlap.
POSITIONS = 6
#: Images a batch draws from (fewer than its positions: duplicates are common).
IMAGES = 4

#: An image a second batch owns.
FOREIGN = 99

_example = itertools.count()
#: Steps run in this process (the report quotes it: `pytest -s` prints it).
STEPS = itertools.count()

inputs_st = st.one_of(
    st.builds(Input, st.integers(0, IMAGES - 1), st.sampled_from(["success", "success", "failed"])),
    st.builds(Input, st.none(), st.just("success"), st.sampled_from(["a", "b"])),
)


class LoaderAndModel(RuleBasedStateMachine):
    dsn: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.ns = f"m{next(_example)}"
        self.batch_id = f"{self.ns}-batch"
        self.conn = psycopg.connect(self.dsn)
        self.db = psycopg.connect(self.dsn, autocommit=True)
        self.model = Model()
        self.plan: list[Input] = []
        self.calls: list[tuple[str, int, list[Input], int | None]] = []

    def teardown(self) -> None:
        self.conn.close()
        self.db.close()

    # ------------------------------------------------------------------ inputs

    def path(self, image: int) -> str:
        return f"/model/{self.ns}/{image}.png"

    def payload(self, given: Input) -> Any:
        if given.junk:
            return f"not json {given.text}".encode()
        assert given.image is not None
        path = self.path(given.image)
        data: dict[str, Any] = {
            "image_path": path,
            "public_path": f"{path}.pub",
            "model_version": f"m-{given.text}",
        }
        if given.status == "failed":
            data |= {"status": "failed", "error": "engine crashed"}
        else:
            data["text_boxes"] = [
                {"text": f"{given.text} {given.image} {k}", "confidence": 0.5, "bbox": [[0, 0], [k, 1]]}
                for k in range(2)
            ]
        return data

    def image_of(self, path: str | None) -> int | None:
        return None if path is None else int(path.rsplit("/", 1)[1].split(".")[0])

    # ------------------------------------------------------------------ the loader's calls

    def call(self, mode: str, offset: int, inputs: list[Input], total: int | None) -> None:
        next(STEPS)
        self.calls.append((mode, offset, inputs, total))
        expected: Refused | None = None
        try:
            self.model.call(mode, offset, inputs, total)
        except Refused as refused:
            expected = refused
        try:
            report = save_batch(
                self.conn,
                self.batch_id,
                [self.payload(i) for i in inputs],
                position_offset=offset,
                total_images=total,
                repair=mode == "repair",
                replace=mode == "replace",
            )
        except LoaderError as exc:
            assert expected is not None, f"the loader refused a call the model takes: {exc!r}"
            if expected.kind == "conflict":
                assert isinstance(exc, PositionConflictError), exc
            elif expected.kind == "not_found":
                assert isinstance(exc, BatchNotFoundError), exc
            return
        assert expected is None, f"the loader took a call the model refuses ({expected.kind})"
        read = get_progress(self.db, self.batch_id)
        assert _figures(report.progress) == _figures(read), "the call's report differs from get_progress"

    @initialize(plan=st.lists(inputs_st, min_size=POSITIONS, max_size=POSITIONS))
    def draw_batch(self, plan: list[Input]) -> None:
        self.plan = plan

    @rule(
        start=st.integers(0, POSITIONS - 1),
        length=st.integers(1, POSITIONS),
        with_total=st.sampled_from([True] * 4 + [False]),
    )
    def send(self, start: int, length: int, with_total: bool) -> None:
        end = min(start + length, POSITIONS)
        self.call("plain", start, self.plan[start:end], POSITIONS if with_total else None)

    @rule()
    def send_past_the_total(self) -> None:
        self.call("plain", POSITIONS - 1, [self.plan[-1], self.plan[0]], POSITIONS)

    @precondition(lambda self: bool(self.calls))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        self.call(*data.draw(st.sampled_from(self.calls)))

    @rule(position=st.integers(0, POSITIONS - 1), fix=st.sampled_from(["new", "same image", "junk"]))
    def repair(self, position: int, fix: str) -> None:
        image = self.plan[position].image
        if fix == "junk":
            given = Input(None, text="r")
        elif fix == "same image" and image is not None:
            given = Input(image, "success", "r")
        else:
            given = Input(10 + position, "success", "r")
        self.call("repair", position, [given], POSITIONS)

    @rule(
        start=st.integers(0, POSITIONS - 1),
        length=st.integers(1, 3),
        status=st.sampled_from(["success", "failed"]),
        text=st.sampled_from(["x", "y"]),
    )
    def replace(self, start: int, length: int, status: str, text: str) -> None:
        rerun = [i if i.junk else Input(i.image, status, text) for i in self.plan[start : start + length]]
        images = [i.image for i in rerun if not i.junk]
        if len(images) != len(set(images)):
            # An image twice in one re-OCR call: the loader's one known disagreement with
            # the model, open (docs/architecture.md); pinned, strict, by
            # test_an_image_twice_in_one_reocr_call_ends_as_if_sent_in_two_calls.
            return
        self.call("replace", start, rerun, POSITIONS)

    @rule(position=st.integers(0, POSITIONS - 1))
    def replace_another_batchs_image(self, position: int) -> None:
        """Re-OCR of an image another batch owns: refused, never taken (issue 20, item 13)."""
        if FOREIGN not in self.model.foreign:
            save_batch(self.db, f"{self.ns}-other", [self.payload(Input(FOREIGN))])
            self.model.foreign.add(FOREIGN)
        self.call("replace", position, [Input(FOREIGN, "success", "x")], POSITIONS)

    # ------------------------------------------------------------------ everyone else

    def stored_at(self, position: int) -> int | None:
        """The image stored at ``position`` when the application may delete it (no duplicate names it)."""
        rows = self.model.images()
        image = next((img for p, img, *_ in rows if p == position), None)
        if image is None or any(img == image for _, img, _ in self.model.rejects()):
            return None
        return image

    @precondition(lambda self: self.model.declared is not None)
    @rule(position=st.integers(0, POSITIONS - 1), what=st.sampled_from(["flip", "ocr row", "chain"]))
    def application_writes_a_row(self, position: int, what: str) -> None:
        image = self.stored_at(position)
        if image is None:
            return
        next(STEPS)
        path = self.path(image)
        if what == "flip":
            self.db.execute(
                "UPDATE ocr_executions SET status = 'failed', error = 'marked failed by the application'"
                " WHERE image_path = %s",
                [path],
            )
            self.model.flip_status(position)
        elif what == "ocr row":
            self.db.execute("DELETE FROM ocr_executions WHERE image_path = %s", [path])
            self.model.delete_image(position, chain_kept=True)
        else:
            self.db.execute(
                "DELETE FROM chain_executions WHERE batch_id = %s AND position = %s",
                [self.batch_id, position],
            )
            self.model.delete_image(position)

    @precondition(lambda self: self.model.declared is not None)
    @rule(how=st.sampled_from(["counter", "complete_execution", "status"]))
    def application_writes_the_batch(self, how: str) -> None:
        next(STEPS)
        if how == "counter":
            self.db.execute(
                "UPDATE batch_executions SET completed_images = completed_images + 1 WHERE batch_id = %s",
                [self.batch_id],
            )
            return
        engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(self.dsn))
        with Session(engine) as session:
            batch = session.scalars(
                select(BatchExecution).where(BatchExecution.batch_id == self.batch_id)
            ).one()
            if how == "complete_execution":
                batch.complete_execution()
            else:  # the application's own complete_execution() (docs/application.md option (b))
                batch.status = OrmStatus.SUCCESS
            session.commit()
        engine.dispose()

    @precondition(lambda self: self.model.declared is not None)
    @rule()
    def delete(self) -> None:
        next(STEPS)
        delete_batch(self.db, self.batch_id)
        self.model.delete_batch()

    # ------------------------------------------------------------------ the comparison

    @invariant()
    def database_equals_model(self) -> None:
        if self.model.declared is None:
            assert self.db.execute(
                "SELECT count(*) FROM batch_executions WHERE batch_id = %s", [self.batch_id]
            ).fetchone() == (0,)
            return
        assert self.images() == self.model.images()
        assert self.rejects(resolved=False) == self.model.rejects()
        resolved = self.rejects(resolved=True)
        for position, _ in self.model.resolved:
            assert any(r[0] == position for r in resolved), f"no resolved reject at {position}"
        self.check_counts()

    def images(self) -> list[tuple[Any, ...]]:
        rows = self.db.execute(
            "SELECT c.position, o.image_path, o.status::text, o.error,"
            " (SELECT coalesce(array_agg(b.text ORDER BY b.position), '{}') FROM ocr_text_boxes b"
            "  WHERE b.ocr_execution_id = o.id), o.model_version"
            " FROM chain_executions c JOIN ocr_executions o ON o.chain_id = c.chain_id"
            " WHERE c.batch_id = %s ORDER BY c.position",
            [self.batch_id],
        ).fetchall()
        return [
            (p, self.image_of(path), status, error, list(boxes), mv)
            for p, path, status, error, boxes, mv in rows
        ]

    def rejects(self, *, resolved: bool) -> list[tuple[Any, ...]]:
        rows = self.db.execute(
            "SELECT position, image_path, reason FROM load_rejects"
            " WHERE batch_id = %s AND (resolved_at IS NOT NULL) = %s ORDER BY position, id",
            [self.batch_id, resolved],
        ).fetchall()
        return [
            (p, self.image_of(path), JUNK if reason.startswith("not valid JSON") else reason)
            for p, path, reason in rows
        ]

    def check_counts(self) -> None:
        completed, failed, rejected = self.model.counts()
        read = get_progress(self.db, self.batch_id)
        declared = self.model.declared
        assert declared is not None
        stored = self.db.execute(
            "SELECT completed_images, failed_images, status::text, totals_stale, total_images"
            " FROM batch_executions WHERE batch_id = %s",
            [self.batch_id],
        ).fetchone()
        assert stored is not None
        status = batch_status(declared, completed, failed, OrmStatus(stored[2])).value
        assert _figures(read) == (status, declared, completed, failed, rejected)
        if not stored[3]:
            assert (stored[0], stored[1], stored[2], stored[4]) == (completed, failed, status, declared)


def _figures(p: Any) -> tuple[Any, ...]:
    return (str(p.status), p.total_images, p.completed_images, p.failed_images, p.rejected_images)


def test_the_loader_holds_what_the_model_of_the_identity_rule_says_after_every_step(dsn: str) -> None:
    LoaderAndModel.dsn = dsn
    run_state_machine_as_test(
        LoaderAndModel,
        settings=settings(
            max_examples=int(os.environ.get("LOADER_MODEL_EXAMPLES", "12")),
            stateful_step_count=10,
            # CI explores the same sequences on every run, so a red run is this
            # change's, never a new draw's; LOADER_MODEL_EXAMPLES=500
            # LOADER_MODEL_RANDOM=1 explores further (docs/architecture.md).
            derandomize=not os.environ.get("LOADER_MODEL_RANDOM"),
            report_multiple_bugs=False,  # shrink the first failure only: CI time stays bounded
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    print(f"\nmodel: {next(STEPS)} steps compared with the database")


@settings(max_examples=100, deadline=None)
@given(plan=st.lists(inputs_st, min_size=1, max_size=POSITIONS), data=st.data())
def test_the_model_ends_in_one_state_for_every_cut_and_order(plan: list[Input], data: st.DataObject) -> None:
    """The model itself keeps the rule it stands for: however a batch is cut and in whatever
    order (and how often) the calls arrive, the same rows and counts (pure Python)."""
    whole = Model()
    whole.call("plain", 0, plan, len(plan))
    bounds = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(plan) - 1)), max_size=4))))
    spans = [(a, b) for a, b in itertools.pairwise([0, *bounds, len(plan)]) if a < b]
    calls = data.draw(st.permutations(spans + data.draw(st.lists(st.sampled_from(spans), max_size=2))))
    cut = Model()
    for start, end in calls:
        cut.call("plain", start, plan[start:end], len(plan))
    assert (cut.images(), cut.rejects(), cut.counts()) == (whole.images(), whole.rejects(), whole.counts())


@pytest.mark.xfail(strict=True, reason="open: an image twice in one re-OCR call (docs/architecture.md)")
def test_an_image_twice_in_one_reocr_call_ends_as_if_sent_in_two_calls(db: psycopg.Connection[Any]) -> None:
    """Two batches, each X stored at 0 of 3, then re-OCRed at 1 (text x) and 2 (text y):
    in one call, and in two. The same rows should follow (the model: X at 0 holds y, 1 and
    2 receive nothing); the loader makes 2 a duplicate reject of the one call instead."""

    def result(batch: str, text: str) -> dict[str, Any]:
        box = {"text": text, "confidence": 0.5, "bbox": [[0, 0], [1, 1]]}
        return {"image_path": f"/twice/{batch}/x.png", "model_version": text, "text_boxes": [box]}

    def rows(batch: str) -> tuple[Any, ...]:
        images = db.execute(
            "SELECT c.position, o.model_version FROM chain_executions c"
            " JOIN ocr_executions o USING (chain_id)"
            " WHERE c.batch_id = %s ORDER BY 1",
            [batch],
        ).fetchall()
        rejects = db.execute(
            "SELECT position FROM load_rejects WHERE batch_id = %s AND resolved_at IS NULL", [batch]
        ).fetchall()
        return images, rejects, _figures(get_progress(db, batch))[1:]

    for batch in ("one", "two"):
        save_batch(db, batch, [result(batch, "t")], total_images=3)
    save_batch(db, "one", [result("one", "x"), result("one", "y")], position_offset=1, replace=True)
    save_batch(db, "two", [result("two", "x")], position_offset=1, replace=True)
    save_batch(db, "two", [result("two", "y")], position_offset=2, replace=True)

    assert rows("two") == ([(0, "y")], [], (3, 1, 0, 0))
    assert rows("one") == rows("two")
