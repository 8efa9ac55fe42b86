"""Each declared limit (loader/fields.py) holds alike in the model and the fast path, at its edge,
and a string limit is worded in characters."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from loader.fields import STORED, Chars, Declared
from loader.models import OCRResult
from loader.save import fastcheck
from loader.save.validate import _path_ok, judge_call

_LIMITED = [f for f in STORED if isinstance(f.rule, Chars)]


def _with(field: Declared, value: Any) -> dict[str, Any]:
    return {"image_path": "/edge/1.png", field.name: value}


@pytest.mark.parametrize("field", _LIMITED, ids=[f.name for f in _LIMITED])
def test_a_value_at_the_limit_passes_both_paths_and_one_past_it_neither(field: Declared) -> None:
    assert isinstance(field.rule, Chars)
    longest = "é" * field.rule.max_chars
    assert OCRResult.model_validate(_with(field, longest)).model_dump()[field.name] == longest
    quick = fastcheck.check(_with(field, longest), _path_ok, 0)
    assert quick is not None and quick.fields[field.name] == longest

    too_long = _with(field, longest + "é")
    assert fastcheck.check(too_long, _path_ok, 0) is None
    with pytest.raises(
        ValidationError, match=f"String should have at most {field.rule.max_chars} characters"
    ):
        OCRResult.model_validate(too_long)


@pytest.mark.parametrize("field", _LIMITED, ids=[f.name for f in _LIMITED])
def test_a_value_past_its_limit_is_stored_as_failed_and_says_so_in_characters(field: Declared) -> None:
    assert isinstance(field.rule, Chars)
    (image,) = judge_call("edge", enumerate([_with(field, "x" * (field.rule.max_chars + 1))])).images
    assert image.status == "failed" and image.stored.fields[field.name] is None
    limit = f"String should have at most {field.rule.max_chars} characters"
    assert image.error is not None and image.error.startswith(
        f"invalid OCR result: {field.name}: {limit} (got "
    )
    assert "items" not in image.error


def test_every_stored_field_but_the_boxes_is_a_field_of_the_model_in_declaration_order() -> None:
    assert [f.name for f in STORED] == [n for n in OCRResult.model_fields if n != "text_boxes"]
