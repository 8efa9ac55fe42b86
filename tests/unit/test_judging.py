"""Judging in one place: save_batch, loader.save.pipeline.judge and the chunks of a file judge a
call through one function, check their arguments alike, and word each reason once."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest

import loader.save.validate
from loader import queries, save_batch
from loader.batch_ids import MAX_POSITION
from loader.datagen import make_batch
from loader.errors import ConfigurationError
from loader.save.call import judge_checked
from loader.save.chunks import judge_lines
from loader.save.isolate import CLAIMED_CONCURRENTLY
from loader.save.pipeline import judge, save_judged
from loader.save.validate import WORDED_BY_THE_MERGE, Judged, judge_call

LOADER = Path(loader.save.validate.__file__).resolve().parent


def _plain(count: int) -> list[bytes]:
    return [json.dumps(r).encode() for r in make_batch(count, prefix="plain")]


def _lines() -> list[bytes]:
    results: list[Any] = make_batch(8, prefix="judging")
    results[2] = dict(results[0], public_path=None)  # a duplicate image_path within the call
    results[4]["text_boxes"][0]["confidence"] = 7  # invalid: stored as failed
    return [json.dumps(r).encode() for r in results] + [b"{not json"]


def _same(a: Judged, b: Judged) -> None:
    assert (a.batch_id, a.digest, a.received, a.first_position, a.last_position) == (
        b.batch_id,
        b.digest,
        b.received,
        b.first_position,
        b.last_position,
    )
    assert (a.images, a.rejects, a.invalid) == (b.images, b.rejects, b.invalid)


def test_save_batch_pipeline_and_chunks_judge_a_call_alike() -> None:
    lines = _lines()

    in_save_batch = judge_checked("B", lines, 40, now=False)
    in_pipeline = judge("B", lines, position_offset=40)
    in_chunks = judge_lines("B", lines, 40, threading.Event())

    _same(in_save_batch, in_pipeline)
    _same(in_pipeline, in_chunks)
    assert (in_pipeline.received, in_pipeline.first_position, in_pipeline.last_position) == (9, 40, 48)
    assert [rj.pos for rj in in_pipeline.rejects] == [42, 48]
    assert list(in_pipeline.invalid) == [44]


def test_a_blank_line_is_no_input_but_keeps_its_number() -> None:
    lines = _plain(2)
    judged = judge_lines("B", [b"\n", lines[0], b"  \n", lines[1]], 10, threading.Event())

    assert (judged.received, judged.first_position, judged.last_position) == (2, 11, 13)
    assert judged.digest == judge_call("B", [(11, lines[0]), (13, lines[1])]).digest


def test_a_call_is_judged_only_when_its_verdicts_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    judged_inputs: list[int] = []
    real_add = loader.save.validate._Judging.add

    def counted(self: Any, pos: int, item: Any) -> None:
        judged_inputs.append(pos)
        real_add(self, pos, item)

    monkeypatch.setattr(loader.save.validate._Judging, "add", counted)

    later = judge_checked("B", _plain(3), 0, now=False)
    assert judged_inputs == [] and later.received == 3  # digested, not judged: a replay needs no verdicts
    assert len(later.images) == 3
    assert judged_inputs == [0, 1, 2]
    later.rejects  # noqa: B018  (judged once, whatever is read after)
    assert judged_inputs == [0, 1, 2]

    judge("B", _plain(3))
    assert judged_inputs == [0, 1, 2] * 2  # the pipeline judges at once (in its thread)


@pytest.mark.parametrize(
    ("batch_id", "results", "offset"),
    [
        ("", [], 0),
        ("a\x1bb", [], 0),
        (7, [], 0),
        ("B", "{}", 0),
        ("B", b"{}", 0),
        ("B", [], -1),
        ("B", [], True),
        ("B", [], 1.5),
        ("B", [{}, {}], MAX_POSITION),
    ],
    ids=[
        "empty id",
        "control character",
        "id not a str",
        "str results",
        "bytes results",
        "negative offset",
        "bool offset",
        "float offset",
        "last position too large",
    ],
)
def test_the_pipeline_refuses_the_arguments_save_batch_refuses(
    batch_id: Any, results: Any, offset: Any
) -> None:
    with pytest.raises(ConfigurationError) as by_save_batch:
        save_batch(None, batch_id, results, position_offset=offset)  # type: ignore[arg-type]  # refused before connecting
    with pytest.raises(ConfigurationError) as by_pipeline:
        judge(batch_id, results, offset)

    assert str(by_pipeline.value) == str(by_save_batch.value)


def test_a_judged_call_is_stored_only_into_its_own_batch() -> None:
    judged = judge("A", _plain(2))

    with pytest.raises(ConfigurationError, match="same batch"):
        save_judged(None, "B", judged)  # type: ignore[arg-type]  # refused before connecting


def test_a_duplicate_within_the_call_is_left_for_the_merge_to_word() -> None:
    results: list[Any] = make_batch(3, prefix="dup")
    results.append(dict(results[0], public_path=None))
    results.append(dict(results[1], image_path="/dup/other.png"))

    judged = judge("B", results, 10)

    assert [(rj.pos, rj.duplicate, rj.dup_of, rj.reason) for rj in judged.rejects] == [
        (13, "image_path", 10, WORDED_BY_THE_MERGE),
        (14, "public_path", None, WORDED_BY_THE_MERGE),
    ]


# How much of a reason's fixed text identifies it: enough to tell reasons apart, short
# enough that a client copy with other details ("... (first at position 3)") still matches.
_STEM_CHARS = 30


def _merge_reasons() -> set[str]:
    """The stem of every reason the merge words (a format's fixed text before its first
    placeholder, and the plain strings of the outcome step's reasons)."""
    merge = queries.get("merge")
    formats = re.findall(r"format\('((?:[^']|'')+)'", merge)
    plain = re.findall(r"THEN '([^']{20,})'", merge)
    texts = [re.split(r"%%[sL]", text)[0].replace("''", "'") for text in formats + plain]
    return {text[:_STEM_CHARS] for text in texts if len(text) >= _STEM_CHARS}


def test_a_reason_is_worded_once_by_the_merge_or_by_the_client() -> None:
    sql_reasons = _merge_reasons()
    assert {
        "duplicate image_path (first at",
        "public_path already used by an",
        "image_path already stored by a",
        "fixes nothing: this position h",
    } <= sql_reasons
    python = {path: path.read_text() for path in LOADER.rglob("*.py")}

    for reason in sql_reasons:
        words = [path.name for path, text in python.items() if reason in text]
        assert not words, f"{reason!r}: worded by the merge, and again in {words}"
    # The reasons the client words never appear in the merge.
    client = [
        CLAIMED_CONCURRENTLY,
        "this position of the batch already received this input",
        WORDED_BY_THE_MERGE,
    ]
    assert not [reason for reason in client if reason in queries.get("merge")]
