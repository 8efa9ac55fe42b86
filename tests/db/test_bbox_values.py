"""bbox numbers are stored as they came: an integer stays an integer, a float keeps its value.

Judged on both paths (the fast one for plain dicts, the model for everything
else), then read back from the jsonb column and compared exactly, types included.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import psycopg
import pytest

from loader import OCRResult, save_batch

# Integers and floats as OCR engines report them, and the edges of what is accepted:
# the largest integer a double holds exactly (2**53) and beyond it, exactly kept.
# (Not huge floats such as 1.5e300: jsonb keeps the number, but prints it without
# an exponent, so a JSON reader takes it back as an integer of the same value.)
BBOXES: list[list[list[Any]]] = [
    [[10, 20], [110, 20], [110, 45], [10, 45]],
    [[10.5, 20.25], [110.0, 20.0], [110, 45.75], [0, 0]],
    [[2**53, -(2**53)], [2**53 + 1, -(2**53) - 1]],
    [[2**70, 0], [123456789012345678901234567890, -1]],
    [[0.1, 1e-7], [1.5e-300, -2.5e-300]],
    [[-0.0, 0]],
]


class _Sub(dict[str, Any]):
    """A dict subclass: not exactly a dict, so it is judged by the model, not the fast path."""


def _result(path: str) -> dict[str, Any]:
    return {
        "image_path": path,
        "text_boxes": [
            {"text": f"box {n}", "confidence": 0.5, "bbox": bbox} for n, bbox in enumerate(BBOXES)
        ],
    }


def _stored_bboxes(db: psycopg.Connection[Any], path: str) -> list[Any]:
    rows = db.execute(
        """
        SELECT b.bbox::text FROM ocr_text_boxes b JOIN ocr_executions o ON o.id = b.ocr_execution_id
        WHERE o.image_path = %s ORDER BY b.position
        """,
        [path],
    ).fetchall()
    return [json.loads(text) for (text,) in rows]


def _typed(value: Any) -> Any:
    """``value`` with every number paired with its type, so that 10 and 10.0 differ."""
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, value)


@pytest.mark.parametrize("form", ["dict", "line", "model", "subclass"])
def test_bbox_numbers_come_back_exactly_as_sent(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any], form: str
) -> None:
    path = f"/bbox/{form}.png"
    data = _result(path)
    item: Any = {
        "dict": data,
        "line": json.dumps(data).encode(),
        "model": OCRResult.model_validate(data),
        "subclass": _Sub(data),
    }[form]

    report = save_batch(conn, f"bbox-{form}", [item])

    assert (report.stored, report.failed, report.rejected) == (1, 0, 0), report.issues
    assert _typed(_stored_bboxes(db, path)) == _typed(BBOXES)


@pytest.mark.parametrize(
    ("coordinate", "shown"),
    [
        (True, "True"),
        ("10", "'10'"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (None, "None"),
        (int(sys.float_info.max) + 1, "17976931348623157"),
        (-(10**400), "-10000000000000"),
    ],
    ids=repr,
)
def test_a_coordinate_that_is_not_a_finite_number_fails_the_image_naming_it(
    conn: psycopg.Connection[Any], coordinate: Any, shown: str
) -> None:
    data = {
        "image_path": "/bbox/bad.png",
        "text_boxes": [{"text": "a", "confidence": 0.5, "bbox": [[0, coordinate]]}],
    }

    report = save_batch(conn, "bbox-bad", [data])

    assert report.failed == 1
    reason = report.issues[0].reason
    assert reason.startswith(
        "invalid OCR result: text_boxes[0].bbox[0][1]: Input should be a finite number"
    ), reason
    assert f"(got {shown}" in reason
