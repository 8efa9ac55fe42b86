"""The installed `loader` console script, run as a real process: exit codes, signals, stderr."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers.checks import assert_totals_match_recount, row_counts, stored_totals

from loader.demo import write_demo_file

LOADER = Path(sys.executable).parent / "loader"
# Lines of the interrupted load and its chunk size: 40 chunks, several seconds of
# work, so a signal sent after the first chunk lands well before the end.
BIG_LINES = 20_000
BIG_CHUNK = 500


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_file(tmp_path_factory.mktemp("big") / "big.jsonl", BIG_LINES, "BIG").path


def env_with(dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LOADER_DSN"] = dsn
    return env


def start_load(dsn: str, path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(LOADER), "load", str(path), "--batch-id", "BIG", "--chunk-size", str(BIG_CHUNK), *extra],
        # The last --chunk-size given wins.
        env=env_with(dsn),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_first_chunk(proc: subprocess.Popen[str]) -> list[str]:
    """Read stderr until the first progress line (written after the first commit)."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "loader.cli.progress: progress" in line:
            return seen
    pytest.fail(f"the load ended before its first progress line: {''.join(seen)}")


def test_console_script_loads_with_plain_progress_when_not_a_terminal(dsn: str, tmp_path: Path) -> None:
    path = write_demo_file(tmp_path / "r.jsonl", 1000, "P").path

    load = subprocess.run(
        [str(LOADER), "load", str(path), "-b", "P", "--chunk-size", "400"],
        env=env_with(dsn),
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    status = subprocess.run(
        [str(LOADER), "status", "P", "--json"],
        env=env_with(dsn),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert load.returncode == 0, load.stderr
    assert "loaded 1,000 lines into batch P" in load.stdout
    progress = [line for line in load.stderr.splitlines() if "loader.cli.progress" in line]
    assert "progress batch_id=P lines=400 total_lines=1000" in progress[0]
    assert "done batch_id=P lines=1000 total_lines=1000 percent=100.0 stored=988" in progress[-1]
    assert "\x1b[" not in load.stderr  # no terminal control codes in a log
    assert json.loads(status.stdout)["completed_images"] == 988


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_after_the_current_chunk_and_the_printed_command_resumes(
    dsn: str, db: psycopg.Connection[Any], big_file: Path, signum: int, code: int
) -> None:
    proc = start_load(dsn, big_file, "--progress", "plain")
    wait_for_first_chunk(proc)

    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == code, err
    assert "stopping after the chunk in flight" in err
    assert "Traceback" not in err
    hint = err.split("Resume with:\n", 1)[1].splitlines()[0].strip()
    committed = int(hint.rsplit("--skip ", 1)[1])
    # Whole chunks only: what was committed is exactly what the batch accounts for.
    assert 0 < committed < BIG_LINES and committed % BIG_CHUNK == 0
    total, completed, failed, status = stored_totals(db, "BIG")
    assert (total, completed + failed, status) == (BIG_LINES, committed, "STARTED")
    assert_totals_match_recount(db, "BIG")
    assert f"loaded {committed:,} lines" in out

    args = shlex.split(hint)
    assert args[:2] == ["loader", "load"]
    resumed = subprocess.run(
        [str(LOADER), *args[1:]], env=env_with(dsn), check=False, capture_output=True, text=True, timeout=300
    )

    assert resumed.returncode == 0, resumed.stderr
    assert stored_totals(db, "BIG")[3] == "SUCCESS"
    assert_totals_match_recount(db, "BIG")
    counts = row_counts(db)
    assert counts["ocr_executions"] + counts["load_rejects"] == BIG_LINES


def test_a_second_ctrl_c_rolls_back_the_chunk_in_flight_and_keeps_the_committed_ones(
    dsn: str, db: psycopg.Connection[Any], big_file: Path
) -> None:
    # Saving 5,000 images takes most of a second: both signals land while the second chunk is saved.
    chunk = 5000
    proc = start_load(dsn, big_file, "--progress", "plain", "--chunk-size", str(chunk), "--verbose")
    wait_for_first_chunk(proc)
    assert proc.stderr is not None
    for line in proc.stderr:
        if f"chunk read batch_id=BIG lines={chunk + 1}-" in line:
            break  # the second chunk is being saved now

    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)  # two signals at once may be delivered as one
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)

    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"interrupted: the chunk in flight was rolled back; lines before {chunk + 1} are committed" in err
    assert f"--batch-id BIG --skip {chunk}\n" in err  # 5,000 is the default chunk size
    _total, completed, failed, status = stored_totals(db, "BIG")
    assert (completed + failed, status) == (chunk, "STARTED")
    assert_totals_match_recount(db, "BIG")
    assert row_counts(db)["ocr_executions"] + row_counts(db)["load_rejects"] == chunk


def test_errors_in_a_real_process_are_one_line_without_traceback_or_password(tmp_path: Path) -> None:
    path = write_demo_file(tmp_path / "r.jsonl", 3, "E").path
    dsn = "postgresql://loader:pa55word-xyz@127.0.0.1:1/ocr"

    unreachable = subprocess.run(
        [str(LOADER), "load", str(path), "-b", "E", "--dsn", dsn],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    missing = subprocess.run(
        [str(LOADER), "load", str(tmp_path / "missing.jsonl"), "-b", "E"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert unreachable.returncode == 1
    assert unreachable.stderr.count("\n") == 1 and "cannot connect to PostgreSQL" in unreachable.stderr
    assert "pa55word-xyz" not in unreachable.stderr + unreachable.stdout
    assert missing.returncode == 1
    assert missing.stderr == f"loader: error: {tmp_path / 'missing.jsonl'}: no such file\n"
