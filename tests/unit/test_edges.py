"""Pure functions behind the overlap issue's robustness items: DSN redaction through
libpq's parser, one escaping rule, notification payloads, ISO 8601 dates, bounded gzip."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import click
import pytest

from loader.cli.delete import IsoDateTime
from loader.errors import printable, quoted, redact_dsn
from loader.progress.read import event_batch_id
from loader.save.jsonl import GzipBombError, Sources

SECRET = "hunter2"


@pytest.mark.parametrize(
    "dsn",
    [
        r"host=db user=u password=hunter2\ x dbname=ocr",
        r"host=db password='hunter2\' x' dbname=ocr",
        "postgresql://u:hunter2%20x@db/ocr",
        "postgresql://u:hunter2@db:5432/ocr?sslmode=require",
        "postgresql://u@db/ocr?password=hunter2%20x",
        "postgres://u:hunter2@[::1]:5432,db2/ocr",
    ],
)
def test_a_dsns_password_is_hidden_however_it_is_written(dsn: str) -> None:
    shown = redact_dsn(dsn)
    assert SECRET not in shown and " x" not in shown, shown
    assert "password=***" in shown


def test_a_password_quoted_in_a_message_is_hidden_up_to_its_escaped_space() -> None:
    shown = redact_dsn(r"could not connect with 'host=db password=hunter2\ x': refused")
    assert SECRET not in shown and " x" not in shown and shown.endswith(" refused")


def test_text_without_a_dsn_is_left_alone() -> None:
    assert redact_dsn("batch 'B' stored 10 of 10") == "batch 'B' stored 10 of 10"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("evil\x1b]0;x\x07", "evil\\x1b]0;x\\x07"),
        ("line\nbreak\ttab\r", "line\\nbreak\\ttab\\r"),
        ("rtl\u202eoverride", "rtl\\u202eoverride"),
        ("c1\x9bcsi", "c1\\x9bcsi"),
        ("café ünïcode", "café ünïcode"),
    ],
)
def test_printable_escapes_every_character_a_terminal_acts_on(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_printable_keeps_the_layout_asked_for_and_quoted_escapes_too() -> None:
    assert printable("a\nb\x1b", keep="\n") == "a\nb\\x1b"
    assert "\x1b" not in quoted("id\x1b[2J")


@pytest.mark.parametrize(
    "payload",
    [
        "[" * 3000 + "]" * 3000,
        "{" * 100_000,
        '{"batch_id": ' + "[" * 5000 + "]" * 5000 + "}",
        "\x00",
        "1e999999",
    ],
)
def test_any_payload_that_cannot_be_read_is_ignored(payload: str) -> None:
    assert event_batch_id(payload) is None


def test_a_payload_naming_a_batch_is_read() -> None:
    assert event_batch_id(json.dumps({"batch_id": "B"})) == "B"


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("2026-12-07", datetime(2026, 12, 7, tzinfo=UTC)),
        ("2026-12-07 16:42:50", datetime(2026, 12, 7, 16, 42, 50, tzinfo=UTC)),
        ("2026-12-07T16:42:50", datetime(2026, 12, 7, 16, 42, 50, tzinfo=UTC)),
        ("2026-12-07T16:42:50Z", datetime(2026, 12, 7, 16, 42, 50, tzinfo=UTC)),
        ("2026-12-07T18:42:50+02:00", datetime(2026, 12, 7, 16, 42, 50, tzinfo=UTC)),
        ("2026-12-07 16:42:50.250", datetime(2026, 12, 7, 16, 42, 50, 250000, tzinfo=UTC)),
    ],
)
def test_finished_before_reads_iso_8601_as_people_type_it(typed: str, meant: datetime) -> None:
    assert IsoDateTime().convert(typed, None, None) == meant


def test_finished_before_refuses_what_is_no_date_with_examples() -> None:
    with pytest.raises(click.BadParameter, match=r"ISO 8601.*2026-09-01 16:42:50"):
        IsoDateTime().convert("last tuesday\x1b", None, None)


def test_a_gzip_bomb_of_newlines_is_refused_with_one_line(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.jsonl.gz"
    bomb.write_bytes(gzip.compress(b"\n" * 5_000_000, 9))
    assert bomb.stat().st_size < 6000  # the 4.9 KB
    lines = 0
    with pytest.raises(GzipBombError) as refused:
        for _ in Sources([str(bomb)]).lines():
            lines += 1
    assert lines < 5_000_000
    assert len(str(refused.value).splitlines()) == 1 and "gunzip" in str(refused.value)


def test_ordinary_gzip_jsonl_reads_whole(tmp_path: Path) -> None:
    rows = [json.dumps({"image_path": f"/img/{i}.png", "text_boxes": []}).encode() for i in range(20_000)]
    source = tmp_path / "ok.jsonl.gz"
    source.write_bytes(gzip.compress(b"\n".join(rows) + b"\n"))
    assert [line for _, line in Sources([str(source)]).lines()] == rows


_CTRL_C_WHILE_IMPORTING = (
    "import os, signal, sys, time\n"
    "sys.argv[0] = {argv0!r}\n"
    "import loader\n"  # the guard is loader's first import
    "os.kill(os.getpid(), signal.SIGINT)\n"  # as if Ctrl-C came while the rest still loads
    "time.sleep(30)\n"
)


def test_ctrl_c_while_the_command_starts_prints_one_line_and_no_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CTRL_C_WHILE_IMPORTING.format(argv0="/usr/bin/loader")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (130, "loader: interrupted\n")


def test_importing_loader_as_a_library_keeps_pythons_ctrl_c() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CTRL_C_WHILE_IMPORTING.format(argv0="app.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "KeyboardInterrupt" in done.stderr
