"""The quick judgement (loader/save/fastcheck.py) never disagrees with the model.

It may only pass inputs the model accepts, and must then produce the very same
rows; everything else it leaves to the model. No database needed.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import pytest
from helpers.hostile_corpus import OK_BOX, corpus, dict_only_cases, line_only_cases
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import loader.save.fastcheck
import loader.save.validate
from loader.copy import bbox_json
from loader.datagen import break_some, make_batch
from loader.models import MAX_BBOX_POINTS, MAX_COORDINATE, MAX_TEXT_CHARS, OCRResult
from loader.save.validate import CHAIN_NAMESPACE, Judged, _path_ok, chain_id_for, judge_call

# Every field of the model but its boxes is a stored field of fastcheck.Stored, compared one by one.
_NOT_COMPARED = {"text_boxes"}


def _model_rows(data: dict[str, Any], pos: int) -> dict[str, Any]:
    """What the model path makes of an input it accepts, field by field."""
    result = OCRResult.model_validate(data)
    rows = [
        (pos, n, box.text, box.confidence, bbox_json(box.bbox)) for n, box in enumerate(result.text_boxes)
    ]
    fields = {f: getattr(result, f) for f in OCRResult.model_fields if f not in _NOT_COMPARED}
    return {**fields, "boxes": rows}


def _quick_rows(quick: loader.save.fastcheck.Stored) -> dict[str, Any]:
    fields = {f: quick.fields[f] for f in OCRResult.model_fields if f not in _NOT_COMPARED}
    return {**fields, "boxes": quick.boxes}


def _agree(data: Any, pos: int = 0) -> bool:
    """Assert the fast path agrees with the model on ``data``; return whether it passed it."""
    quick = loader.save.fastcheck.check(data, _path_ok, pos)
    if quick is None:
        return False
    assert _quick_rows(quick) == _model_rows(data, pos)
    return True


def _judged_without_fast_path(monkeypatch: pytest.MonkeyPatch, items: list[Any]) -> Judged:
    with monkeypatch.context() as m:
        m.setattr(loader.save.fastcheck, "check", lambda *args: None)
        return judge_call("batch", enumerate(items, 7))


def test_generated_batches_take_the_fast_path_and_match_the_model() -> None:
    results = make_batch(300, prefix="fast")
    results[5]["text_boxes"][0]["bbox"] = [[0, 1], [2, 3]]  # integer pixels, as many engines report
    results[6]["text_boxes"][1]["confidence"] = 1  # an integer confidence
    results[7].update(status="failed", error="engine timeout", text_boxes=[])
    del results[8]["public_path"]
    assert all(_agree(item, pos) for pos, item in enumerate(results))


def test_broken_inputs_are_left_to_the_model() -> None:
    results = make_batch(400, prefix="broken")
    damaged = break_some(results, every=7)
    for index in damaged:
        if results[index]["status"] == "failed":
            continue  # the upstream failures of break_some are valid results
        assert loader.save.fastcheck.check(results[index], _path_ok, index) is None, results[index]


@pytest.mark.parametrize(
    "box",
    [
        {**OK_BOX, "confidence": True},
        {**OK_BOX, "confidence": "0.5"},
        {**OK_BOX, "confidence": math.nan},
        {**OK_BOX, "confidence": math.inf},
        {**OK_BOX, "confidence": 1.0000001},
        {**OK_BOX, "confidence": -0.0001},
        {**OK_BOX, "confidence": 10**400},
        {**OK_BOX, "text": "a\x00b"},
        {**OK_BOX, "text": "lone \ud800 surrogate"},
        {**OK_BOX, "text": "x" * (MAX_TEXT_CHARS + 1)},
        {**OK_BOX, "text": None},
        {**OK_BOX, "bbox": []},
        {**OK_BOX, "bbox": [[0.0, 0.0]] * (MAX_BBOX_POINTS + 1)},
        {**OK_BOX, "bbox": [[0.0, 0.0, 0.0]]},
        {**OK_BOX, "bbox": [(0.0, 0.0)]},
        {**OK_BOX, "bbox": [[0.0, math.inf]]},
        {**OK_BOX, "bbox": [[0.0, math.nan]]},
        {**OK_BOX, "bbox": [[0.0, True]]},
        {**OK_BOX, "bbox": [[0.0, 10**400]]},
        {**OK_BOX, "bbox": [[0.0, "1"]]},
        {**OK_BOX, "bbox": "[[0, 0]]"},
        {"text": "no confidence", "bbox": [[0.0, 0.0]]},
    ],
    ids=repr,
)
def test_a_box_the_model_refuses_never_passes_the_fast_path(box: dict[str, Any]) -> None:
    data = {"image_path": "/x.png", "text_boxes": [OK_BOX, box]}
    assert loader.save.fastcheck.check(data, _path_ok, 0) is None
    with pytest.raises(ValueError):
        OCRResult.model_validate(data)


def test_the_fast_path_changes_no_outcome_on_the_hostile_corpus(monkeypatch: pytest.MonkeyPatch) -> None:
    both = corpus("/fc/")
    items = [case.item for case in both + dict_only_cases("/fcd/")]
    items += [case.as_line() for case in both + line_only_cases("/fcl/")]

    with_fast_path = judge_call("batch", enumerate(items, 7))
    without = _judged_without_fast_path(monkeypatch, items)

    assert with_fast_path.received == without.received
    assert with_fast_path.images == without.images
    assert with_fast_path.rejects == without.rejects
    assert with_fast_path.invalid == without.invalid


_number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**1100), max_value=2**1100),
    st.booleans(),
    st.sampled_from(["1.5", None]),
)
_point = st.one_of(
    st.lists(_number, min_size=2, max_size=2),
    st.lists(_number, min_size=0, max_size=3),
    st.tuples(_number, _number),
)
_text = st.one_of(st.text(max_size=20), st.sampled_from(["a\x00b", "\ud800", "한국어 OCR", 5, None]))
_box = st.fixed_dictionaries(
    {
        "text": _text,
        "confidence": st.one_of(_number, st.floats(min_value=0, max_value=1)),
        "bbox": st.one_of(st.lists(_point, min_size=0, max_size=4), _number, _text),
    },
    optional={"extra": st.integers()},
)
_result = st.fixed_dictionaries(
    {"image_path": st.just("/h.png")},
    optional={
        "public_path": st.one_of(st.none(), st.sampled_from(["https://x/1", "   ", "a\x00", "", "\ud800"])),
        "status": st.sampled_from(["success", "failed", "SUCCESS", None, 1]),
        "error": st.one_of(st.none(), st.text(max_size=10), st.integers()),
        "model_version": st.one_of(st.none(), st.sampled_from(["v2", "", "x" * 256, "a\x00"]), st.integers()),
        "text_boxes": st.one_of(st.lists(_box, max_size=3), st.none(), st.just("boxes")),
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_result)
def test_whatever_the_fast_path_passes_the_model_passes_the_same(data: dict[str, Any]) -> None:
    _agree(data, 3)


def test_chain_ids_are_the_uuid5_of_batch_and_path() -> None:
    for batch_id in ("b", "배치-1", 'quote"back\\slash'):
        for path in ("/x.png", "/이미지/1.jpg", "\ud800", "𝄞 tab\t"):
            want = str(uuid.uuid5(CHAIN_NAMESPACE, json.dumps([batch_id, path])))
            assert chain_id_for(batch_id, path) == want


_coordinate = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-MAX_COORDINATE, max_value=MAX_COORDINATE),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_coordinate, min_size=2, max_size=2), min_size=1, max_size=8))
def test_bbox_json_reads_back_as_the_same_numbers_of_the_same_types(bbox: list[list[Any]]) -> None:
    back = json.loads(bbox_json(bbox))
    assert back == bbox
    assert [[type(c) for c in point] for point in back] == [[type(c) for c in point] for point in bbox]


def _stdlib_only(monkeypatch: pytest.MonkeyPatch, lines: list[Any]) -> list[Any]:
    with monkeypatch.context() as m:
        m.setattr(loader.save.validate, "from_json", _refuse)
        return [loader.save.validate._parse(line) for line in lines]


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise ValueError("the fast parser is switched off")


def test_lines_parse_as_json_loads_parses_them(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [case.as_line() for case in corpus("/p/") + line_only_cases("/pl/")]
    lines += [json.dumps(item).encode() for item in make_batch(50, prefix="parse")]
    # str lines too, lone surrogates included (which pydantic-core cannot read).
    lines += ["not json \x00 \ud800", '{"image_path": "/s/\\ud800"}', '{"image_path": "/s/\ud800"}']
    lines += ['{"a": 1}']
    assert [repr(loader.save.validate._parse(line)) for line in lines] == [
        repr(parsed) for parsed in _stdlib_only(monkeypatch, lines)
    ]


_json_value = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers(min_value=-(10**30), max_value=10**30) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=5), _json_value, max_size=4), st.booleans())
def test_generated_json_parses_as_json_loads_parses_it(value: dict[str, Any], ascii_only: bool) -> None:
    line = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    stdlib = loader.save.validate._parse_stdlib(line)
    assert repr(loader.save.validate._parse(line)) == repr(stdlib)
