"""The `loader` command line, driven through click's CliRunner against a real database."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from helpers.checks import assert_totals_match_recount, row_counts, snapshot, stored_totals
from psycopg import sql

from loader import LoadReport, register_batch, save_batch
from loader.cli import DEFAULT_CHUNK_SIZE, cli
from loader.demo import write_demo_file
from loader.schema.apply import schema_sql
from loader.testing import TemplateDatabases, with_dbname

# write_demo_file(1000): lines 48, 145, ... (10 of them) are stored as failed,
# line 998 repeats line 997 and line 999 is cut short: both rejected.
DEMO_IMAGES = 1000
DEMO_FAILED = 10
DEMO_REJECTED = [998, 999]


def run(*args: str, env: dict[str, str | None] | None = None, input: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, input=input, catch_exceptions=False)


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


@pytest.fixture
def demo_file(tmp_path: Path) -> Path:
    return write_demo_file(tmp_path / "results.jsonl", DEMO_IMAGES, "B1").path


@pytest.fixture
def blank_dsn(templates: TemplateDatabases) -> Iterator[str]:
    """A database without the loader schema."""
    name = f"{templates.prefix}_blank"
    with psycopg.connect(templates.maintenance_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_dbname(templates.maintenance_dsn, name)
    yield url
    templates.drop(url)


# ---------------------------------------------------------------------------
# help
# ---------------------------------------------------------------------------

COMMANDS = [
    [],
    ["load"],
    ["status"],
    ["rejects"],
    ["schema"],
    ["schema", "apply"],
    ["schema", "upgrade"],
    ["schema", "check"],
    ["schema", "sql"],
    ["schema", "adopt"],
    ["demo"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "loader")
def test_every_command_has_help_with_examples(command: list[str]) -> None:
    result = run(*command, "--help")

    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: loader {' '.join(command)}".rstrip())
    assert "Examples:" in result.stdout
    # Each example runs the command it documents.
    assert f"loader {' '.join(command)}".rstrip() in result.stdout.split("Examples:", 1)[1]


def test_load_help_explains_positions_across_files_and_resuming() -> None:
    text = run("load", "--help").stdout

    assert f"[default: {DEFAULT_CHUNK_SIZE}" in text
    assert "continues after" in text and "its identity" in text and "--offset" in text
    assert "--skip" in text and "resume" in text
    assert "stdin" in text and "--total" in text


# ---------------------------------------------------------------------------
# loader load
# ---------------------------------------------------------------------------


def test_load_stores_a_file_in_chunks_and_reports_every_outcome(
    dsn: str, db: psycopg.Connection[Any], demo_file: Path
) -> None:
    result = run("load", str(demo_file), "--batch-id", "B1", "--chunk-size", "300", "--dsn", dsn)

    assert result.exit_code == 0, result.stderr
    assert "loaded 1,000 lines into batch B1" in result.stdout
    assert "4 chunks, 32 statements" in result.stdout
    assert f"stored 988 · failed {DEMO_FAILED} · rejected 2 · unchanged 0" in result.stdout
    assert "line 49   failed    OCR engine timeout after 30s" in result.stdout
    assert stored_totals(db, "B1") == (1000, 988, 12, "SUCCESS")
    assert_totals_match_recount(db, "B1")
    # Rejects keep the line's position (0-based line number) and its bytes exactly.
    rejects = db.execute("SELECT position, raw FROM load_rejects ORDER BY position").fetchall()
    lines = lines_of(demo_file)
    assert [(pos, bytes(raw)) for pos, raw in rejects] == [(pos, lines[pos]) for pos in DEMO_REJECTED]


def test_loading_the_same_file_again_changes_nothing(
    dsn: str, db: psycopg.Connection[Any], demo_file: Path
) -> None:
    assert run("load", str(demo_file), "-b", "B1", "--chunk-size", "400", "--dsn", dsn).exit_code == 0
    before = snapshot(db)

    result = run("load", str(demo_file), "-b", "B1", "--chunk-size", "400", "--dsn", dsn)

    assert result.exit_code == 0
    assert "stored 0 · failed 0 · rejected 0 · unchanged 1,000" in result.stdout
    assert snapshot(db) == before


def test_gzip_and_several_files_are_numbered_as_one_stream(
    dsn: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    lines = lines_of(write_demo_file(tmp_path / "all.jsonl", 30, "G").path)
    lines[3] = b"not json at all"
    lines[25] = b"\xff\xfe binary \x00 junk\r"
    first, second = tmp_path / "part1.jsonl", tmp_path / "part2.jsonl.gz"
    first.write_bytes(b"\n".join(lines[:20]) + b"\n")
    # The second file is gzip and its last line has no newline.
    second.write_bytes(gzip.compress(b"\n".join(lines[20:])))

    # Chunks of 8: the third spans both files; lines 27 and 28 share the fourth.
    result = run("load", str(first), str(second), "-b", "G", "--chunk-size", "8", "--dsn", dsn)

    assert result.exit_code == 0, result.stderr
    assert "loaded 30 lines" in result.stdout
    rejects = db.execute("SELECT position, raw FROM load_rejects ORDER BY position").fetchall()
    # Rejected: 3 (not JSON), 25 (binary), 28 (repeats 27), 29 (cut short).
    assert [(p, bytes(r)) for p, r in rejects] == [(p, lines[p]) for p in (3, 25, 28, 29)]
    assert stored_totals(db, "G")[0] == 30
    assert_totals_match_recount(db, "G")


def test_stdin_load_of_a_new_batch_needs_its_total(
    dsn: str, db: psycopg.Connection[Any], demo_file: Path
) -> None:
    data = demo_file.read_bytes()

    refused = run("load", "-", "-b", "S", "--dsn", dsn, input=data)
    loaded = run("load", "-", "-b", "S", "--total", "1000", "--dsn", dsn, input=gzip.compress(data))

    assert refused.exit_code == 2
    assert "pass --total N" in refused.stderr and "Traceback" not in refused.stderr
    assert loaded.exit_code == 0, loaded.stderr
    assert stored_totals(db, "S") == (1000, 988, 12, "SUCCESS")


def test_json_prints_the_summed_load_report(dsn: str, demo_file: Path) -> None:
    result = run("load", str(demo_file), "-b", "B1", "--chunk-size", "250", "--json", "--dsn", dsn)

    data = json.loads(result.stdout)
    extra = {key: data.pop(key) for key in ("chunks", "next_position", "interrupted", "issues_omitted")}
    report = LoadReport.model_validate(data)
    assert (report.received, report.stored, report.failed, report.rejected) == (1000, 988, 10, 2)
    assert report.statements == 32 and report.boxes == 988 * 5
    assert report.progress.completed_images == 988 and data["progress"]["percentage"] == 100.0
    assert sorted(i.position for i in report.issues if i.outcome == "rejected") == DEMO_REJECTED
    assert extra == {"chunks": 4, "next_position": 1000, "interrupted": False, "issues_omitted": 0}


def test_plain_progress_and_verbose_call_logs_carry_structured_fields(dsn: str, demo_file: Path) -> None:
    result = run(
        "load", str(demo_file), "-b", "B1", "--chunk-size", "500", "--progress", "plain", "-v", "--dsn", dsn
    )

    err = result.stderr.splitlines()
    saved = [line for line in err if "loader: saved batch" in line]
    assert len(saved) == 2
    assert all("batch_id=B1" in line and "statements=8" in line and "duration_s=" in line for line in saved)
    assert any(
        "loader.cli.progress: progress batch_id=B1 lines=500 total_lines=1000 percent=50.0" in x for x in err
    )
    assert any(
        "loader.cli.progress: done batch_id=B1 lines=1000" in line and "rejected=2" in line for line in err
    )


def test_json_log_format_writes_one_object_per_line(dsn: str, demo_file: Path) -> None:
    result = run(
        "load", str(demo_file), "-b", "B1", "--progress", "plain", "-v", "--log-format", "json", "--dsn", dsn
    )

    records = [json.loads(line) for line in result.stderr.splitlines()]
    saved = [r for r in records if r["message"].startswith("saved batch 'B1': 1000 inputs: ")]
    assert saved and saved[0]["batch_id"] == "B1" and saved[0]["received"] == 1000
    assert saved[0]["statements"] == 8 and isinstance(saved[0]["duration_s"], float)
    assert records[-1]["logger"] == "loader.cli.progress" and records[-1]["stored"] == 988


def test_progress_bar_mode_renders_on_stderr(dsn: str, demo_file: Path) -> None:
    # Wide enough that rich shows every column.
    result = run(
        "load", str(demo_file), "-b", "B1", "--progress", "bar", "--dsn", dsn, env={"COLUMNS": "200"}
    )

    assert result.exit_code == 0
    assert "B1" in result.stderr and "1000/1000" in result.stderr and "images/s" in result.stderr


def test_skip_loads_only_the_rest_and_a_full_run_completes_it(
    dsn: str, db: psycopg.Connection[Any], demo_file: Path
) -> None:
    skipped = run("load", str(demo_file), "-b", "B1", "--skip", "600", "--dsn", dsn)
    assert skipped.exit_code == 0
    # The batch expects the whole file; only lines 601..1000 arrived.
    total, completed, failed, status = stored_totals(db, "B1")
    assert (total, completed + failed, status) == (1000, 400, "STARTED")

    full = run("load", str(demo_file), "-b", "B1", "--dsn", dsn)

    assert "unchanged 400" in full.stdout
    assert stored_totals(db, "B1") == (1000, 988, 12, "SUCCESS")
    assert row_counts(db)["ocr_executions"] == 998


def stored_content(dsn: str) -> dict[str, list[Any]]:
    """Every stored row without its timestamps, to compare two databases."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {
            table: [
                row[0]
                for row in conn.execute(
                    sql.SQL(
                        "SELECT to_jsonb(t) - ARRAY['created_at', 'updated_at', 'started_at', 'finished_at'] "
                        "FROM {} t ORDER BY id"
                    ).format(sql.Identifier(table))
                )
            ]
            for table in (
                "batch_executions",
                "chain_executions",
                "ocr_executions",
                "ocr_text_boxes",
                "load_rejects",
            )
        }


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_a_chunked_load_stores_and_reports_exactly_what_save_batch_chunk_by_chunk_does(
    templates: TemplateDatabases, demo_file: Path, source: str
) -> None:
    # The CLI judges the next chunk while it stores one; the outcome must not show it.
    chunk = 300
    cli_dsn, direct_dsn = templates.create(), templates.create()
    try:
        args = [str(demo_file)] if source == "file" else ["-", "--total", str(DEMO_IMAGES)]
        data = demo_file.read_bytes() if source == "stdin" else None
        result = run(
            "load", *args, "-b", "B1", "--chunk-size", str(chunk), "--json", "--dsn", cli_dsn, input=data
        )
        assert result.exit_code == 0, result.stderr
        loaded = json.loads(result.stdout)

        lines = lines_of(demo_file)
        with psycopg.connect(direct_dsn) as conn:
            register_batch(conn, "B1", DEMO_IMAGES)
            reports = [
                save_batch(conn, "B1", lines[first : first + chunk], position_offset=first)
                for first in range(0, len(lines), chunk)
            ]

        assert stored_content(cli_dsn) == stored_content(direct_dsn)
        fields = ("received", "stored", "failed", "rejected", "unchanged", "boxes", "statements", "attempts")
        assert {f: loaded[f] for f in fields} == {f: sum(getattr(r, f) for r in reports) for f in fields}
        assert loaded["issues"] == [i.model_dump(mode="json") for r in reports for i in r.issues]
        assert (loaded["chunks"], loaded["next_position"]) == (len(reports), DEMO_IMAGES)
    finally:
        templates.drop(cli_dsn)
        templates.drop(direct_dsn)


def test_a_read_error_in_a_later_chunk_keeps_the_chunks_before_it(
    dsn: str, db: psycopg.Connection[Any], demo_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The next chunk is read while this one is judged and stored: its read error
    # must still come after this chunk commits, as when chunks ran one by one.
    lines = lines_of(demo_file)
    lines[450] = b"x" * 5000
    demo_file.write_bytes(b"\n".join(lines) + b"\n")
    monkeypatch.setattr("loader.save.jsonl.MAX_LINE_BYTES", 4000)

    result = run("load", str(demo_file), "-b", "B1", "--chunk-size", "300", "--dsn", dsn)

    assert result.exit_code == 1
    assert "results.jsonl:451: line longer than" in result.stderr
    assert "lines before 301 are committed" in result.stderr and "--skip 300" in result.stderr
    total, completed, failed, status = stored_totals(db, "B1")
    assert (total, completed + failed, status) == (DEMO_IMAGES, 300, "STARTED")
    assert_totals_match_recount(db, "B1")


def test_an_empty_file_creates_no_batch(dsn: str, db: psycopg.Connection[Any], tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")

    result = run("load", str(empty), "-b", "E", "--dsn", dsn)

    assert result.exit_code == 0
    assert "nothing to load" in result.stderr
    assert row_counts(db)["batch_executions"] == 0


def test_a_total_contradicting_the_batch_is_refused(
    dsn: str, db: psycopg.Connection[Any], demo_file: Path
) -> None:
    with psycopg.connect(dsn) as conn:
        register_batch(conn, "B1", 5)

    result = run("load", str(demo_file), "-b", "B1", "--total", "1000", "--dsn", dsn)

    assert result.exit_code == 1
    assert "declared with total_images=5, but this call says 1000" in result.stderr
    assert row_counts(db)["ocr_executions"] == 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["load", "/nonexistent/x.jsonl", "-b", "B"], 1, "/nonexistent/x.jsonl: no such file"),
        (["load", "{tmp}", "-b", "B"], 1, "is a directory, not a JSONL file"),
        (["load", "{tmp}/broken.gz", "-b", "B"], 1, "broken.gz: not a readable gzip file"),
        (["load", "{tmp}/ok.jsonl"], 2, "Missing option '--batch-id'"),
        (["load", "{tmp}/ok.jsonl", "-b", "B", "--chunk-size", "0"], 2, "Invalid value for '--chunk-size'"),
        (["load", "-", "-", "-b", "B"], 1, "stdin ('-') can be read only once"),
        (["status", "--limit", "x"], 2, "'x' is not a valid integer"),
        (["rejects"], 2, "Missing argument 'BATCH_ID'"),
        (["frobnicate"], 2, "No such command 'frobnicate'"),
        (["status", "nope"], 1, "no batch 'nope' in this database"),
        (["rejects", "nope"], 1, "no batch 'nope' in this database"),
    ],
)
def test_bad_arguments_and_unreadable_files_give_one_line_and_a_nonzero_exit(
    dsn: str, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    (tmp_path / "broken.gz").write_bytes(gzip.compress(b'{"image_path": "/x"}\n' * 100)[:40])
    (tmp_path / "ok.jsonl").write_bytes(b"{}\n")

    result = run(*[a.replace("{tmp}", str(tmp_path)) for a in args], "--dsn", dsn)

    assert result.exit_code == code
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_an_unreachable_database_is_one_line_without_the_password() -> None:
    result = run("status", "--dsn", "postgresql://loader:s3cret-pw@127.0.0.1:1/ocr")

    assert result.exit_code == 1
    assert result.stderr.startswith("loader: error: cannot connect to PostgreSQL")
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1


def test_dsn_comes_from_loader_dsn_when_not_given(dsn: str, demo_file: Path) -> None:
    result = run("load", str(demo_file), "-b", "B1", env={"LOADER_DSN": dsn})

    assert result.exit_code == 0
    assert run("status", "B1", env={"LOADER_DSN": dsn}).stdout.startswith("batch B1: SUCCESS")


# ---------------------------------------------------------------------------
# loader status
# ---------------------------------------------------------------------------


def test_status_shows_totals_timing_and_failure_reasons_grouped(dsn: str, demo_file: Path) -> None:
    run("load", str(demo_file), "-b", "B1", "--dsn", dsn)

    result = run("status", "B1", "--dsn", dsn)

    assert result.exit_code == 0
    out = result.stdout
    assert out.startswith("batch B1: SUCCESS, 1,000 of 1,000 images accounted for (100.0%)")
    assert "failed     12  (10 stored as failed, 2 rejected)" in out
    assert "created    " in out and "last write" in out
    assert "failure reasons (6 kinds, most frequent first):" in out
    assert "  3  failed    OCR engine timeout after 30s" in out
    assert "2  failed    invalid OCR result: text_boxes[0].bbox: Input should be a valid list" in out
    assert "1  rejected  duplicate image_path (first at position 997)" in out


def test_status_json_groups_reasons_with_counts_that_add_up(
    dsn: str, db: psycopg.Connection[Any], demo_file: Path
) -> None:
    run("load", str(demo_file), "-b", "B1", "--dsn", dsn)

    data = json.loads(run("status", "B1", "--json", "--dsn", dsn).stdout)

    assert data["status"] == "SUCCESS" and data["percentage"] == 100.0
    assert (data["completed_images"], data["failed_images"], data["stored_failed"], data["rejected"]) == (
        988,
        12,
        10,
        2,
    )
    assert sum(g["images"] for g in data["failure_reasons"]) == data["failed_images"]
    kinds = {g["kind"]: g["images"] for g in data["failure_reasons"]}
    assert (
        kinds["invalid OCR result: text_boxes[N].confidence: Input should be less than or equal to N (got …)"]
        == 3
    )
    assert data["elapsed_s"] >= 0
    assert data["failure_reason_kinds"] == 6


def test_reasons_differing_only_in_values_fall_into_one_kind(dsn: str, tmp_path: Path) -> None:
    lines = [
        json.dumps(
            {"image_path": f"/r/{i}.jpg", "status": "failed", "error": f"timeout after {i}s on 'node-{i}'"}
        )
        for i in range(5)
    ]
    (tmp_path / "f.jsonl").write_text("\n".join(lines) + "\n")
    run("load", str(tmp_path / "f.jsonl"), "-b", "R", "--dsn", dsn)

    data = json.loads(run("status", "R", "--json", "--dsn", dsn).stdout)

    assert [(g["kind"], g["images"], g["variants"]) for g in data["failure_reasons"]] == [
        ("timeout after Ns on '…'", 5, 5)
    ]
    assert "(5 variants)" in run("status", "R", "--dsn", dsn).stdout


def test_status_without_id_lists_recent_and_unfinished_batches(dsn: str, demo_file: Path) -> None:
    with psycopg.connect(dsn) as conn:
        register_batch(conn, "waiting", 50)
    run("load", str(demo_file), "-b", "B1", "--dsn", dsn)

    listing = run("status", "--dsn", dsn).stdout.splitlines()
    unfinished = run("status", "--unfinished", "--dsn", dsn).stdout.splitlines()
    as_json = json.loads(run("status", "--json", "--limit", "1", "--dsn", dsn).stdout)

    assert listing[0].split() == [
        "batch_id",
        "status",
        "total",
        "completed",
        "failed",
        "%",
        "created",
        "last",
        "write",
    ]
    assert [row.split()[:2] for row in listing[1:]] == [["B1", "SUCCESS"], ["waiting", "PENDING"]]
    assert [row.split()[0] for row in unfinished[1:]] == ["waiting"]
    assert [b["batch_id"] for b in as_json] == ["B1"]


# ---------------------------------------------------------------------------
# loader rejects
# ---------------------------------------------------------------------------


def test_rejects_lists_positions_and_reasons_in_pages(dsn: str, demo_file: Path) -> None:
    run("load", str(demo_file), "-b", "B1", "--dsn", dsn)

    first = run("rejects", "B1", "--limit", "1", "--dsn", dsn)
    second = run("rejects", "B1", "--limit", "1", "--after", "998", "--dsn", dsn)
    as_json = [json.loads(x) for x in run("rejects", "B1", "--json", "--dsn", dsn).stdout.splitlines()]

    assert first.exit_code == 0
    assert "2 rejects in batch B1 (2 open, 0 resolved); showing 1:" in first.stdout
    assert "998" in first.stdout and "duplicate image_path (first at position 997)" in first.stdout
    assert "more: loader rejects B1 --after 998" in first.stdout
    assert "999" in second.stdout and "not valid JSON" in second.stdout
    assert [(r["position"], r["line"]) for r in as_json] == [(998, 999), (999, 1000)]
    assert as_json[1]["image_path"] is None


def test_exported_rejects_are_byte_exact_and_load_again_once_fixed(
    dsn: str, db: psycopg.Connection[Any], demo_file: Path, tmp_path: Path
) -> None:
    run("load", str(demo_file), "-b", "B1", "--dsn", dsn)
    export = tmp_path / "fixme.jsonl"

    # The compact (audit) form; the sparse one, loaded back in place, is in test_repair.py.
    result = run("rejects", "B1", "--export", str(export), "--compact", "--dsn", dsn)

    assert result.exit_code == 0
    assert "wrote 2 rejects" in result.stderr
    original = lines_of(demo_file)
    assert export.read_bytes() == original[998] + b"\n" + original[999] + b"\n"
    # Fix the cut line (the duplicate is dropped) and load it into the same batch.
    fixed = json.loads(original[997])
    fixed["image_path"] = fixed["image_path"].replace("0000997", "0000999")
    fixed["public_path"] = fixed["public_path"].replace("0000997", "0000999")
    export.write_text(json.dumps(fixed) + "\n")
    # Back at the cut line's own position (positions live inside the batch's total).
    reload = run("load", str(export), "-b", "B1", "--offset", "999", "--repair", "--dsn", dsn)
    assert reload.exit_code == 0, reload.stderr
    assert "stored 1 · failed 0 · rejected 0" in reload.stdout and "resolved 1 reject" in reload.stdout
    assert db.execute(
        "SELECT count(*) FROM ocr_executions WHERE image_path LIKE '%0000999.jpg'"
    ).fetchone() == (1,)


def test_export_refuses_to_overwrite_and_gzips_by_name(dsn: str, demo_file: Path, tmp_path: Path) -> None:
    run("load", str(demo_file), "-b", "B1", "--dsn", dsn)
    existing = tmp_path / "exists.jsonl"
    existing.write_bytes(b"keep me\n")

    refused = run("rejects", "B1", "--export", str(existing), "--dsn", dsn)
    # The sparse export: 998 empty lines, then the two rejects.
    sparse = run("rejects", "B1", "--export", str(tmp_path / "sparse.jsonl"), "--dsn", dsn)
    assert sparse.exit_code == 0 and lines_of(tmp_path / "sparse.jsonl")[:998] == [b""] * 998
    forced = run("rejects", "B1", "--export", str(existing), "--force", "--dsn", dsn)
    zipped = run("rejects", "B1", "--export", str(tmp_path / "r.jsonl.gz"), "--dsn", dsn)
    to_stdout = CliRunner().invoke(cli, ["rejects", "B1", "--export", "-", "--dsn", dsn])

    assert refused.exit_code == 1 and "exists" in refused.stderr
    assert forced.exit_code == 0 and existing.read_bytes() != b"keep me\n"
    assert zipped.exit_code == 0
    assert gzip.decompress((tmp_path / "r.jsonl.gz").read_bytes()) == existing.read_bytes()
    assert to_stdout.stdout_bytes == existing.read_bytes()


# ---------------------------------------------------------------------------
# loader schema
# ---------------------------------------------------------------------------


def test_schema_apply_deploys_once_and_then_changes_nothing(blank_dsn: str) -> None:
    first = run("schema", "apply", "--dsn", blank_dsn)
    second = run("schema", "apply", "--dsn", blank_dsn)

    assert first.exit_code == 0 and "deployed" in first.stdout
    assert second.exit_code == 0 and "nothing changed" in second.stdout
    assert run("schema", "check", "--dsn", blank_dsn).exit_code == 0


def test_commands_on_a_database_without_schema_say_how_to_deploy_it(blank_dsn: str, demo_file: Path) -> None:
    for args in (["status"], ["status", "B1"], ["load", str(demo_file), "-b", "B1"], ["schema", "check"]):
        result = run(*args, "--dsn", blank_dsn)
        assert result.exit_code == 1, args
        assert "loader schema apply" in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1


def test_schema_check_matches_a_fresh_deployment(dsn: str) -> None:
    result = run("schema", "check", "--dsn", dsn)

    assert result.exit_code == 0
    assert result.stdout.startswith("schema 'public' matches the package")
    assert "9 tables" in result.stdout  # version 5: ocr_result_history


def test_schema_check_prints_the_drift_and_exits_3(dsn: str, db: psycopg.Connection[Any]) -> None:
    db.execute("DROP INDEX task_logs_status_updated_idx")
    db.execute("CREATE INDEX ocr_by_status ON ocr_executions (status)")
    db.execute("ALTER TABLE load_rejects ALTER COLUMN reason DROP NOT NULL")
    db.execute("ALTER TABLE batch_executions ADD COLUMN note text")
    db.execute("GRANT DELETE ON load_rejects TO loader_writer")

    result = run("schema", "check", "--dsn", dsn)
    as_json = json.loads(run("schema", "check", "--json", "--dsn", dsn).stdout)

    assert result.exit_code == 3
    out = result.stdout
    assert "- index task_logs.task_logs_status_updated_idx: CREATE INDEX task_logs_status_updated_idx" in out
    assert "+ index ocr_executions.ocr_by_status: CREATE INDEX ocr_by_status ON ocr_executions" in out
    assert "+ column batch_executions.note: text" in out
    assert "~ column load_rejects.reason\n      package:  text NOT NULL\n      database: text\n" in out
    assert "~ grant load_rejects" in out
    assert as_json["matches"] is False
    assert set(as_json["extra"]) == {"index ocr_executions.ocr_by_status", "column batch_executions.note"}
    # Nothing of the scratch comparison is left behind.
    assert db.execute(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'loader_schema_check%'"
    ).fetchone() == (0,)


def test_schema_sql_prints_the_shipped_schema_file() -> None:
    result = run("schema", "sql")

    assert result.exit_code == 0
    assert result.stdout == schema_sql()
    assert result.stdout == (Path(__file__).parent.parent.parent / "schema.sql").read_text()


# ---------------------------------------------------------------------------
# loader demo
# ---------------------------------------------------------------------------


def test_demo_into_a_given_database_loads_reports_and_shows_status(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    result = run("demo", "--dsn", dsn)

    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "loaded 1,000 lines" in out and "4 chunks, 32 statements" in out
    assert "stored 988 · failed 10 · rejected 2" in out
    assert "1,000 unchanged, 0 stored, 0 rejected: nothing written twice" in out
    assert "failure reasons (6 kinds" in out
    (batch_id,) = db.execute("SELECT batch_id FROM batch_executions").fetchone()
    assert batch_id.startswith("demo-")
    assert stored_totals(db, batch_id) == (1000, 988, 12, "SUCCESS")


def test_demo_without_a_dsn_runs_an_embedded_postgres() -> None:
    result = run("demo", "--images", "200", env={"LOADER_DSN": None})

    assert result.exit_code == 0, result.stderr
    assert "starting a throw-away PostgreSQL" in result.stdout
    assert "loaded 200 lines" in result.stdout and "SUCCESS, 200 of 200 images" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("status", "b1"),
        ("schema", "check"),
        ("schema", "upgrade"),
        ("schema", "apply"),
    ],
)
def test_an_unparsable_dsn_is_one_line_that_never_shows_the_password(args: tuple[str, ...]) -> None:
    # libpq's own parse error would quote the part after the space: the password.
    result = run(*args, "--dsn", "postgresql://loader:s3cr3t word@127.0.0.1/db")

    assert result.exit_code == 1
    assert "s3cr3t" not in result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "DSN cannot be parsed" in result.stderr
