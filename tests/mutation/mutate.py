"""Mutation testing of the merge (loader/sql/save.sql, query `merge`): `python3 dev.py mutate`.

Each mutant of tests/mutation/mutants.py changes one piece of the merge's logic (a
WHERE condition, a verdict, an ORDER BY, a join, a counter). For each, the merge's
tests run against a copy of the repository whose save.sql carries the mutant; the
mutant is caught when they fail. The working tree is never written: the copy lives in
a temporary directory, so an interrupted run leaves nothing changed.

    python3 dev.py mutate                 # every mutant; exit 1 below THRESHOLD
    python3 dev.py mutate NAME ...        # only these mutants
    python3 dev.py mutate --list          # the mutants, checked against save.sql, not run

Needs what the tests need (LOADER_TEST_DSN, else Docker, else embedded PostgreSQL).
Not part of CI: a full run takes minutes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutants import MUTANTS, Mutant  # beside this file, which runs as a script

ROOT = Path(__file__).resolve().parents[2]
SAVE_SQL = Path("loader") / "sql" / "save.sql"
# What the copy needs to run the tests: the package, the tests, their configuration,
# and the files tests read (README's identity table, the DBA schema).
COPIED = ("loader", "tests", "pyproject.toml", "README.md", "schema.sql")
# The merge's tests: the identity table first (fast, and it tests the merge by parts),
# then the end-to-end tests of the batch's life and of overlapping inputs.
TESTS = (
    "tests/db/test_identity_table.py",
    "tests/db/test_batch_life.py",
    "tests/db/test_overlap_verdicts.py",
    "tests/db/test_derived_chain_ids.py",
    "tests/db/test_reocr_sent_again.py",
    "tests/db/test_overlap_core.py",
)
# Share of applied mutants the tests must catch (issue 23: at least 90%).
THRESHOLD = 0.9
# At least this many mutants for a full run to count (issue 23).
MIN_MUTANTS = 30
# Seconds one test may take before pytest-timeout fails it: a mutant that makes the
# merge hang (a lock wait, a runaway join) is caught as a failure, not waited for.
PER_TEST_TIMEOUT = 60
# Seconds one whole run of the tests may take (the unmutated run takes ~30 s on a
# busy two-core machine); past it the run is killed and the mutant counted as caught.
PER_RUN_TIMEOUT = 600
# A mutant every test must notice: the merge cannot even be parsed. Run first, so a
# copy that does not import its own loader/ (and would pass every mutant) is found.
CANARY = Mutant("canary: the merge does not parse", "WITH\nflags AS (", "WITH\nflags AS (SELECT FROM", "")


@dataclass(frozen=True)
class Verdict:
    mutant: Mutant
    caught: bool
    seconds: float
    detail: str  # the first failing test, or why the run ended


def merge_block(text: str) -> tuple[int, int]:
    """Where the merge query's text is in save.sql: [start, end)."""
    start = text.index("-- name: merge\n")
    following = text.find("\n-- name: ", start + 1)
    return start, len(text) if following < 0 else following


def check_mutants(text: str, mutants: tuple[Mutant, ...]) -> list[str]:
    """What is wrong with the mutant list against this save.sql: each old text must occur
    exactly once in the file, inside the merge; names must be unique; new must differ."""
    start, end = merge_block(text)
    problems = []
    names = [m.name for m in mutants]
    problems += [f"{name}: named twice" for name in sorted({n for n in names if names.count(n) > 1})]
    for m in mutants:
        found = text.count(m.old)
        if found != 1:
            problems.append(
                f"{m.name}: its old text occurs {found} times in {SAVE_SQL} (must be exactly once)"
            )
        elif not start <= text.index(m.old) < end:
            problems.append(f"{m.name}: its old text is outside the merge query")
        if m.old == m.new:
            problems.append(f"{m.name}: old and new text are the same")
    return problems


def copy_repository(into: Path) -> None:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif source.exists():
            shutil.copy2(source, into / name)


def run_tests(copy: Path, tests: tuple[str, ...]) -> tuple[int | None, str]:
    """Run the tests in the copy; (return code or None on timeout, pytest's output)."""
    env = dict(os.environ)
    # The copy's loader/ first: the shared venv also holds an editable install of the
    # main checkout, which must not be what the tests import.
    env["PYTHONPATH"] = os.pathsep.join([str(copy), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "-x",
        "--no-header",
        f"--timeout={PER_TEST_TIMEOUT}",
        *tests,
    ]
    try:
        done = subprocess.run(
            command, cwd=copy, env=env, capture_output=True, text=True, timeout=PER_RUN_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout if isinstance(expired.stdout, str) else (expired.stdout or b"").decode()
        return None, out
    return done.returncode, done.stdout + done.stderr


def first_failure(output: str) -> str:
    found = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    return found.group(1) if found else "(no FAILED line)"


def try_mutant(copy: Path, original: str, mutant: Mutant, tests: tuple[str, ...]) -> Verdict:
    (copy / SAVE_SQL).write_text(original.replace(mutant.old, mutant.new, 1), encoding="utf-8")
    began = time.monotonic()
    code, output = run_tests(copy, tests)
    seconds = time.monotonic() - began
    (copy / SAVE_SQL).write_text(original, encoding="utf-8")
    if code is None:
        return Verdict(mutant, True, seconds, f"the run passed {PER_RUN_TIMEOUT} s (killed)")
    if code == 0:
        return Verdict(mutant, False, seconds, "every test passed")
    if code == 1:
        return Verdict(mutant, True, seconds, first_failure(output))
    # 2-5: interrupted, internal error, usage error, nothing collected: not the mutant's doing.
    sys.exit(f"mutate: pytest ended with status {code} under mutant {mutant.name!r}:\n{output[-3000:]}")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dev.py mutate", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only these mutants (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants (checked against save.sql)")
    parser.add_argument(
        "--tests", nargs="+", default=list(TESTS), help=f"test paths (default: {' '.join(TESTS)})"
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    original = (ROOT / SAVE_SQL).read_text(encoding="utf-8")
    problems = check_mutants(original, (*MUTANTS, CANARY))
    if problems:
        print(f"mutate: the mutant list no longer fits {SAVE_SQL}:", *problems, sep="\n  ", file=sys.stderr)
        return 2
    chosen = tuple(m for m in MUTANTS if not args.names or m.name in args.names)
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        print(f"mutate: no mutant named {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.why}")
        print(f"{len(chosen)} mutants, each old text found once in the merge")
        return 0
    tests = tuple(args.tests)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="loader-mutate-") as tmp:
        copy = Path(tmp)
        copy_repository(copy)
        code, output = run_tests(copy, tests)
        if code != 0:
            print(f"mutate: the tests fail without any mutant:\n{output[-3000:]}", file=sys.stderr)
            return 2
        print(f"unmutated: the tests pass ({time.monotonic() - began:.0f} s)", flush=True)
        if not try_mutant(copy, original, CANARY, tests).caught:
            print("mutate: the canary survived: the copy does not run its own save.sql", file=sys.stderr)
            return 2
        verdicts = []
        for n, mutant in enumerate(chosen, start=1):
            verdict = try_mutant(copy, original, mutant, tests)
            verdicts.append(verdict)
            word = "caught  " if verdict.caught else "SURVIVED"
            print(
                f"{n:3}/{len(chosen)} {word} {mutant.name:<46} {verdict.seconds:6.1f} s  {verdict.detail}",
                flush=True,
            )
    return report(verdicts, time.monotonic() - began, full=not args.names)


def report(verdicts: list[Verdict], seconds: float, *, full: bool) -> int:
    caught = sum(v.caught for v in verdicts)
    score = caught / len(verdicts) if verdicts else 0.0
    print(f"\nmutation score: {caught} caught / {len(verdicts)} applied = {score:.0%} in {seconds:.0f} s")
    for v in verdicts:
        if not v.caught:
            print(f"  survived: {v.mutant.name}: {v.mutant.why}")
    if score < THRESHOLD:
        print(f"mutate: below the threshold of {THRESHOLD:.0%}", file=sys.stderr)
        return 1
    if full and len(verdicts) < MIN_MUTANTS:
        print(f"mutate: fewer than {MIN_MUTANTS} mutants", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        # The temporary copy is gone with its directory; the working tree was never written.
        sys.exit("mutate: interrupted (the working tree was never written)")
