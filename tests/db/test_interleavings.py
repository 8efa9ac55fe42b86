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
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers.isolation import (
    InvariantBroken,
    Outcome,
    Session,
    SessionContext,
    Spec,
    Step,
    Summary,
    World,
    count_interleavings,
    run_spec,
)
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session as OrmSession

from loader import LoadReport, delete_batch, register_batch, save_batch
from loader import queries
from loader.lifecycle import delete_finished
from loader.orm import BatchExecution

# Every spec's summary, so the module's last test can say how many permutations ran.
RUN: dict[str, Summary] = {}


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
    return Step(name, lambda ctx: ctx.conn.rollback())


def hold_path(name: str, n: int) -> Step:
    """Insert, uncommitted, an OCR row for image ``n`` in a batch of its own: a merge storing
    that image waits for this transaction after its snapshot (as a concurrent writer makes it)."""

    def run(ctx: SessionContext) -> None:
        w = ctx.world
        holder, chain = f"{w.ns}-holder", f"{w.ns}-holder-chain"
        ctx.conn.execute(
            "INSERT INTO batch_executions (batch_id, total_images) VALUES (%s, 1)", [holder]
        )
        ctx.conn.execute("INSERT INTO chain_executions (chain_id, batch_id) VALUES (%s, %s)", [chain, holder])
        ctx.conn.execute(
            "INSERT INTO ocr_executions (chain_id, image_path, status) VALUES (%s, %s, 'success')",
            [chain, w.path(n)],
        )

    return Step(name, run)


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
    summary = run_spec(Spec("selftest", _contenders()), dsn)
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
