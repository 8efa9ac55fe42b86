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

The fields besides the boxes are checked as loader/fields.py declares them
(``Declared.quick``), so a field added there is checked here too; a rule of a
new kind must say there what the fast path makes of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from math import isfinite
from typing import Any, TypeGuard

from loader.copy import bbox_json
from loader.fields import MAX_BBOX_POINTS, MAX_COORDINATE, MAX_TEXT_CHARS, STORED, text_ok

#: A box's COPY row: (position of the input, position of the box, text, confidence, bbox JSON).
BoxRow = tuple[int, int, str, float, str]


@dataclass(slots=True)
class Stored:
    """What is stored of an input: its declared fields by name (loader/fields.py), and its boxes."""

    #: Every stored field of loader/fields.py, in declaration order (image_path first).
    fields: dict[str, Any]
    #: COPY rows of the boxes, in reading order.
    boxes: list[BoxRow]
    #: True when the loader found the input invalid (stored as failed with ``error``).
    invalid: bool = False

    @property
    def image_path(self) -> str:
        path: str = self.fields["image_path"]
        return path

    @property
    def public_path(self) -> str | None:
        path: str | None = self.fields["public_path"]
        return path

    @property
    def status(self) -> str:
        status: str = self.fields["status"]
        return status

    @property
    def error(self) -> str | None:
        error: str | None = self.fields["error"]
        return error


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
    return type(text) is str and len(text) <= MAX_TEXT_CHARS and text_ok(text)


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


def _checks(path_ok: Callable[[object], bool]) -> list[tuple[str, Any, Callable[[object], bool]]]:
    """Each stored field but image_path: its name, its default, and its quick check."""
    return [(f.name, f.default, f.quick(path_ok)) for f in STORED if f.name != "image_path"]


# The checks, per path_ok given (validate.py gives one, once).
_CHECKS: dict[Callable[[object], bool], list[tuple[str, Any, Callable[[object], bool]]]] = {}


def check(data: Any, path_ok: Callable[[object], bool], pos: int) -> Stored | None:
    """``data`` judged in one pass: its stored form if certainly valid, else None.

    ``path_ok(value)`` says whether a path is usable (fields.path_problem is
    None); ``data["image_path"]`` must already have passed it.
    """
    if type(data) is not dict or type(data.get("image_path")) is not str:
        return None
    checks = _CHECKS.get(path_ok) or _CHECKS.setdefault(path_ok, _checks(path_ok))
    fields = {"image_path": data["image_path"]}
    for name, default, ok in checks:
        value = data.get(name, default)
        if not ok(value):
            return None
        fields[name] = value
    rows = box_rows(data.get("text_boxes", []), pos)
    if rows is None:
        return None
    return Stored(fields, rows)
