#!/usr/bin/env python3
"""Developer entry point; needs only Python 3.11+ (standard library).

    python3 dev.py demo     # load a generated 1000-image batch into an embedded PostgreSQL
    python3 dev.py test     # the test suite (LOADER_TEST_DSN, else Docker, else embedded PostgreSQL)
    python3 dev.py check    # ruff, mypy, radon (nothing worse than C), sizes (500 lines, 20 names)
    python3 dev.py bench    # benchmarks (add --smoke for a few-second run)
    python3 dev.py docs     # API reference of loader.__all__ into build/api/ (fails on any warning)
    python3 dev.py wheel-smoke   # build sdist + wheel, check them, run the wheel from a clean venv
    python3 dev.py mutate   # mutants of the merge SQL against its tests (minutes; not in CI; --list)

The first run creates .venv/ beside this file and installs the project into it
(editable, with its dev extra); later runs reinstall only when pyproject.toml (or the
version in loader/__init__.py) changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".installed-from"

# Worst radon cyclomatic-complexity rank a function in loader/ may have: C
# (complexity 11-20). D and worse fail `dev.py check`.
WORST_RANK_ALLOWED = "C"
# Longest module in loader/, in lines: past it a module holds more than one idea
# and a change has to read all of them.
MAX_MODULE_LINES = 500
# Most names loader/__init__ may export: what a caller needs, no more (psycopg_pool
# exports 7, procrastinate 9); the rest lives in named modules.
MAX_PUBLIC_NAMES = 20

# The API reference: the public names (loader.__all__) only, so it follows __all__.
API_DOCS = ROOT / "build" / "api"
UNDOCUMENTED = """
import inspect, sys, loader
public = {n: getattr(loader, n) for n in loader.__all__}
missing = [n for n, obj in public.items() if callable(obj) and not inspect.getdoc(obj)]
for n in missing:
    print(f"docs: loader.{n} has no docstring", file=sys.stderr)
raise SystemExit(1 if missing else 0)
"""


def _run(*cmd: str | Path, env: dict[str, str] | None = None) -> int:
    return subprocess.call([str(c) for c in cmd], cwd=ROOT, env=env)


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036  (this file runs before the venv exists)
        sys.exit(f"loader needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    # pyproject.toml, and loader/__init__.py for the version the install records.
    wanted = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + (ROOT / "loader" / "__init__.py").read_bytes()
    ).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == wanted and (BIN / "loader").exists():
        return
    if not (BIN / "python").exists():
        print(f"creating {VENV.relative_to(ROOT)}/ ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing loader and its dev dependencies into .venv/ ...", flush=True)
    pip = [BIN / "python", "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    # The distribution was called `loader` before 0.4 (now ocr-batch-loader): an old
    # editable install of it would linger beside the new one.
    subprocess.call(
        [str(BIN / "python"), "-m", "pip", "uninstall", "-y", "-q", "loader"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if _run(*pip, "-e", ".[dev]") != 0:
        sys.exit("installing the project failed (see pip's output above)")
    STAMP.write_text(wanted)


def complexity_gate() -> int:
    """Fail when a function in loader/ is rated worse than WORST_RANK_ALLOWED by radon."""
    worse = chr(ord(WORST_RANK_ALLOWED) + 1)
    found = subprocess.run(
        [str(BIN / "radon"), "cc", "--json", "--min", worse, "loader"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    offenders = []
    for path, blocks in json.loads(found.stdout).items():
        for block in blocks:
            name = f"{block.get('classname') + '.' if block.get('classname') else ''}{block['name']}"
            where = f"{Path(path).as_posix()}::{name}"
            offenders.append(f"{where}:{block['lineno']} rated {block['rank']} ({block['complexity']})")
    for line in offenders:
        print(f"radon: {line}; split it until radon rates it {WORST_RANK_ALLOWED} or better", file=sys.stderr)
    if not offenders:
        print(f"radon: no function in loader/ rated worse than {WORST_RANK_ALLOWED}")
    return 1 if offenders else 0


def api_docs() -> int:
    """Render loader.__all__'s docstrings with pdoc into build/api/; any warning fails."""
    if _run(BIN / "python", "-c", UNDOCUMENTED) != 0:
        return 1
    shutil.rmtree(API_DOCS, ignore_errors=True)
    # `!loader\.` leaves out the submodules: they are internals, documented in their code.
    done = subprocess.run(
        [str(BIN / "python"), "-m", "pdoc", "-o", str(API_DOCS), "loader", "!loader\\."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    sys.stderr.write(done.stderr)
    if done.returncode != 0 or done.stderr.strip():
        print("docs: pdoc failed or warned (see above)", file=sys.stderr)
        return 1
    print(f"API reference: {(API_DOCS / 'loader.html').relative_to(ROOT)}")
    return 0


def size_gate() -> int:
    """Fail on a module of loader/ over MAX_MODULE_LINES lines, or loader.__all__ past MAX_PUBLIC_NAMES."""
    failed = 0
    for path in sorted((ROOT / "loader").rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            print(
                f"size: {path.relative_to(ROOT)} has {lines} lines (at most {MAX_MODULE_LINES}); split it",
                file=sys.stderr,
            )
            failed = 1
    names = subprocess.run(
        [str(BIN / "python"), "-c", "import loader; print(len(loader.__all__))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    count = int(names.stdout.strip())
    if count > MAX_PUBLIC_NAMES:
        print(f"size: loader.__all__ has {count} names (at most {MAX_PUBLIC_NAMES})", file=sys.stderr)
        failed = 1
    if not failed:
        print(f"size: every module of loader/ within {MAX_MODULE_LINES} lines, loader.__all__ {count} names")
    return failed


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
        status |= complexity_gate()
        status |= size_gate()
        return status
    if command == "bench":
        env = dict(os.environ)
        if "--smoke" in rest:
            rest = [a for a in rest if a != "--smoke"]
            env["LOADER_BENCH_SMOKE"] = "1"
        return _run(BIN / "python", "benchmarks/run.py", *rest, env=env)
    if command == "loader":
        return _run(BIN / "loader", *rest)
    if command == "docs":
        return api_docs()
    if command == "mutate":
        return _run(BIN / "python", ROOT / "tests" / "mutation" / "mutate.py", *rest)
    if command == "wheel-smoke":
        return _run("bash", ROOT / ".ci" / "wheel-smoke", *rest)
    print(f"unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
