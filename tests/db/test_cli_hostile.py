"""What the commands print when ids, paths and reasons hold what a terminal would act on, or are huge."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg.conninfo import make_conninfo

from loader import save_batch
from loader.cli import cli
from loader.errors import ConfigurationError, DatabaseError
from loader.progress.read import follow_progress

# ESC, BEL, CSI (C1), DEL, carriage return: anything a terminal acts on.
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
TITLE = "\x1b]0;pwned\x07"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def assert_no_raw_control(result: Result) -> None:
    for text in (result.stdout, result.stderr):
        assert not RAW_CONTROL.search(text), repr(text)


@pytest.fixture
def evil(conn: psycopg.Connection[Any], db: psycopg.Connection[Any]) -> str:
    """A batch whose paths, reasons and a neighbour's id carry control characters."""
    save_batch(
        conn,
        "b",
        [
            {"image_path": f"s3://x/{TITLE}1.jpg", "status": "success", "text_boxes": []},
            {"image_path": "s3://x/2.jpg", "status": "failed", "error": "bad \x1b[2J\x9b31m thing\nsecond"},
            {"image_path": f"s3://x/{TITLE}3.jpg", "status": "bogus\x1b[5m"},
            {"image_path": f"s3://x/{TITLE}1.jpg", "status": "failed", "error": "again"},
            "not json \x1b[31m\r",
        ],
    )
    # Written by something other than the loader, which now refuses such an id.
    db.execute("INSERT INTO batch_executions (batch_id, total_images) VALUES (%s, 1)", (f"e{TITLE}\nrow",))
    return "b"


def test_status_and_rejects_escape_every_control_character(dsn: str, evil: str) -> None:
    listed = run("status", "--dsn", dsn)
    one = run("status", evil, "--dsn", dsn)
    rejects = run("rejects", evil, "--dsn", dsn)
    as_json = run("status", "--json", "--dsn", dsn)
    exported = run("rejects", evil, "--export", "-", "--compact", "--dsn", dsn)

    for result in (listed, one, rejects, as_json):
        assert result.exit_code == 0, result.output
        assert_no_raw_control(result)
    # One line per batch under the header: the newline in the id did not split its row.
    assert len(listed.stdout.splitlines()) == 3
    assert "e\\x1b]0;pwned\\x07\\nrow" in listed.stdout
    assert "\\x1b[2J\\x9b31m" in one.stdout
    assert "s3://x/\\x1b]0;pwned\\x071.jpg" in rejects.stdout
    assert '"e\\u001b]0;pwned\\u0007\\nrow"' in as_json.stdout
    # An export is the raw input, byte for byte: it goes to a file, not a terminal.
    assert "\x1b[31m" in exported.stdout


def test_a_batch_id_with_a_control_character_is_refused(conn: psycopg.Connection[Any]) -> None:
    for batch_id in (f"a{TITLE}", "a\nb", "tab\there", "c1\x9b"):
        with pytest.raises(ConfigurationError, match=r"control character U\+00"):
            save_batch(conn, batch_id, [{"image_path": "s3://x/1.jpg", "status": "success"}])


@pytest.mark.parametrize("batch_id", ["x" * 256, "가" * 700, "가" * 5000])
def test_a_long_batch_id_is_told_the_character_limit(conn: psycopg.Connection[Any], batch_id: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        save_batch(conn, batch_id, [{"image_path": "s3://x/1.jpg", "status": "success"}])
    message = str(caught.value)
    assert f"longer than 255 characters ({len(batch_id):,})" in message
    assert "bytes" not in message
    assert len(message) < 300


@pytest.mark.parametrize("command", ["status", "rejects"])
def test_a_huge_unknown_id_is_quoted_cut_short(dsn: str, command: str) -> None:
    result = run(command, "q" * 5000, "--dsn", dsn)

    assert result.exit_code == 1
    assert "q" * 80 + "'… (5,000 characters)" in result.stderr
    assert len(result.stderr) < 400


def test_a_limit_beyond_bigint_is_a_usage_error(dsn: str) -> None:
    result = run("status", "--limit", str(10**20), "--dsn", dsn)

    assert result.exit_code == 2
    assert "--limit" in result.stderr and "bigint" not in result.stderr


def test_a_lost_follow_connection_says_following_stopped_not_retry_the_save(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any], dsn: str
) -> None:
    save_batch(conn, "b", [{"image_path": "s3://x/1.jpg", "status": "success"}], total_images=2)
    follow = follow_progress(make_conninfo(dsn, application_name="follow-under-test"), "b")
    assert next(follow).completed_images == 1  # listening now

    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'follow-under-test'"
    )
    with pytest.raises(DatabaseError) as caught:
        next(follow)

    message = str(caught.value)
    assert "following stopped; the batch and its load are not affected" in message
    assert "loader status b --follow" in message
    assert "replay" not in message
