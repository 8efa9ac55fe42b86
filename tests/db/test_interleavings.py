"""Every interleaving of the actors that meet on a batch in production, run one by one.

Each test is a spec for tests/helpers/isolation.py (PostgreSQL's isolation tester, in
Python): sessions, each an ordered list of named steps; every permutation that keeps each
session's order is run, a step that waits for a lock is seen waiting and the permutation
goes on; after each one the invariants hold (counters equal a recount, or the batch reads
stale and get_progress equals it; no input sent is lost unless a delete took it; the last
report equals get_progress; a finished batch holds every position) and so does the spec's
own expectation. The count of permutations each spec runs is asserted, so a spec that
silently stops running its interleavings fails.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from helpers import orm_app
from helpers.isolation import (
    InvariantBroken,
    Outcome,
    Session,
    SessionContext,
    Spec,
    Step,
    StepFn,
    Summary,
    World,
    count_interleavings,
    run_spec,
)
from helpers.oldapp import OldApp, Shape, old_images
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session as OrmSession

from loader import LoadReport, delete_batch, get_progress, queries, register_batch, save_batch
from loader.cli import cli
from loader.lifecycle.delete import Deleted, iter_delete_finished
from loader.orm import BatchExecution
from loader.schema.adopt import adopt
from loader.testing import TemplateDatabases

# Every spec's summary, so the module's last test can say how many permutations ran.
RUN: dict[str, Summary] = {}


@pytest.fixture(scope="module")
def dsn(templates: TemplateDatabases) -> Iterator[str]:
    """One database for the module: every permutation works in a namespace of its own (World.ns),
    and a database costs a checkpoint to create (seconds on a busy server)."""
    url = templates.create()
    yield url
    templates.drop(url)


@pytest.fixture(scope="module", autouse=True)
def _count_permutations() -> Iterator[None]:
    """Say how many permutations the module ran (``pytest -s`` shows it)."""
    yield
    ran = sum(s.run for s in RUN.values())
    skipped = sum(s.invalid + s.skipped for s in RUN.values())
    print(f"\ninterleavings: {ran} permutations run in {len(RUN)} specs ({skipped} invalid or skipped)")


def _run(spec: Spec, dsn: str) -> Summary:
    summary = run_spec(spec, dsn)
    RUN[spec.name] = summary
    return summary


# --------------------------------------------------------------------------- steps


def _box(n: int, text: str) -> dict[str, Any]:
    return {"text": f"{text} {n}", "confidence": 0.5, "bbox": [[0, 0], [n, 1]]}


def good(world: World, n: int, text: str = "t") -> dict[str, Any]:
    path = world.path(n)
    return {"image_path": path, "public_path": f"{path}.pub", "text_boxes": [_box(n, text)]}


Item = Callable[[World], Any]


def item(n: int, text: str = "t") -> Item:
    return lambda world: good(world, n, text)


def failed(n: int) -> Item:
    return lambda world: {"image_path": world.path(n), "status": "failed", "error": "engine crashed"}


def junk() -> Item:
    return lambda world: b"not json"


def saving(
    world: World,
    conn: Any,
    key: str,
    items: Sequence[Item],
    *,
    offset: int = 0,
    total: int | None = None,
    mode: str = "plain",
) -> LoadReport:
    """A save_batch call; the positions of a committed plain or replace call are recorded as sent."""
    batch_id = world.batch(key)
    report = save_batch(
        conn,
        batch_id,
        [make(world) for make in items],
        position_offset=offset,
        total_images=total,
        repair=mode == "repair",
        replace=mode == "replace",
    )
    if mode != "repair":
        world.record_sent(batch_id, range(offset, offset + len(items)))
    return report


def save(name: str, key: str, items: Sequence[Item], **kw: Any) -> Step:
    return Step(name, lambda ctx: saving(ctx.world, ctx.conn, key, items, **kw))


Params = Callable[[World], dict[str, Any]]


def sql_step(name: str, *statements: str, params: Params | None = None) -> Step:
    """SQL the application would run, on the session's connection (inside its transaction)."""

    def run(ctx: SessionContext) -> Any:
        for statement in statements:
            cur = ctx.conn.execute(statement, params(ctx.world) if params else None)
        return cur.fetchall() if cur.description else cur.rowcount

    return Step(name, run)


BEHIND_THE_LOADERS_BACK = "SELECT set_config('loader.keeping_totals', 'on', true)"


def commit(name: str) -> Step:
    return Step(name, lambda ctx: ctx.conn.commit())


def rollback(name: str) -> Step:
    return Step(name, lambda ctx: ctx.conn.rollback(), writes=False)


def hold_path(name: str, n: int) -> Step:
    """Insert, uncommitted, an OCR row for image ``n`` in a batch of its own: a merge storing
    that image waits for this transaction after its snapshot (as a concurrent writer makes it)."""

    def run(ctx: SessionContext) -> None:
        w = ctx.world
        holder, chain = f"{w.ns}-holder", f"{w.ns}-holder-chain"
        ctx.conn.execute("INSERT INTO batch_executions (batch_id, total_images) VALUES (%s, 1)", [holder])
        ctx.conn.execute("INSERT INTO chain_executions (chain_id, batch_id) VALUES (%s, %s)", [chain, holder])
        ctx.conn.execute(
            "INSERT INTO ocr_executions (chain_id, image_path, status) VALUES (%s, %s, 'success')",
            [chain, w.path(n)],
        )

    return Step(name, run, writes=False)  # rolled back: it never changes a batch


def _setup_saved(key: str, items: Sequence[Item], total: int) -> Callable[[World], None]:
    def setup(world: World) -> None:
        with psycopg.connect(world.dsn) as conn:
            register_batch(conn, world.batch(key), total)
            saving(world, conn, key, items, total=total)

    return setup


# --------------------------------------------------------------------------- the tester itself

LOCK = "SELECT pg_advisory_xact_lock(20)"


def _contenders() -> tuple[Session, Session]:
    return (
        Session("s1", (sql_step("s1_lock", LOCK), commit("s1_commit"))),
        Session("s2", (sql_step("s2_lock", LOCK), commit("s2_commit"))),
    )


def test_the_tester_sees_a_step_wait_for_an_advisory_lock_and_skips_what_cannot_end(dsn: str) -> None:
    summary = _run(Spec("selftest", _contenders()), dsn)
    assert count_interleavings(_contenders()) == 6
    # Valid: the two without overlap, and the two where the second lock waits for the first
    # commit. Invalid: a session waits while the holder's commit comes after its own.
    assert (summary.run, summary.invalid, summary.skipped) == (4, 2, 0)
    waited = {o.permutation: o for o in summary.outcomes if not o.invalid}
    overlap = waited[("s1_lock", "s2_lock", "s1_commit", "s2_commit")]
    assert "step s2_lock: <waiting ...>" in overlap.transcript
    assert overlap.completed == ["s1_lock", "s1_commit", "s2_lock", "s2_commit"]
    apart = waited[("s1_lock", "s1_commit", "s2_lock", "s2_commit")]
    assert not any("waiting" in line for line in apart.transcript)
    invalid = [o.permutation for o in summary.outcomes if o.invalid]
    assert sorted(invalid) == [("s1_lock", "s2_lock", "s2_commit"), ("s2_lock", "s1_lock", "s1_commit")]


def test_the_tester_reports_counters_written_behind_the_loaders_back(dsn: str) -> None:
    forged = Session(
        "app",
        (
            save("a_save", "b", [item(0), item(1)], total=2),
            sql_step(
                "a_forge",
                BEHIND_THE_LOADERS_BACK,
                "UPDATE batch_executions SET completed_images = 1 WHERE batch_id = %(b)s",
                params=lambda w: {"b": w.batch("b")},
            ),
            commit("a_commit"),
        ),
    )
    with pytest.raises(InvariantBroken, match=r"stored counters \(1, 0, 'SUCCESS'\) != recount"):
        run_spec(Spec("forge", (forged,)), dsn)


def test_the_tester_reports_an_input_lost_and_a_spec_expectation_broken(dsn: str) -> None:
    hidden = Session(
        "app",
        (
            save("a_save", "b", [item(0), item(1)], total=2),
            sql_step(
                "a_hide",
                BEHIND_THE_LOADERS_BACK,
                "DELETE FROM chain_executions WHERE batch_id = %(b)s AND position = 1",
                "UPDATE batch_executions SET completed_images = 1, status = 'STARTED' WHERE batch_id = %(b)s",
                params=lambda w: {"b": w.batch("b")},
            ),
            commit("a_commit"),
        ),
    )
    with pytest.raises(InvariantBroken, match=r"positions \[1\] were sent and are lost"):
        run_spec(Spec("lose", (hidden,)), dsn)

    def expect_three(world: World, outcome: Outcome) -> None:
        assert outcome.results["a_save"].stored == 3, "expected 3 stored"

    plain = Session("app", (save("a_save", "b", [item(0), item(1)], total=2),))
    with pytest.raises(InvariantBroken, match="expected 3 stored"):
        run_spec(Spec("expect", (plain,), check=expect_three), dsn)


# --------------------------------------------------------------------------- merge x application


def _app_write(kind: str) -> Step:
    """One write of the application's, committed in one step, on the batch "b"."""
    b: Params = lambda w: {"b": w.batch("b"), "path": w.path(0)}  # noqa: E731
    if kind == "status":
        return sql_step(
            "a_write",
            "UPDATE ocr_executions SET status = 'failed', error = 'marked failed by the application'"
            " WHERE image_path = %(path)s",
            "COMMIT",
            params=b,
        )
    if kind == "chain delete":

        def delete_chain(ctx: SessionContext) -> int:
            batch_id = ctx.world.batch("b")
            deleted = ctx.conn.execute(
                "DELETE FROM chain_executions WHERE batch_id = %s AND position = 0", [batch_id]
            ).rowcount
            ctx.conn.commit()
            ctx.world.record_freed(batch_id, [0])
            return deleted

        return Step("a_write", delete_chain)
    if kind == "counter":
        return sql_step(
            "a_write",
            "UPDATE batch_executions SET completed_images = completed_images + 1 WHERE batch_id = %(b)s",
            "COMMIT",
            params=b,
        )
    return Step("a_write", _complete_execution(own=kind == "the application's complete_execution()"))


def _complete_execution(*, own: bool) -> StepFn:
    """BatchExecution.complete_execution() through SQLAlchemy: loader.orm's, or the
    application's own (docs/application.md option (b) keeps it: it sets SUCCESS)."""

    def run(ctx: SessionContext) -> str:
        engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(ctx.dsn))
        try:
            with OrmSession(engine) as session:
                model = orm_app.BatchExecution if own else BatchExecution
                batch: Any = session.scalars(
                    select(model).where(model.batch_id == ctx.world.batch("b"))
                ).one()
                session.refresh(batch)
                if own:
                    batch.status = orm_app.ProcessStatus.SUCCESS  # what its complete_execution() does
                else:
                    batch.complete_execution()
                session.commit()
                return str(batch.status)
        finally:
            engine.dispose()

    return run


APP_WRITES = [
    "status",
    "chain delete",
    "counter",
    "loader.orm complete_execution()",
    "the application's complete_execution()",
]


@pytest.mark.parametrize("write", APP_WRITES)
def test_an_application_write_during_a_merge_is_never_forgotten(dsn: str, write: str) -> None:
    """The merge of positions 2-3 (of 5) waits, after its snapshot, for an uncommitted row of
    image 3 while the application writes to the batch: whatever the order, the counters and
    status end equal to a recount, or the batch reads stale and get_progress equals it
    (issue 20, items 3 and 12)."""
    sessions = (
        Session("holder", (hold_path("h_hold", 3), rollback("h_release"))),
        Session("loader", (save("l_save", "b", [item(2), item(3)], offset=2, total=5),)),
        Session("app", (_app_write(write),)),
    )
    spec = Spec(
        f"merge-x-{write.split(maxsplit=1)[0]}",
        sessions,
        setup=_setup_saved("b", [item(0), item(1)], 5),
    )
    summary = _run(spec, dsn)
    assert summary.run == count_interleavings(sessions) == 12
    # The write was sent while the merge waited (it may itself wait, if the loader makes it).
    waited = [o for o in summary.outcomes if "step l_save: <waiting ...>" in o.transcript]
    order = [o.permutation.index for o in waited]
    assert any(at("l_save") < at("a_write") < at("h_release") for at in order)


# --------------------------------------------------------------------------- redelivery x delete


def _deleting(name: str) -> Step:
    """delete_batch's statement, by hand, after batch_lock: the operator's transaction held open."""

    def run(ctx: SessionContext) -> Any:
        row = ctx.conn.execute(queries.get("delete_batch"), {"batch_id": ctx.world.batch("b")}).fetchone()
        ctx.world.notes["deleted"] = bool(row and row[0])
        return row

    return Step(name, run)


def _committing_delete(name: str) -> Step:
    def run(ctx: SessionContext) -> None:
        ctx.conn.commit()
        if ctx.world.notes.get("deleted"):
            ctx.world.record_freed(ctx.world.batch("b"))

    return Step(name, run)


def test_a_redelivery_waiting_for_a_delete_stores_its_inputs_again(dsn: str) -> None:
    """Issue 20, item 1: a call redelivered while the batch is being deleted must not be taken
    for a replay once the delete committed (its ledger went with the batch)."""
    call = [item(0), item(1)]
    sessions = (
        Session(
            "operator",
            (
                sql_step("d_lock", queries.get("batch_lock"), params=lambda w: {"batch_id": w.batch("b")}),
                _deleting("d_delete"),
                _committing_delete("d_commit"),
            ),
        ),
        Session("celery", (save("r_redeliver", "b", call, total=2),)),
    )

    def expect(world: World, outcome: Outcome) -> None:
        report = outcome.results["r_redeliver"]
        if outcome.before("d_commit", "r_redeliver"):
            assert (report.replayed, report.stored) == (False, 2), report

    summary = _run(Spec("redeliver-x-delete", sessions, setup=_setup_saved("b", call, 2), check=expect), dsn)
    assert summary.run == count_interleavings(sessions) == 4


# --------------------------------------------------------------------------- retention x re-OCR


def _retention_setup(world: World) -> None:
    """Two finished batches (b1 older than b2), and a retention cut just after both."""
    with psycopg.connect(world.dsn) as conn:
        conn.execute("DELETE FROM batch_executions")  # earlier permutations' batches: retention is global
        conn.commit()
        saving(world, conn, "b1", [item(0), item(1)], total=2)
        saving(world, conn, "b2", [item(2), item(3)], total=2)
        world.notes["cut"] = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        conn.commit()


def _retention_first(ctx: SessionContext) -> Any:
    """Retention's first batch: it has listed its page, and judged the oldest."""
    batches = iter_delete_finished(ctx.conn, ctx.world.notes["cut"])
    ctx.world.notes["retention"] = batches
    return _freed(ctx.world, [next(batches)])


def _retention_rest(ctx: SessionContext) -> Any:
    return _freed(ctx.world, list(ctx.world.notes["retention"]))


def _freed(world: World, outcomes: list[Any]) -> list[str]:
    deleted = [d for d in outcomes if isinstance(d, Deleted)]  # not the batches it skipped
    for d in deleted:
        world.record_freed(d.batch_id)
    return [d.batch_id for d in deleted]


def _box_texts(world: World, key: str) -> list[str]:
    rows = world.admin.execute(
        "SELECT b.text FROM chain_executions c JOIN ocr_executions o USING (chain_id)"
        " JOIN ocr_text_boxes b ON b.ocr_execution_id = o.id WHERE c.batch_id = %s ORDER BY c.position",
        [world.batch(key)],
    ).fetchall()
    return [r[0] for r in rows]


def test_retention_never_deletes_a_batch_re_ocrd_after_its_cut(dsn: str) -> None:
    """Issue 20, item 2: a re-OCR whose results stay successes still changes its batch; a
    retention pass that listed it before must not delete it afterwards."""
    sessions = (
        Session("retention", (Step("t_first", _retention_first), Step("t_rest", _retention_rest))),
        Session(
            "reocr", (save("o_replace", "b2", [item(2, "new"), item(3, "new")], total=2, mode="replace"),)
        ),
    )

    def expect(world: World, outcome: Outcome) -> None:
        assert _box_texts(world, "b2") == ["new 2", "new 3"], "the re-OCR'd batch is gone"
        if not outcome.before("t_rest", "o_replace"):
            assert outcome.results["t_rest"] == [], "retention deleted a batch re-OCR'd after its cut"

    summary = _run(Spec("retention-x-reocr", sessions, setup=_retention_setup, check=expect), dsn)
    assert summary.run == count_interleavings(sessions) == 3


# --------------------------------------------------------------------------- repair x replace


def test_repairs_and_re_ocr_of_one_batch_end_alike_in_every_order(dsn: str) -> None:
    """A repair of a reject and of a stored failure, and re-OCR of two images, in every order:
    the same rows and counts."""
    sessions = (
        Session(
            "repair",
            (
                save("p_fix_reject", "b", [item(10)], offset=1, total=3, mode="repair"),
                save("p_fix_failure", "b", [item(2, "r")], offset=2, total=3, mode="repair"),
            ),
        ),
        Session(
            "reocr",
            (
                save("q_reocr0", "b", [item(0, "q")], offset=0, total=3, mode="replace"),
                save("q_reocr2", "b", [item(2, "r")], offset=2, total=3, mode="replace"),
            ),
        ),
    )

    def expect(world: World, outcome: Outcome) -> None:
        batch_id = world.batch("b")
        images = world.admin.execute(
            "SELECT c.position, o.image_path, o.status::text FROM chain_executions c JOIN ocr_executions o"
            " USING (chain_id) WHERE c.batch_id = %s ORDER BY c.position",
            [batch_id],
        ).fetchall()
        assert images == [
            (0, world.path(0), "success"),
            (1, world.path(10), "success"),
            (2, world.path(2), "success"),
        ]
        assert _box_texts(world, "b") == ["q 0", "t 10", "r 2"]
        rejects = world.admin.execute(
            "SELECT position, resolved_at IS NOT NULL FROM load_rejects WHERE batch_id = %s", [batch_id]
        ).fetchall()
        assert rejects == [(1, True)]
        progress = get_progress(world.admin, batch_id)
        assert (progress.completed_images, progress.failed_images, str(progress.status)) == (3, 0, "SUCCESS")

    spec = Spec(
        "repair-x-replace",
        sessions,
        setup=_setup_saved("b", [item(0), junk(), failed(2)], 3),
        check=expect,
    )
    summary = _run(spec, dsn)
    assert summary.run == count_interleavings(sessions) == 6


# --------------------------------------------------------------------------- loader load x delete

LINES = 8
CHUNK = 2


def test_a_load_whose_batch_is_deleted_never_ends_in_a_false_success(dsn: str, tmp_path: Path) -> None:
    """Issue 20, item 10: `loader load` (the CLI, in-process) in chunks of 2 while an operator
    deletes the batch; the second chunk waits for an uncommitted row of image 3, so the
    delete can land between two chunks. A load that says it succeeded holds every line; one
    whose batch vanished under it stops, saying so."""

    def setup(world: World) -> None:
        lines = [json.dumps(good(world, n)) for n in range(LINES)]
        world.notes["file"] = tmp_path / f"{world.ns}.jsonl"
        world.notes["file"].write_text("\n".join(lines) + "\n")

    def load(ctx: SessionContext) -> Any:
        batch_id = ctx.world.batch("b")
        args = ["load", str(ctx.world.notes["file"]), "-b", batch_id, "--chunk-size", str(CHUNK)]
        result = CliRunner().invoke(cli, [*args, "--dsn", ctx.dsn])
        if result.exit_code == 0:
            ctx.world.record_sent(batch_id, range(LINES))
        return result

    def delete(ctx: SessionContext) -> Any:
        deleted = delete_batch(ctx.conn, ctx.world.batch("b"))
        ctx.world.record_freed(deleted.batch_id)
        return deleted

    def expect(world: World, outcome: Outcome) -> None:
        result = outcome.results["l_load"]
        order = outcome.permutation
        # Which of two waiting steps the tester sees finish first is a matter of
        # polling; what the delete found tells when it ran.
        overlapped = outcome.error("d_delete") is None and order.index("l_load") < order.index("d_delete")
        if not overlapped:
            assert result.exit_code == 0, result.output
        elif result.exit_code == 0:
            deleted = outcome.results["d_delete"]
            assert deleted.images == LINES, (
                f"the load ended well though its batch was deleted: {result.output}"
            )
        else:
            assert "was deleted while loading" in result.output and world.batch("b") in result.output

    sessions = (
        Session("holder", (hold_path("h_hold", 3), rollback("h_release"))),
        Session("cli", (Step("l_load", load),), app_names=("loader-cli",)),
        Session("operator", (Step("d_delete", delete),)),
    )
    summary = _run(Spec("load-x-delete", sessions, setup=setup, check=expect), dsn)
    assert summary.run == count_interleavings(sessions) == 12


# --------------------------------------------------------------------------- adopt x live writer


def test_adopt_while_the_application_writes_leaves_every_position_fillable(
    old_app: Callable[[Shape], OldApp],
) -> None:
    """Issue 20, item 5: the application's old save path writes a chain (its OCR row never
    follows: the worker crashed) before, while or after `loader schema adopt` converts its
    tables; the whole batch loaded afterwards ends with every input stored at its position."""
    images = old_images("old", 3)
    new = {"image_path": "/new/3.png", "public_path": "/new/pub/3.png", "text_boxes": []}

    def database() -> tuple[str, Callable[[], None]]:
        app = old_app(Shape())
        app.save_batch("old", images, total_images=4)
        return app.dsn, lambda: None  # dropped with the test's other databases

    def load_all(ctx: SessionContext) -> LoadReport:
        replay = [
            {
                "image_path": i.image_path,
                "public_path": i.public_path,
                "status": i.status,
                "error": None if i.status == "success" else "OCR failed",
                "text_boxes": i.boxes,
            }
            for i in images
        ]
        ctx.world.batches.add("old")
        report = save_batch(ctx.conn, "old", [*replay, new], total_images=4)
        ctx.world.record_sent("old", range(4))
        return report

    def expect(world: World, outcome: Outcome) -> None:
        held = world.admin.execute(
            "SELECT c.position, o.image_path FROM chain_executions c JOIN ocr_executions o USING (chain_id)"
            " WHERE c.batch_id = 'old' AND c.position IS NOT NULL ORDER BY c.position"
        ).fetchall()
        assert held == [
            (n, path) for n, path in enumerate([*(i.image_path for i in images), new["image_path"]])
        ]

    in_flight = (
        # As the application's models write it (their Python defaults spelled out).
        "INSERT INTO chain_executions (chain_id, batch_id, status, total_tasks, completed_tasks,"
        " failed_tasks, created_at, updated_at)"
        " VALUES (%(c)s, 'old', 'STARTED', 1, 0, 0, localtimestamp, localtimestamp)"
    )
    sessions = (
        Session("adopt", (Step("x_adopt", lambda ctx: adopt(ctx.dsn)),)),
        Session(
            "app",
            (sql_step("w_chain", in_flight, params=lambda w: {"c": f"{w.ns}-crashed"}), commit("w_commit")),
        ),
        Session("loader", (Step("l_load_all", load_all),)),
    )
    # The batch is loaded once adopt and the writer are done: 3 of the 4 interleavings' orders.
    orders = (
        ("x_adopt", "w_chain", "w_commit", "l_load_all"),
        ("w_chain", "x_adopt", "w_commit", "l_load_all"),
        ("w_chain", "w_commit", "x_adopt", "l_load_all"),
    )
    spec = Spec("adopt-x-writer", sessions, check=expect, permutations=orders, database=database)
    summary = _run(spec, "")
    assert summary.run == 3
    assert any("step x_adopt: <waiting ...>" in o.transcript for o in summary.outcomes)
