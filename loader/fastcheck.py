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
tests in tests/unit/test_fastcheck.py hold both to that.

Keep this in step with the models in loader/models.py: a new rule there must be
either checked here or made to return None here.
"""

from __future__ import annotations

from collections.abc import Callable
from math import isfinite
from typing import Any, TypeGuard

from loader.copy import bbox_json
from loader.models import MAX_BBOX_POINTS, MAX_COORDINATE, MAX_MODEL_VERSION_CHARS, MAX_TEXT_CHARS

_STATUSES = ("success", "failed")

#: A box's COPY row: (position of the input, position of the box, text, confidence, bbox JSON).
BoxRow = tuple[int, int, str, float, str]


class Checked:
    """A certainly valid input, reduced to what is stored."""

    __slots__ = ("boxes", "error", "model_version", "public_path", "status")

    def __init__(
        self,
        public_path: str | None,
        status: str,
        error: str | None,
        boxes: list[BoxRow],
        model_version: str | None = None,
    ) -> None:
        self.public_path = public_path
        self.status = status
        self.error = error
        self.model_version = model_version
        #: COPY rows of the boxes, in reading order (also for a failed result, whose boxes are not stored).
        self.boxes = boxes


def _confidence(value: object) -> float | None:
    """The float the model's strict float field makes of ``value``, when certainly in [0, 1]."""
    if type(value) is int:  # not bool: type() is exact
        value = float(value) if 0 <= value <= 1 else None
    # The comparison is also false for NaN; infinities fall outside the range.
    if type(value) is not float or not 0.0 <= value <= 1.0:
        return None
    return value


def _coordinate_ok(value: object) -> bool:
    """Whether the model's Coordinate certainly keeps ``value`` as it is (ints stay ints)."""
    if type(value) is float:
        return isfinite(value)
    return type(value) is int and -MAX_COORDINATE <= value <= MAX_COORDINATE


def _bbox_ok(bbox: object) -> TypeGuard[list[list[Any]]]:
    """A list of 1..MAX_BBOX_POINTS [x, y] lists of finite floats or ints within range."""
    if type(bbox) is not list or not 0 < len(bbox) <= MAX_BBOX_POINTS:
        return False
    for point in bbox:
        if type(point) is not list or len(point) != 2:
            return False
        x, y = point
        # The common case first: two finite floats.
        if type(x) is float and type(y) is float and isfinite(x) and isfinite(y):
            continue
        if not (_coordinate_ok(x) and _coordinate_ok(y)):
            return False
    return True


def _text_ok(text: object) -> TypeGuard[str]:
    """Storable text within the length limit: no NUL, no lone surrogate."""
    if type(text) is not str or len(text) > MAX_TEXT_CHARS or "\x00" in text:
        return False
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate
            return False
    return True


def box_rows(boxes: object, pos: int) -> list[BoxRow] | None:
    """The COPY rows of a result's boxes, or None unless every box is certainly valid."""
    if type(boxes) is not list:
        return None
    rows: list[BoxRow] = []
    # This loop runs for every box of every input: one pass, small helpers.
    for n, box in enumerate(boxes):
        if type(box) is not dict:
            return None
        text = box.get("text")
        confidence = _confidence(box.get("confidence"))
        bbox = box.get("bbox")
        if confidence is None or not _text_ok(text) or not _bbox_ok(bbox):
            return None
        rows.append((pos, n, text, confidence, bbox_json(bbox)))
    return rows


def _header_ok(data: dict[str, Any], path_ok: Callable[[object], bool]) -> bool:
    """The fields besides the boxes: public_path, status, error, model_version."""
    public_path = data.get("public_path")
    if public_path is not None and (type(public_path) is not str or not path_ok(public_path)):
        return False
    status = data.get("status", "success")
    if type(status) is not str or status not in _STATUSES:
        return False
    error = data.get("error")
    if error is not None and type(error) is not str:
        return False
    version = data.get("model_version")
    return version is None or (_text_ok(version) and 0 < len(version) <= MAX_MODEL_VERSION_CHARS)


def check(data: Any, path_ok: Callable[[object], bool], pos: int) -> Checked | None:
    """``data`` judged in one pass: its stored form if certainly valid, else None.

    ``path_ok(value)`` says whether a path is usable (validate.path_problem is
    None); ``data["image_path"]`` must already have passed it.
    """
    if type(data) is not dict or type(data.get("image_path")) is not str or not _header_ok(data, path_ok):
        return None
    rows = box_rows(data.get("text_boxes", []), pos)
    if rows is None:
        return None
    return Checked(
        data.get("public_path"),
        data.get("status", "success"),
        data.get("error"),
        rows,
        data.get("model_version"),
    )
