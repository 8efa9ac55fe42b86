#!/usr/bin/env python3
"""Developer entry point; needs only Python 3.11+ (standard library).

    python3 dev.py demo     # load a generated 1000-image batch into an embedded PostgreSQL
    python3 dev.py test     # the test suite (LOADER_TEST_DSN, else Docker, else embedded PostgreSQL)
    python3 dev.py check    # ruff + mypy
    python3 dev.py bench    # benchmarks (add --smoke for a few-second run)

The first run creates .venv/ beside this file and installs the project into it
(editable, with its dev extra); later runs reinstall only when pyproject.toml changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".installed-from"


def _run(*cmd: str | Path, env: dict[str, str] | None = None) -> int:
    return subprocess.call([str(c) for c in cmd], cwd=ROOT, env=env)


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036  (this file runs before the venv exists)
        sys.exit(f"loader needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == wanted and (BIN / "loader").exists():
        return
    if not (BIN / "python").exists():
        print(f"creating {VENV.relative_to(ROOT)}/ ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing loader and its dev dependencies into .venv/ ...", flush=True)
    pip = [BIN / "python", "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if _run(*pip, "-e", ".[dev]") != 0:
        sys.exit("installing the project failed (see pip's output above)")
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    ensure_venv()
    if command == "demo":
        return _run(BIN / "loader", "demo", *rest)
    if command == "test":
        return _run(BIN / "python", "-m", "pytest", *rest)
    if command == "check":
        targets = ["loader", "tests", "benchmarks", "dev.py"]
        status = _run(BIN / "ruff", "check", *targets)
        status |= _run(BIN / "ruff", "format", "--check", *targets)
        status |= _run(BIN / "mypy")
        return status
    if command == "bench":
        env = dict(os.environ)
        if "--smoke" in rest:
            rest = [a for a in rest if a != "--smoke"]
            env["LOADER_BENCH_SMOKE"] = "1"
        return _run(BIN / "python", "benchmarks/run.py", *rest, env=env)
    if command == "loader":
        return _run(BIN / "loader", *rest)
    print(f"unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
