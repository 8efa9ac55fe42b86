"""The quick judgement of an ordinary input: a plain dict, as json.loads returns it, that is valid.

``OCRResult.model_validate`` builds a model per image and per box and calls back
into Python for every text: for a 10,000-image call (50,000 boxes) that was
~0.4 s, the largest single cost of save_batch. Here, exact-type checks in one
pass decide whether an input is certainly valid and, if so, produce its COPY
rows directly. Whenever they cannot tell (a wrong or unusual type, a subclass,
a value out of range, a missing key), ``check`` returns None and validate.py
judges the input with the model as before, which also writes the error
message. So this path may only ever be stricter than the model, never looser,
and for what it accepts it yields exactly what the model path yields; the
tests in tests/test_fastcheck.py hold both to that.

Keep this in step with the models in loader/models.py: a new rule there must be
either checked here or made to return None here.
"""

from __future__ import annotations

from math import isfinite
from typing import Any

from loader.copy import bbox_json
from loader.models import MAX_BBOX_POINTS, MAX_TEXT_CHARS

_STATUSES = ("success", "failed")

#: A box's COPY row: (position of the input, position of the box, text, confidence, bbox JSON).
BoxRow = tuple[int, int, str, float, str]


class Checked:
    """A certainly valid input, reduced to what is stored."""

    __slots__ = ("boxes", "error", "public_path", "status")

    def __init__(self, public_path: str | None, status: str, error: str | None, boxes: list[BoxRow]) -> None:
        self.public_path = public_path
        self.status = status
        self.error = error
        #: COPY rows of the boxes, in reading order (also for a failed result, whose boxes are not stored).
        self.boxes = boxes


def _coordinate(value: object) -> float | None:
    """The float a strict float field makes of ``value``, when certainly valid."""
    if type(value) is float:
        return value if isfinite(value) else None
    if type(value) is int:  # not bool: type() is exact
        try:
            return float(value)
        except OverflowError:
            return None
    return None


def _float_points(bbox: list[Any]) -> list[list[float]] | None:
    """A bbox of valid numbers with its integers made floats, as the model's float fields make them."""
    points = []
    for x, y in bbox:
        fx, fy = _coordinate(x), _coordinate(y)
        if fx is None or fy is None:
            return None
        points.append([fx, fy])
    return points


def check(data: Any, path_ok: Any, pos: int) -> Checked | None:
    """``data`` judged in one pass: its stored form if certainly valid, else None.

    ``path_ok(value)`` says whether a path is usable (validate.path_problem is
    None); ``data["image_path"]`` must already have passed it.
    """
    if type(data) is not dict or type(data.get("image_path")) is not str:
        return None
    public_path = data.get("public_path")
    if public_path is not None and (type(public_path) is not str or not path_ok(public_path)):
        return None
    status = data.get("status", "success")
    if type(status) is not str or status not in _STATUSES:
        return None
    error = data.get("error")
    if error is not None and type(error) is not str:
        return None
    boxes = data.get("text_boxes", [])
    if type(boxes) is not list:
        return None

    rows: list[BoxRow] = []
    # One loop, everything inline: this runs for every box of every input.
    for n, box in enumerate(boxes):
        if type(box) is not dict:
            return None
        text = box.get("text")
        confidence = box.get("confidence")
        bbox = box.get("bbox")
        if type(text) is not str or len(text) > MAX_TEXT_CHARS or "\x00" in text:
            return None
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate
                return None
        if type(confidence) is not float:
            confidence = _coordinate(confidence)
            if confidence is None:
                return None
        # Also false for NaN; infinities fall outside the range.
        if not 0.0 <= confidence <= 1.0:
            return None
        if type(bbox) is not list or not 0 < len(bbox) <= MAX_BBOX_POINTS:
            return None
        exact = True
        for point in bbox:
            if type(point) is not list or len(point) != 2:
                return None
            x, y = point
            if type(x) is float and type(y) is float:
                if not (isfinite(x) and isfinite(y)):
                    return None
            else:
                exact = False
        if not exact:
            bbox = _float_points(bbox)
            if bbox is None:
                return None
        rows.append((pos, n, text, confidence, bbox_json(bbox)))
    return Checked(public_path, status, error, rows)
