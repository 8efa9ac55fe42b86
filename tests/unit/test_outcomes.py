"""One outcome enum the merge's words are held to, and a report's counts declared once."""

from __future__ import annotations

import logging
import re

import pytest
from pydantic import ValidationError

from loader import queries
from loader.models import (
    INTERNAL_OUTCOMES,
    REPORTED_OUTCOMES,
    BatchProgress,
    Counts,
    InputIssue,
    LoadReport,
    Outcome,
    ProcessStatus,
)
from loader.save.chunks import Totals
from loader.save.report import log_saved

MERGE = queries.get("merge")


def _step(name: str) -> str:
    """The text of one step of the merge (``name AS (`` up to the step's closing parenthesis)."""
    start = MERGE.index(f"\n{name} AS (")
    return MERGE[start : MERGE.index("\n),", start)]


def _verdicts() -> set[str]:
    """Every verdict the merge's judged step can give an input."""
    judged = _step("judged")
    case = judged[judged.index("CASE") : judged.index("END AS verdict")]
    return set(re.findall(r"\b(?:THEN|ELSE)\s+'(\w+)'", case))


def _outcome_case() -> str:
    step = _step("outcome")
    return step[step.index("CASE") : step.index("END AS outcome")]


def _merge_outcomes() -> set[str]:
    """Every word the merge's outcome column can hold: the words it maps verdicts to, and
    the verdicts no WHEN maps, which pass through (ELSE j.verdict)."""
    case = _outcome_case()
    assert re.search(r"ELSE j\.verdict\s*$", case.strip()), "the outcome CASE passes other verdicts through"
    mapped = set()
    for when in re.findall(r"WHEN (j\.verdict[^T]*?)THEN", case):
        mapped |= set(re.findall(r"'(\w+)'", when))
    said = set(re.findall(r"THEN\s+'(\w+)'", case))
    return said | (_verdicts() - mapped)


def test_every_word_of_the_merge_outcome_column_is_an_outcome() -> None:
    words = _merge_outcomes()

    assert words <= {o.value for o in Outcome}, words - {o.value for o in Outcome}
    # And the enum holds nothing the merge never says, but for failed (the merge says
    # stored; the tally tells failures apart by the image's OCR status).
    assert {o.value for o in Outcome} - words == {Outcome.FAILED}


def test_the_merge_verdicts_are_read_from_the_statement() -> None:
    # The parsing above finds the verdicts it must (a guard against a regex reading nothing).
    assert {
        "new",
        "reject",
        "unchanged",
        "conflict",
        "refused",
        "replace",
        "take",
        "elsewhere",
    } <= _verdicts()
    assert {"lost", "conflict", "refused"} <= _merge_outcomes()


def test_the_outcomes_are_reported_or_internal_never_both() -> None:
    assert set(REPORTED_OUTCOMES) | INTERNAL_OUTCOMES == set(Outcome)
    assert not set(REPORTED_OUTCOMES) & INTERNAL_OUTCOMES
    assert {Outcome.LOST, Outcome.CONFLICT} == INTERNAL_OUTCOMES


def test_counts_hold_a_field_for_each_reported_outcome_and_nothing_else_but_inputs_resolved_boxes() -> None:
    assert set(Counts.model_fields) == {"received", "resolved", "boxes", *REPORTED_OUTCOMES}
    assert all(Counts.model_fields[o].annotation is int for o in REPORTED_OUTCOMES)


def test_an_issue_carries_only_reported_outcomes() -> None:
    for outcome in REPORTED_OUTCOMES:
        issue = InputIssue(position=3, image_path="/a.png", outcome=outcome.value, reason="why")
        assert issue.outcome is outcome
        assert issue.model_dump(mode="json")["outcome"] == outcome.value
    for outcome in INTERNAL_OUTCOMES:
        with pytest.raises(ValidationError, match="internal"):
            InputIssue(position=3, image_path="/a.png", outcome=outcome, reason="why")


def test_the_report_keeps_its_fields_in_their_order() -> None:
    # Public API: LoadReport's JSON (the Celery result, `loader load --json`) reads as before.
    assert list(LoadReport.model_fields) == [
        "batch_id",
        "received",
        "stored",
        "failed",
        "rejected",
        "unchanged",
        "replaced",
        "refused",
        "resolved",
        "boxes",
        "statements",
        "attempts",
        "duration_s",
        "progress",
        "replayed",
        "issues",
    ]


def _report(**counts: int) -> LoadReport:
    progress = BatchProgress(
        batch_id="B", status=ProcessStatus.RUNNING, total_images=100, completed_images=0, failed_images=0
    )
    base = dict.fromkeys(Counts.model_fields, 0) | counts
    return LoadReport(batch_id="B", **base, statements=8, duration_s=0.25, progress=progress)


def test_totals_sum_every_count_of_the_chunk_reports() -> None:
    first = _report(received=10, stored=6, failed=1, rejected=1, unchanged=1, refused=1, resolved=2, boxes=30)
    second = _report(received=5, replaced=4, refused=1, boxes=12)
    totals = Totals("B")

    totals.add(first)
    totals.add(second)
    report = totals.report(duration_s=1.0)

    assert report.counts() == {
        name: first.counts()[name] + second.counts()[name] for name in Counts.model_fields
    }
    assert (report.statements, report.attempts, totals.chunks) == (16, 2, 2)


def _logged(report: LoadReport, caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    log = logging.getLogger("loader.test_outcomes")
    with caplog.at_level(logging.INFO, logger=log.name):
        log_saved(log, report)
    (record,) = caplog.records
    return record


def test_the_log_line_names_each_outcome_and_refused_only_when_any(caplog: pytest.LogCaptureFixture) -> None:
    plain = _report(received=9, stored=5, failed=1, rejected=2, unchanged=1, boxes=20)
    repair = _report(received=4, replaced=1, refused=3)

    assert _logged(plain, caplog).getMessage() == (
        "saved batch 'B': 9 inputs: 5 stored, 1 failed, 2 rejected, 1 unchanged, 0 replaced; "
        "8 statements, 0.250 s"
    )
    caplog.clear()
    assert _logged(repair, caplog).getMessage() == (
        "saved batch 'B': 4 inputs: 0 stored, 0 failed, 0 rejected, 0 unchanged, 1 replaced, 3 refused; "
        "8 statements, 0.250 s"
    )


def test_the_log_fields_are_the_input_counts_statements_and_duration(
    caplog: pytest.LogCaptureFixture,
) -> None:
    report = _report(received=9, stored=5, failed=1, rejected=2, unchanged=1, resolved=1, boxes=20)

    record = _logged(report, caplog)

    assert report.log_fields() == {
        "batch_id": "B",
        "received": 9,
        "stored": 5,
        "failed": 1,
        "rejected": 2,
        "unchanged": 1,
        "replaced": 0,
        "refused": 0,
        "resolved": 1,
        "statements": 8,
        "duration_s": 0.25,
    }
    assert {key: getattr(record, key) for key in report.log_fields()} == report.log_fields()
