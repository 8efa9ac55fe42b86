"""Property-based tests: random sequences of chunked calls, replays, and good,
failed, invalid, unparseable and path-less inputs, by two batches competing for
the same paths, against a real database and a model of what must happen.

After every call the loader's report matches the model, and the batch's
stored totals (kept from each call's changes, never recounted) equal a recount
of its rows; after every sequence each batch's completed + failed equals the
distinct inputs it was sent (images by path, open rejects by position and raw
bytes: a reject of an image the batch stored before is recorded resolved);
and a replayed call changes nothing at all.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import psycopg
from checks import recount, snapshot, stored_totals
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader import save_batch

# Examples share the test's database: each gets its own batch ids and paths.
_example = itertools.count()

Item = tuple[str, int, str]  # (kind, index, variant)


@dataclass(frozen=True)
class Save:
    batch: str
    items: list[Item]
    offset: int
    as_lines: bool


@dataclass(frozen=True)
class Replay:
    which: int


def _input(ns: str, item: Item, as_lines: bool) -> Any:
    """The input an item stands for; the same item always gives the same raw bytes."""
    kind, index, variant = item
    if kind == "junk":
        return [b"not json", b'{"image_path": "/trunc', b"[1, 2]", b""][index]
    if kind == "nopath":
        data: dict[str, Any] = [{"text_boxes": []}, {"image_path": None}, {"image_path": "  "}][index]
    else:
        path = f"/prop/{ns}/{index}.jpg"
        if variant == "good":
            box = {"text": f"text {index}", "confidence": 0.5, "bbox": [[0, 0], [1, 1]]}
            data = {"image_path": path, "public_path": f"{path}.pub", "text_boxes": [box, box]}
        elif variant == "upstream":
            data = {"image_path": path, "status": "failed", "error": "engine crashed"}
        else:
            data = {"image_path": path, "text_boxes": [{"text": "x", "confidence": 1.7, "bbox": [[0, 0]]}]}
    return json.dumps(data).encode() if as_lines else data


def _raw(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value, ensure_ascii=False).encode()


@dataclass
class Model:
    """What the database must hold, kept by the rules the loader promises."""

    owner: dict[str, str] = field(default_factory=dict)  # path -> batch that stored it
    succeeded: dict[str, bool] = field(default_factory=dict)  # path -> stored as success
    rejects: set[tuple[str, int, bytes]] = field(default_factory=set)
    # Rejects recorded already resolved: their image was stored by an earlier call.
    resolved: set[tuple[str, int, bytes]] = field(default_factory=set)

    def call(self, ns: str, batch: str, items: list[Item], offset: int, as_lines: bool) -> tuple[int, ...]:
        stored = failed = rejected = unchanged = 0
        seen: set[str] = set()
        stored_here: set[str] = set()

        def reject(pos: int, value: Any, path: str | None = None) -> None:
            nonlocal rejected, unchanged
            key = (batch, pos, _raw(value))
            if key in self.rejects:
                unchanged += 1
            else:
                self.rejects.add(key)
                rejected += 1
                if path is not None and self.owner.get(path) == batch and path not in stored_here:
                    self.resolved.add(key)

        for n, item in enumerate(items):
            pos, value = offset + n, _input(ns, item, as_lines)
            kind, index, variant = item
            if kind != "image":
                reject(pos, value)
                continue
            path = f"/prop/{ns}/{index}.jpg"
            if path in seen:  # duplicate within the call
                reject(pos, value, path)
                continue
            seen.add(path)
            if self.owner.get(path) == batch:
                if variant == "good" and not self.succeeded[path]:
                    self.succeeded[path] = True  # a later success replaces a failure
                    stored += 1
                else:
                    unchanged += 1
            elif path in self.owner:  # another batch's image
                reject(pos, value)
            else:
                self.owner[path] = batch
                stored_here.add(path)
                self.succeeded[path] = variant == "good"
                if variant == "good":
                    stored += 1
                else:
                    failed += 1
        return stored, failed, rejected, unchanged

    def totals(self, batch: str) -> tuple[int, int]:
        mine = [p for p, b in self.owner.items() if b == batch]
        completed = sum(1 for p in mine if self.succeeded[p])
        rejects = sum(1 for key in self.rejects - self.resolved if key[0] == batch)
        return completed, len(mine) - completed + rejects


items_st = st.lists(
    st.one_of(
        st.tuples(st.just("image"), st.integers(0, 7), st.sampled_from(["good", "upstream", "invalid"])),
        st.tuples(st.just("junk"), st.integers(0, 3), st.just("")),
        st.tuples(st.just("nopath"), st.integers(0, 2), st.just("")),
    ),
    max_size=12,
)
ops_st = st.lists(
    st.one_of(
        st.builds(Save, st.sampled_from(["A", "B"]), items_st, st.integers(0, 16), st.booleans()),
        st.builds(Replay, st.integers(0, 20)),
    ),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=ops_st)
def test_random_call_sequences_keep_every_invariant(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any], ops: list[Any]
) -> None:
    ns = f"e{next(_example)}"
    model = Model()
    done: list[Save] = []
    for op in ops:
        if isinstance(op, Replay):
            if not done:
                continue
            call = done[op.which % len(done)]
            before = snapshot(db)
        else:
            call, before = op, None
        batch_id = f"{ns}-{call.batch}"
        inputs = [_input(ns, item, call.as_lines) for item in call.items]

        report = save_batch(conn, batch_id, inputs, position_offset=call.offset)

        expected = model.call(ns, batch_id, call.items, call.offset, call.as_lines)
        assert (report.stored, report.failed, report.rejected, report.unchanged) == expected, call
        assert report.received == len(inputs)
        if before is not None:  # a replay is a no-op
            assert expected == (0, 0, 0, len(inputs))
            assert snapshot(db) == before
        assert stored_totals(db, batch_id)[1:3] == recount(db, batch_id), call
        done.append(call)

    for batch_id in {f"{ns}-{c.batch}" for c in done}:
        _total, completed, failed, _status = stored_totals(db, batch_id)
        assert (completed, failed) == model.totals(batch_id) == recount(db, batch_id)
        distinct_images = sum(1 for b in model.owner.values() if b == batch_id)
        distinct_rejects = sum(1 for key in model.rejects - model.resolved if key[0] == batch_id)
        assert completed + failed == distinct_images + distinct_rejects
