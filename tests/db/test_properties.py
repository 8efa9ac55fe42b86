"""Property-based tests of the identity rule, against a real database.

A batch is a list of inputs, each at its position: successes, upstream
failures, invalid results, lines that are not JSON or have no path, and
repeats of the same image at any distance. However that list is cut into
calls, in whatever order the calls arrive, however often each is sent, as
lines or as dicts, the batch ends with the counts of a single call holding
all of it (and, when the calls arrive in order, exactly its rows); and with
re-OCR and repair calls mixed in, after every call the stored totals equal a
recount of the rows and, once every position arrived, completed + failed
equals the batch's total.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import psycopg
from helpers.checks import recount, stored_totals
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader import save_batch

# Examples share the test's database: each gets its own batch ids and paths.
_example = itertools.count()

VARIANTS = ("good", "good", "upstream", "invalid")


def _input(ns: str, item: tuple[str, int], as_lines: bool, variant: str | None = None) -> Any:
    """The input an item stands for; the same item always gives the same bytes (so a repeated
    image is the same input wherever it stands)."""
    kind, index = item
    if kind == "junk":
        return [b"not json", b'{"image_path": "/trunc', b"[1, 2]"][index % 3]
    if kind == "nopath":
        data: dict[str, Any] = [{"text_boxes": []}, {"image_path": None}, {"image_path": "  "}][index % 3]
    else:
        path = f"/prop/{ns}/{index}.jpg"
        variant = variant or VARIANTS[index % len(VARIANTS)]
        if variant == "good":
            box = {"text": f"text {index}", "confidence": 0.5, "bbox": [[0, 0], [1, 1]]}
            data = {"image_path": path, "public_path": f"{path}.pub", "text_boxes": [box, box]}
        elif variant == "upstream":
            data = {"image_path": path, "status": "failed", "error": "engine crashed"}
        else:
            data = {"image_path": path, "text_boxes": [{"text": "x", "confidence": 1.7, "bbox": [[0, 0]]}]}
    return json.dumps(data).encode() if as_lines else data


def _rows(db: psycopg.Connection[Any], batch_id: str) -> tuple[list[Any], list[Any]]:
    images = db.execute(
        "SELECT c.position, o.image_path, o.status::text, o.error FROM chain_executions c"
        " JOIN ocr_executions o USING (chain_id) WHERE c.batch_id = %s ORDER BY c.position",
        [batch_id],
    ).fetchall()
    rejects = db.execute(
        "SELECT position, reason, raw FROM load_rejects WHERE batch_id = %s AND resolved_at IS NULL"
        " ORDER BY position",
        [batch_id],
    ).fetchall()
    return images, rejects


def _strip(rows: list[Any], ns: str) -> list[tuple[str, ...]]:
    """Rows with the namespaces of the two batches' paths taken out."""
    return [tuple(str(v).replace(f"{ns}w", "").replace(f"{ns}c", "") for v in r) for r in rows]


def _assert_exact(db: psycopg.Connection[Any], batch_id: str) -> tuple[int, int, int, str]:
    totals = stored_totals(db, batch_id)
    assert totals[1:3] == recount(db, batch_id)
    assert totals[1] + totals[2] <= totals[0]
    return totals


items_st = st.lists(
    st.one_of(
        st.tuples(st.just("image"), st.integers(0, 6)),
        st.tuples(st.just("junk"), st.integers(0, 2)),
        st.tuples(st.just("nopath"), st.integers(0, 2)),
    ),
    min_size=1,
    max_size=14,
)


@st.composite
def cuts_st(draw: st.DrawFn) -> tuple[list[tuple[str, int]], list[tuple[int, int, bool]]]:
    """A batch, and calls covering it: (start, end, as_lines), in any order, some sent twice."""
    items = draw(items_st)
    bounds = sorted(set(draw(st.lists(st.integers(1, len(items) - 1), max_size=5)) if len(items) > 1 else []))
    spans = list(itertools.pairwise([0, *bounds, len(items)]))
    calls = [(a, b, draw(st.booleans())) for a, b in spans]
    calls += draw(st.lists(st.sampled_from(calls), max_size=3))  # replays, possibly as the other form
    calls = draw(st.permutations(calls))
    return items, calls


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cuts_st())
def test_any_cut_in_any_order_ends_with_the_counts_of_one_call(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any], case: Any
) -> None:
    items, calls = case
    ns = f"c{next(_example)}"
    whole, cut = f"{ns}-whole", f"{ns}-cut"
    save_batch(conn, whole, [_input(f"{ns}w", item, True) for item in items])
    for start, end, as_lines in calls:
        chunk = [_input(f"{ns}c", item, as_lines) for item in items[start:end]]
        save_batch(conn, cut, chunk, position_offset=start, total_images=len(items))
        _assert_exact(db, cut)
    reference, got = _assert_exact(db, whole), _assert_exact(db, cut)
    assert got == reference
    assert got[0] == got[1] + got[2] == len(items)
    ordered = [c[0] for c in calls] == sorted(c[0] for c in calls)
    if ordered:  # the same rows, position by position (paths differ only by namespace)
        assert [_strip(r, ns) for r in _rows(db, cut)] == [_strip(r, ns) for r in _rows(db, whole)]


@st.composite
def life_st(draw: st.DrawFn) -> tuple[list[tuple[str, int]], list[tuple[str, Any]]]:
    """A batch, and a life: chunks of it, re-OCR calls of some of its images, repairs of positions."""
    items = draw(items_st)
    ops: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["send", "send", "replace", "repair"]))
        start = draw(st.integers(0, len(items) - 1))
        end = draw(st.integers(start + 1, len(items)))
        if kind == "send":
            ops.append(("send", (start, end, draw(st.booleans()))))
        elif kind == "replace":
            ops.append(("replace", (start, end, draw(st.sampled_from(["good", "upstream", "invalid"])))))
        else:
            ops.append(("repair", (start, draw(st.sampled_from(["good", "junk"])))))
    return items, ops


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=life_st())
def test_cuts_replays_repairs_and_reocr_keep_totals_equal_to_a_recount(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any], case: Any
) -> None:
    items, ops = case
    ns = f"l{next(_example)}"
    batch = f"{ns}-life"
    total = len(items)
    for op, args in ops:
        if op == "send":
            start, end, as_lines = args
            chunk = [_input(ns, item, as_lines) for item in items[start:end]]
            save_batch(conn, batch, chunk, position_offset=start, total_images=total)
        elif op == "replace":
            start, end, variant = args
            # Each input at its own position: the images rerun, the rest as sent before.
            rerun = [
                _input(ns, item, False, variant if item[0] == "image" else None) for item in items[start:end]
            ]
            save_batch(conn, batch, rerun, position_offset=start, total_images=total, replace=True)
        else:
            position, fix = args
            line = b"still junk" if fix == "junk" else _input(ns, ("image", 100 + position), True, "good")
            save_batch(conn, batch, [line], position_offset=position, total_images=total, repair=True)
        _assert_exact(db, batch)
    save_batch(conn, batch, [_input(ns, item, True) for item in items], total_images=total)  # all arrived
    total_images, completed, failed, status = _assert_exact(db, batch)
    assert completed + failed == total_images == total
    assert status == ("FAILURE" if completed == 0 else "SUCCESS")
