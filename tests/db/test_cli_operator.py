"""What a new operator runs into: binary input, resuming, narrow terminals, repaired failures."""

from __future__ import annotations

import io
import json
import lzma
import random
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from helpers.checks import LoginRole, row_counts
from rich.console import Console

from loader.cli import cli
from loader.cli.base import Session
from loader.cli.display import make_bar
from loader.cli.resume import resume_command
from loader.demo import write_demo_file


def run(*args: str, input: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def jsonl(n: int, *, status: str = "success", prefix: str = "/img") -> bytes:
    rows = [
        {
            "image_path": f"{prefix}/{i}.jpg",
            "public_path": f"https://cdn.example/{i}.jpg",
            "status": status,
            **({"error": "OCR engine timeout"} if status == "failed" else {}),
            "text_boxes": (
                [{"text": "합계", "confidence": 0.9, "bbox": [[0, 0], [1, 0], [1, 1], [0, 1]]}]
                if status == "success"
                else []
            ),
        }
        for i in range(n)
    ]
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows)


def _random_bytes() -> bytes:
    return random.Random(7).randbytes(200_000)


def _invalid_utf8() -> bytes:
    # High bytes only (no NUL, no newline inside), cut into "lines": text in no encoding.
    rng = random.Random(8)
    return b"\n".join(bytes(rng.randrange(0x80, 0x100) for _ in range(120)) for _ in range(600)) + b"\n"


BINARY_INPUTS = {
    "random bytes": (_random_bytes, "not JSON lines"),
    "xz-compressed JSONL": (lambda: lzma.compress(jsonl(50)), "xz-compressed"),
    "UTF-16 JSONL (NUL bytes)": (lambda: jsonl(50).decode().encode("utf-16-le"), "NUL bytes"),
    "mostly invalid UTF-8": (_invalid_utf8, "invalid UTF-8"),
}


@pytest.mark.parametrize("kind", list(BINARY_INPUTS))
def test_binary_input_is_refused_before_any_batch_is_created(
    dsn: str, db: psycopg.Connection[Any], tmp_path: Path, kind: str
) -> None:
    make, words = BINARY_INPUTS[kind]
    path = tmp_path / "input.jsonl"
    path.write_bytes(make())

    from_file = run("load", str(path), "-b", "BIN", "--dsn", dsn)
    from_stdin = run("load", "-", "-b", "BIN", "--total", "10", "--dsn", dsn, input=path.read_bytes())

    for result in (from_file, from_stdin):
        assert result.exit_code == 1
        assert result.stderr.count("\n") == 1 and words in result.stderr, result.stderr
        assert "nothing was loaded" in result.stderr
    assert row_counts(db)["batch_executions"] == 0
    assert all(count == 0 for count in row_counts(db).values())


def test_a_json_file_with_a_few_binary_lines_still_loads_and_rejects_them(
    dsn: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    lines = jsonl(20).split(b"\n")[:-1]
    lines[3] = b"\xff\xfe junk \x00 here"
    lines[9] = b"\x80\x81\x82"
    path = tmp_path / "mostly-fine.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    result = run("load", str(path), "-b", "OK", "--dsn", dsn)

    assert result.exit_code == 0, result.stderr
    assert "stored 18 · failed 0 · rejected 2" in result.stdout


def test_rerunning_ocr_on_stored_failures_is_reported_as_replaced(dsn: str, tmp_path: Path) -> None:
    failed, fixed = tmp_path / "failed.jsonl", tmp_path / "fixed.jsonl"
    failed.write_bytes(jsonl(5, status="failed"))
    fixed.write_bytes(jsonl(5))
    assert run("load", str(failed), "-b", "R", "--dsn", dsn).exit_code == 0

    as_json = run("load", str(fixed), "-b", "R", "--json", "--chunk-size", "2", "--replace", "--dsn", dsn)
    again = run("load", str(failed), "-b", "R", "--dsn", dsn)

    report = json.loads(as_json.stdout)
    assert (report["stored"], report["replaced"], report["chunks"]) == (0, 5, 3)
    assert report["progress"]["completed_images"] == 5 and report["progress"]["failed_images"] == 0
    # Without --replace the first write is kept: the failures sent again change nothing.
    assert "unchanged 5" in again.stdout and "replaced" not in again.stdout


def test_the_text_summary_says_how_many_results_were_replaced(dsn: str, tmp_path: Path) -> None:
    failed, fixed = tmp_path / "failed.jsonl", tmp_path / "fixed.jsonl"
    failed.write_bytes(jsonl(4, status="failed"))
    fixed.write_bytes(jsonl(4))
    run("load", str(failed), "-b", "R", "--dsn", dsn)

    text = run("load", str(fixed), "-b", "R", "--repair", "--dsn", dsn).stdout

    assert "stored 0 · failed 0" in text
    assert "replaced 4 stored result(s) in place" in text


def test_the_resume_hint_repeats_a_typed_dsn_but_never_its_password() -> None:
    typed = Session("postgresql://ocr:s3cret-pw@db.internal:5433/ocr", dsn_typed=True)
    from_env = Session("postgresql://ocr:s3cret-pw@db.internal/ocr", dsn_typed=False)
    plain = Session("postgresql://ocr@db.internal/ocr", dsn_typed=True)

    with_password = resume_command(("a.jsonl",), "B1", 5000, 500, typed)
    via_env = resume_command(("a.jsonl",), "B1", 5000, 500, from_env)
    without_password = resume_command(("a.jsonl",), "B1", 5000, 500, plain)

    assert "s3cret-pw" not in with_password
    assert re.search(r"--dsn '[^']*host=db\.internal[^']*port=5433[^']*' --skip 500", with_password)
    assert "PGPASSWORD" in with_password
    assert "--dsn" not in via_env and via_env.endswith("--skip 500")
    assert without_password.endswith("--dsn postgresql://ocr@db.internal/ocr --skip 500")


def test_a_failed_load_prints_a_resume_command_that_reaches_the_same_database(
    login_role: Callable[..., LoginRole],
    dsn: str,
    db: psycopg.Connection[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_demo_file(tmp_path / "r.jsonl", 600, "D").path
    lines = path.read_bytes().split(b"\n")[:-1]
    lines[450] = b"x" * 5000
    path.write_bytes(b"\n".join(lines) + b"\n")
    monkeypatch.setattr("loader.save.jsonl.MAX_LINE_BYTES", 4000)
    # A DSN whose password the server checks (scram) and the hint must never repeat.
    role = login_role("resumer", in_role="loader_writer")
    monkeypatch.delenv("PGPASSWORD", raising=False)

    result = run("load", str(path), "-b", "D", "--chunk-size", "300", "--dsn", role.dsn(dsn))

    assert result.exit_code == 1
    assert role.password not in result.stderr
    hint = result.stderr.split("resume with: ", 1)[1]
    command, advice = hint.split("  #", 1)
    assert "--dsn" in command and command.rstrip().endswith("--skip 300") and "PGPASSWORD" in advice
    monkeypatch.undo()
    lines[450] = lines[449].replace(b"/449", b"/450-fixed")
    path.write_bytes(b"\n".join(lines) + b"\n")
    # Follow the hint as printed: its command, the password where it says.
    monkeypatch.setenv("PGPASSWORD", role.password)
    resumed = run(*shlex.split(command)[1:])  # after "loader"
    assert resumed.exit_code == 0, resumed.stderr
    assert row_counts(db)["ocr_executions"] + row_counts(db)["load_rejects"] == 600


def test_an_80_column_progress_line_keeps_the_bar_the_counts_and_the_eta() -> None:
    now = [0.0]
    console = Console(width=80, file=io.StringIO(), force_terminal=True, color_system=None, record=True)
    bar = make_bar("2026-11-27-nightly-backfill-of-the-archive", 1_000_000, console, get_time=lambda: now[0])
    task = bar.add_task(
        "2026-11-27-nightly-backfill-of-the-archive",
        total=1_000_000,
        rate="",
        stored=0,
        failed=0,
        rejected=0,
        unchanged=0,
    )
    for done in (100_000, 200_000, 250_000):
        now[0] += 10.0
        bar.update(
            task, completed=done, rate="10,000 images/s", stored=done, failed=0, rejected=0, unchanged=0
        )

    console.print(bar.get_renderable())
    lines = console.export_text().rstrip("\n").splitlines()

    assert len(lines) == 1 and len(lines[0]) <= 80, lines
    line = lines[0]
    assert "━" in line
    assert "250000/1000000" in line
    assert re.search(r"ETA \d+:\d\d:\d\d", line), line
    assert "…" in line  # the batch id is cut, not the essentials


def test_a_wide_progress_line_adds_the_rate_and_the_counts() -> None:
    console = Console(width=200, file=io.StringIO(), force_terminal=True, color_system=None, record=True)
    bar = make_bar("B1", 1000, console)
    task = bar.add_task("B1", total=1000, rate="5,000 images/s", stored=7, failed=1, rejected=2, unchanged=0)
    bar.update(task, completed=10)

    console.print(bar.get_renderable())
    line = console.export_text()

    assert "5,000 images/s" in line and "stored 7 · failed 1 · rejected 2" in line and "10/1000" in line
